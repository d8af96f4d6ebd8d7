"""TlsAssetWatcher: certificate reload under a live asyncio TLS server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustflow_core.channel import TransportChannel
from trustflow_core.errors import ObjectNotFound, VerificationError
from trustflow_core.identity import party_id_of_key
from trustflow_core.keyexchange import TlsAsset
from trustflow_core.testing.transport import (
    DATA_UUID,
    OP_NAME,
    SCOPE,
    TIMEOUT,
    data_key,
    flip_pem_byte,
    group_asset,
    member_key,
)
from trustflow_core.tls_asset import (
    TlsAssetWatcher,
    issue_group_asset,
    peer_party_id,
    validate_tls_asset,
    write_tls_asset,
)

HOUR = datetime.timedelta(hours=1)


class PlainMtls(TransportChannel):
    """The smallest honest TransportChannel (the real one lives in the channel_mtls plugin)."""

    name = "test-mtls"

    def _ctx(self, protocol: ssl._SSLMethod, asset: TlsAsset, tmp: Path) -> ssl.SSLContext:
        info = validate_tls_asset(asset)
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if protocol == ssl.PROTOCOL_TLS_CLIENT:
            ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        name = os.urandom(6).hex()
        (tmp / f"{name}.crt").write_bytes(asset.cert_pem)
        (tmp / f"{name}.key").write_bytes(asset.private_key_pem)
        ctx.load_cert_chain(tmp / f"{name}.crt", tmp / f"{name}.key")
        ctx.load_verify_locations(cadata=info.anchor_pem)
        return ctx

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def server_ssl_context(self, asset: TlsAsset) -> ssl.SSLContext:
        return self._ctx(ssl.PROTOCOL_TLS_SERVER, asset, self.tmp)

    def client_ssl_context(self, asset: TlsAsset) -> ssl.SSLContext:
        return self._ctx(ssl.PROTOCOL_TLS_CLIENT, asset, self.tmp)


def leaf_der(asset: TlsAsset) -> bytes:
    return x509.load_pem_x509_certificates(asset.cert_pem)[0].public_bytes(
        serialization.Encoding.DER
    )


def later_leaf(member: str) -> TlsAsset:
    """Another asset of the same member and group, valid now: a leaf with a 1-hour lifetime
    (new window, new key) instead of the default 12 hours."""
    return issue_group_asset(
        data_key("alice"),
        scope=SCOPE,
        data_uuid=DATA_UUID,
        op_name=OP_NAME,
        member_public_key=member_key(member).public_key(),
        now=datetime.datetime.now(datetime.timezone.utc),
        leaf_lifetime=HOUR,
    )


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "tls.crt", tmp_path / "tls.key"


@pytest.fixture
def channel(tmp_path: Path) -> PlainMtls:
    (tmp_path / "ctx").mkdir()
    return PlainMtls(tmp_path / "ctx")


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @property
    def server_leaf(self) -> bytes:
        return self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)

    async def echo(self, data: bytes) -> bytes:
        self.writer.write(data)
        await self.writer.drain()
        return await asyncio.wait_for(self.reader.readexactly(len(data)), TIMEOUT)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


@pytest_asyncio.fixture
async def serve(files: tuple[Path, Path], channel: PlainMtls) -> AsyncIterator[tuple]:
    write_tls_asset(group_asset("bob"), *files)
    watcher = TlsAssetWatcher(channel, *files, interval=0.02)
    seen_clients: list[bytes] = []
    conns: list[Conn] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen_clients.append(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=watcher.server_context)
    port = server.sockets[0].getsockname()[1]

    async def connect(client: TlsAsset) -> Conn:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=channel.client_ssl_context(client), server_hostname=""
            ),
            TIMEOUT,
        )
        conn = Conn(reader, writer)
        conns.append(conn)
        return conn

    yield watcher, connect, seen_clients, port
    for conn in conns:
        await conn.close()
    await watcher.aclose()
    server.close()
    await server.wait_closed()


async def refused(connect: object, client: TlsAsset) -> bool:
    try:
        conn = await connect(client)  # type: ignore[operator]
        return await conn.echo(b"?") != b"?"
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return True


@pytest.mark.asyncio
async def test_reload_keeps_connections_and_new_ones_use_the_new_asset(
    serve: tuple, files: tuple[Path, Path]
) -> None:
    watcher, connect, _, _ = serve
    first = await connect(group_asset("carol"))
    assert await first.echo(b"before") == b"before"
    assert first.server_leaf == leaf_der(group_asset("bob"))
    ssl_object = first.writer.get_extra_info("ssl_object")
    assert peer_party_id(ssl_object) == party_id_of_key(member_key("bob").public_key())
    assert watcher.check() is False  # nothing changed

    renewed = later_leaf("bob")
    write_tls_asset(renewed, *files)
    assert watcher.check() is True and watcher.generation == 2
    assert await first.echo(b"old connection survives") == b"old connection survives"
    second = await connect(group_asset("carol"))
    assert second.server_leaf == leaf_der(renewed)
    assert await second.echo(b"new") == b"new"


@pytest.mark.asyncio
async def test_reload_into_another_group_moves_the_trust_anchor(
    serve: tuple, files: tuple[Path, Path]
) -> None:
    watcher, connect, _, _ = serve
    first = await connect(group_asset("carol"))
    assert await first.echo(b"x") == b"x"
    write_tls_asset(group_asset("bob", data="rotated"), *files)
    assert watcher.check() is True
    assert await refused(connect, group_asset("carol"))  # old group: refused now
    newcomer = await connect(group_asset("carol", data="rotated"))
    assert await newcomer.echo(b"new group") == b"new group"
    assert await first.echo(b"still here") == b"still here"


@pytest.mark.asyncio
async def test_bad_new_files_keep_the_previous_asset(
    serve: tuple, files: tuple[Path, Path]
) -> None:
    watcher, connect, _, _ = serve
    cert, key = files
    cert.write_bytes(flip_pem_byte(cert.read_bytes(), 1))
    assert watcher.check() is False
    assert isinstance(watcher.last_error, VerificationError)
    assert watcher.generation == 1
    conn = await connect(group_asset("carol"))
    assert conn.server_leaf == leaf_der(group_asset("bob"))

    # a rotation seen half-way (new certificate, old key) waits for the key
    renewed = later_leaf("bob")
    cert.write_bytes(renewed.cert_pem)
    assert watcher.check() is False
    assert "key_match" in str(watcher.last_error)
    key.write_bytes(renewed.private_key_pem)
    assert watcher.check() is True
    assert watcher.last_error is None
    assert (await connect(group_asset("carol"))).server_leaf == leaf_der(renewed)


@pytest.mark.asyncio
async def test_polling_picks_up_changes(serve: tuple, files: tuple[Path, Path]) -> None:
    watcher, connect, _, _ = serve
    watcher.start()
    assert watcher.start() is watcher.start()  # idempotent
    renewed = later_leaf("bob")
    write_tls_asset(renewed, *files)

    async def reloaded() -> None:
        while watcher.generation < 2:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(reloaded(), TIMEOUT)
    assert (await connect(group_asset("carol"))).server_leaf == leaf_der(renewed)
    await watcher.aclose()
    await watcher.aclose()


@pytest.mark.asyncio
async def test_client_context_follows_the_files(
    serve: tuple, channel: PlainMtls, tmp_path: Path
) -> None:
    _, _, seen_clients, port = serve
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    write_tls_asset(group_asset("carol"), cert, key)
    client_watcher = TlsAssetWatcher(channel, cert, key)
    renewed = later_leaf("carol")
    write_tls_asset(renewed, cert, key)
    assert client_watcher.check() is True
    ctx = client_watcher.client_context()
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=""),
        TIMEOUT,
    )
    conn = Conn(reader, writer)
    assert await conn.echo(b"c") == b"c"
    assert seen_clients[-1] == leaf_der(renewed)
    await conn.close()


def test_start_up_refuses_missing_or_damaged_files(
    files: tuple[Path, Path], channel: PlainMtls
) -> None:
    with pytest.raises(ObjectNotFound):
        TlsAssetWatcher(channel, *files)
    write_tls_asset(group_asset("bob"), *files)
    cert = files[0]
    cert.write_bytes(flip_pem_byte(cert.read_bytes(), 0))
    with pytest.raises(VerificationError, match=str(cert)):
        TlsAssetWatcher(channel, *files)
    expired = group_asset("bob", now=datetime.datetime.now(datetime.timezone.utc) - 30 * 24 * HOUR)
    cert.write_bytes(expired.cert_pem)
    files[1].write_bytes(expired.private_key_pem)
    with pytest.raises(VerificationError, match="expired"):
        TlsAssetWatcher(channel, *files)
