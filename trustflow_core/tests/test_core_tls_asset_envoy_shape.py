"""Requirement (d): the asset works in the upstream Envoy config shape
(docs/compat.md#mtls-one-file-trust) — the one ``tls.crt`` file is the certificate chain AND the
whole trusted-CA bundle (leaf included), with ``require_client_certificate`` and no SAN matching.
Emulated with plain ``ssl`` over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from pathlib import Path

import pytest

from trustflow_core.keyexchange import TlsAsset
from trustflow_core.testing.transport import (
    DATA_UUID,
    SCOPE,
    TIMEOUT,
    data_key,
    group_asset,
    impostor_asset,
    member_key,
)
from trustflow_core.tls_asset import issue_group_asset, write_tls_asset


def envoy_context(asset: TlsAsset, directory: Path, *, server: bool) -> ssl.SSLContext:
    """DownstreamTlsContext (server) / UpstreamTlsContext (client) of interact-*-envoy.yml."""
    directory.mkdir(exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    write_tls_asset(asset, cert, key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED  # require_client_certificate: true / verify upstream
    ctx.load_cert_chain(cert, key)  # certificate_chain + private_key
    ctx.load_verify_locations(cafile=cert)  # validation_context.trusted_ca = the same file
    return ctx


async def talk(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bool:
    """True when a byte makes it through a TLS echo server and back."""
    accepted = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            writer.write(await reader.read(10))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=""),
            TIMEOUT,
        )
        try:
            writer.write(b"hi")
            await writer.drain()
            ok = await asyncio.wait_for(reader.read(10), TIMEOUT) == b"hi"
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
    except (ssl.SSLError, ConnectionError):
        ok = False
    finally:
        server.close()
        await server.wait_closed()
    assert ok == (accepted == 1)
    return ok


@pytest.mark.asyncio
async def test_members_talk_in_the_envoy_shape(tmp_path: Path) -> None:
    bob, carol = group_asset("bob"), group_asset("carol")
    assert await talk(
        envoy_context(bob, tmp_path / "bob", server=True),
        envoy_context(carol, tmp_path / "carol", server=False),
    )
    assert await talk(
        envoy_context(carol, tmp_path / "carol", server=True),
        envoy_context(bob, tmp_path / "bob", server=False),
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("stranger", ["other_group", "impostor", "other_op"])
async def test_strangers_are_refused_in_the_envoy_shape(stranger: str, tmp_path: Path) -> None:
    bob = group_asset("bob")
    other = {
        "other_group": lambda: group_asset("dave", data="another data key"),
        "impostor": lambda: impostor_asset(group_asset("carol")),
        "other_op": lambda: _other_op_asset("carol"),
    }[stranger]()
    bob_dir, other_dir = tmp_path / "bob", tmp_path / "other"
    assert not await talk(
        envoy_context(bob, bob_dir, server=True), envoy_context(other, other_dir, server=False)
    )
    assert not await talk(
        envoy_context(other, other_dir, server=True), envoy_context(bob, bob_dir, server=False)
    )


def _other_op_asset(member: str) -> TlsAsset:
    return issue_group_asset(
        data_key("alice"),
        scope=SCOPE,
        data_uuid=DATA_UUID,
        op_name="psi",
        member_public_key=member_key(member).public_key(),
        now=datetime.datetime.now(datetime.timezone.utc),
    )
