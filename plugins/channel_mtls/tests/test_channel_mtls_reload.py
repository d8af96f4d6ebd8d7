"""The ``mtls`` channel behind TlsAssetWatcher: a live listener follows rotated asset files."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from trustflow_core.keyexchange import TlsAsset
from trustflow_core.testing.transport import TIMEOUT, group_asset
from trustflow_core.tls_asset import TlsAssetWatcher, write_tls_asset

from trustflow_channel_mtls.channel import MtlsChannel


def leaf_der(asset: TlsAsset) -> bytes:
    return x509.load_pem_x509_certificates(asset.cert_pem)[0].public_bytes(
        serialization.Encoding.DER
    )


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def open_conn(
    port: int, ctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=""), TIMEOUT
    )


async def echo(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], data: bytes) -> bytes:
    reader, writer = conn
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), TIMEOUT)


@pytest.mark.asyncio
async def test_listener_follows_rotation_into_another_group(tmp_path: Path) -> None:
    channel = MtlsChannel()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_tls_asset(group_asset("bob"), cert, key)
    watcher = TlsAssetWatcher(channel, cert, key, interval=0.02)
    server = await asyncio.start_server(echo_handler, "127.0.0.1", 0, ssl=watcher.server_context)
    port = server.sockets[0].getsockname()[1]
    conns = []
    try:
        old = await open_conn(port, channel.client_ssl_context(group_asset("carol")))
        conns.append(old)
        assert await echo(old, b"before") == b"before"

        watcher.start()
        rotated = group_asset("bob", data="rotated")
        write_tls_asset(rotated, cert, key)

        async def reloaded() -> None:
            while watcher.generation < 2:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(reloaded(), TIMEOUT)
        assert await echo(old, b"old connection survives") == b"old connection survives"

        with pytest.raises(ssl.SSLCertVerificationError):  # carol of the old group: untrusted
            await open_conn(port, channel.client_ssl_context(group_asset("carol")))
        new = await open_conn(
            port, channel.client_ssl_context(group_asset("carol", data="rotated"))
        )
        conns.append(new)
        assert new[1].get_extra_info("ssl_object").getpeercert(binary_form=True) == leaf_der(
            rotated
        )
        assert await echo(new, b"after") == b"after"
    finally:
        for _, writer in conns:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
        await watcher.aclose()
        server.close()
        await server.wait_closed()
