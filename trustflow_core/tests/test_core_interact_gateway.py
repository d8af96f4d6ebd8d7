"""`trustflow gateway` processes serving the upstream interact Envoy configs (addresses and
paths rewritten with --map-address / --map-path): bob's app → bob's egress → carol's ingress →
carol's app and back over mTLS, group assets rotated on disk while the gateways run, a clean
exit on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from trustflow_core.keyexchange import TlsAsset
from trustflow_core.testing.fixtures import free_port
from trustflow_core.tls_asset import issue_group_asset, write_tls_asset

ENVOY_DIR = Path(os.environ.get("TRUSTFLOW_ENVOY_SAMPLES", "/work/shared/testdata/envoy"))
if not (ENVOY_DIR / "interact-bob-envoy.yml").is_file():
    ENVOY_DIR = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "envoy"
TRUSTFLOW = Path(sys.executable).parent / "trustflow"
TIMEOUT = 5.0
PEER = {"bob": ("172.31.10.1", 40001), "carol": ("172.31.11.1", 30001)}
OWN = {"bob": 30001, "carol": 40001}


def member_asset(data_key: bytes) -> TlsAsset:
    return issue_group_asset(
        data_key,
        scope="default",
        data_uuid="data-alice-1",
        op_name="interact",
        member_public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        now=datetime.datetime.now(datetime.timezone.utc),
    )


async def line_app(name: str, connections: set[asyncio.StreamWriter]) -> asyncio.Server:
    """A line echo server; open connections are kept in ``connections`` so the test can
    close them (Python 3.11's ``Server.close`` leaves accepted connections open)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.add(writer)
        try:
            with contextlib.suppress(ConnectionError, OSError):
                while line := await reader.readline():
                    writer.write(f"{name} got: ".encode() + line)
                    await writer.drain()
        finally:
            connections.discard(writer)
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def ask(port: int, line: bytes) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        writer.write(line + b"\n")
        try:
            return await asyncio.wait_for(reader.readline(), TIMEOUT)
        except (ConnectionError, OSError):
            return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def wait_port(port: int, proc: subprocess.Popen) -> None:
    for _ in range(200):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"port {port} did not open")


@contextlib.asynccontextmanager
async def interact(tmp_path: Path, data_key: bytes) -> AsyncIterator[dict[str, dict]]:
    ports = {who: {"in": free_port(), "out": free_port()} for who in ("bob", "carol")}
    connections: set[asyncio.StreamWriter] = set()
    apps = {who: await line_app(who, connections) for who in ("bob", "carol")}
    procs: dict[str, subprocess.Popen] = {}
    parties: dict[str, dict] = {}
    try:
        for who in ("bob", "carol"):
            other = "carol" if who == "bob" else "bob"
            deploy = tmp_path / who
            deploy.mkdir()
            write_tls_asset(member_asset(data_key), deploy / "tls.crt", deploy / "tls.key")
            host, port = PEER[who]
            app_port = apps[who].sockets[0].getsockname()[1]
            maps = [
                f"0.0.0.0:{OWN[who]}=127.0.0.1:{ports[who]['in']}",
                f"0.0.0.0:{OWN[who] + 1000}=127.0.0.1:{ports[who]['out']}",
                f"{who}-app:8000=127.0.0.1:{app_port}",
                f"{host}:{port}=127.0.0.1:{ports[other]['in']}",
            ]
            procs[who] = subprocess.Popen(
                [
                    str(TRUSTFLOW),
                    "gateway",
                    "-c",
                    str(ENVOY_DIR / f"interact-{who}-envoy.yml"),
                    *(arg for m in maps for arg in ("--map-address", m)),
                    "--map-path",
                    f"/shared/deploy={deploy}",
                    "--tls-reload-interval",
                    "0.1",
                    "--log-level",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "channel_mtls"},
            )
            parties[who] = {"deploy": deploy, "proc": procs[who], **ports[who]}
        for who in ("bob", "carol"):
            await wait_port(ports[who]["in"], procs[who])
            await wait_port(ports[who]["out"], procs[who])
        yield parties
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
        for app in apps.values():
            app.close()
        for writer in list(connections):
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        for app in apps.values():
            await app.wait_closed()


@pytest.mark.asyncio
async def test_interact_envoy_configs_carry_bob_and_carol_over_mtls(tmp_path):
    key = os.urandom(32)
    async with interact(tmp_path, key) as parties:
        bob, carol = parties["bob"], parties["carol"]
        hello = b'{"message": "Hello from Bob!"}'
        assert await ask(bob["out"], hello) == b"carol got: " + hello + b"\n"
        assert await ask(carol["out"], b"Hi Bob") == b"bob got: Hi Bob\n"

        # carol's asset is replaced by one of another group while everything runs
        new_key = os.urandom(32)
        write_tls_asset(
            member_asset(new_key), carol["deploy"] / "tls.crt", carol["deploy"] / "tls.key"
        )
        for _ in range(50):
            if await ask(bob["out"], b"ping") == b"":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("carol's gateway kept accepting bob after leaving the group")
        # bob joins the new group too: both directions work again on the same ports
        write_tls_asset(member_asset(new_key), bob["deploy"] / "tls.crt", bob["deploy"] / "tls.key")
        for _ in range(50):
            if await ask(bob["out"], b"ping") == b"carol got: ping\n":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("bob's gateway did not pick up the new asset")
        assert await ask(carol["out"], b"pong") == b"bob got: pong\n"

    for who in ("bob", "carol"):
        assert parties[who]["proc"].returncode == 0
