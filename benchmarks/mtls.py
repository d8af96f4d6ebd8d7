#!/usr/bin/env python3
"""mTLS tunnel cost on loopback, all measured in one run (bounded: well under a minute).

Paths, each measured the same way in this run:

  direct        client -> app
  plain tunnel  client -> bob gateway (tcp_proxy) -> carol gateway (tcp_proxy) -> app
  mTLS tunnel   client -> bob egress (plain in, mTLS out) -> carol ingress (mTLS in) -> app

For each: **throughput** (one connection sends ``--mbytes`` MB chunks, the app answers when it
has them all; repeated for ``--duration`` s) and **requests/s** (``--concurrency`` connections
doing 64-byte line ping-pong for ``--duration`` s). Then **handshakes/s** in this process:
the ``mtls`` channel's contexts (P-256 group asset, both ends authenticated) vs plain ``ssl``
(P-256 self-signed server certificate, no client certificate).

The two gateways (``trustflow gateway``, one worker each) and the app are separate processes;
the group assets are issued by ``issue_group_asset`` for two members of one group.

    .venv/bin/python benchmarks/mtls.py [--duration 3] [--concurrency 8] [--mbytes 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _loopback import free_port, wait_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

APP_CODE = r"""
import asyncio, sys

async def handle(reader, writer):
    try:
        first = await reader.readline()
        if first.startswith(b"SINK "):
            left = int(first.split()[1])
            while left > 0:
                data = await reader.read(min(left, 1 << 20))
                if not data:
                    return
                left -= len(data)
            writer.write(b"OK\n")
            await writer.drain()
            while await reader.read(1 << 16):
                pass
        else:
            writer.write(first)
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""
TIMEOUT = 20.0


# ---- load -------------------------------------------------------------------------------------


async def throughput(port: int, mbytes: int, duration: float) -> float:
    """MB/s of repeated ``mbytes`` MB transfers over one connection each, for ``duration`` s."""
    chunk = os.urandom(1 << 20)
    sent, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        writer.write(b"SINK %d\n" % (mbytes << 20))
        for _ in range(mbytes):
            writer.write(chunk)
            await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), TIMEOUT)
        if answer != b"OK\n":
            raise SystemExit(f"transfer through port {port} failed: {answer!r}")
        writer.close()
        sent += mbytes << 20
    return sent / (time.perf_counter() - started) / 1e6


async def requests_per_second(port: int, concurrency: int, duration: float) -> float:
    line = b"x" * 63 + b"\n"
    done = 0

    async def client(deadline: float) -> None:
        nonlocal done
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        writer.write(b"ECHO\n")
        await asyncio.wait_for(reader.readline(), TIMEOUT)
        while time.perf_counter() < deadline:
            writer.write(line)
            if await asyncio.wait_for(reader.readline(), TIMEOUT) != line:
                raise SystemExit(f"bad echo through port {port}")
            done += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(started + duration) for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def handshakes_per_second(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, duration: float
) -> float:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    count, started = 0, time.perf_counter()
    try:
        while time.perf_counter() - started < duration:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=client_ctx), TIMEOUT
            )
            writer.write(b"x")  # TLS 1.3: the server verifies the client cert after this
            await writer.drain()
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            count += 1
    finally:
        server.close()
        await server.wait_closed()
    return count / (time.perf_counter() - started)


def plain_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server-authenticated TLS with a self-signed P-256 certificate (no client cert)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "c").write_bytes(pem)
        Path(tmp, "k").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(Path(tmp, "c"), Path(tmp, "k"))
    server.num_tickets = 0
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(cadata=pem.decode())
    return server, client


# ---- set-up -------------------------------------------------------------------------------------


def issue_assets(root: Path) -> dict[str, Path]:
    from trustflow_core.tls_asset import issue_group_asset, write_tls_asset

    data_key = os.urandom(32)
    dirs = {}
    for who in ("bob", "carol"):
        asset = issue_group_asset(
            data_key,
            scope="bench",
            data_uuid="data-1",
            op_name="interact",
            member_public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
            now=datetime.datetime.now(datetime.timezone.utc),
        )
        dirs[who] = root / who
        dirs[who].mkdir()
        write_tls_asset(asset, dirs[who] / "tls.crt", dirs[who] / "tls.key")
    return dirs


def gateway_configs(root: Path, dirs: dict[str, Path], ports: dict[str, int]) -> dict[str, Path]:
    tls = {"cert_path": "tls.crt", "private_key_path": "tls.key"}
    configs = {
        "carol": {
            "listeners": [
                {"name": "mtls_ingress", "address": f"127.0.0.1:{ports['carol_in']}",
                 "tcp_proxy": "app", "tls": tls},
                {"name": "plain_ingress", "address": f"127.0.0.1:{ports['carol_plain']}",
                 "tcp_proxy": "app"},
            ],
            "clusters": {"app": {"endpoints": [f"127.0.0.1:{ports['app']}"]}},
        },
        "bob": {
            "listeners": [
                {"name": "mtls_egress", "address": f"127.0.0.1:{ports['bob_out']}",
                 "tcp_proxy": "carol"},
                {"name": "plain_egress", "address": f"127.0.0.1:{ports['bob_plain']}",
                 "tcp_proxy": "carol_plain"},
            ],
            "clusters": {
                "carol": {"endpoints": [f"127.0.0.1:{ports['carol_in']}"], "tls": tls},
                "carol_plain": {"endpoints": [f"127.0.0.1:{ports['carol_plain']}"]},
            },
        },
    }  # fmt: skip
    paths = {}
    for who, config in configs.items():
        paths[who] = dirs[who] / "gateway.yaml"
        paths[who].write_text(yaml.safe_dump(config))
    return paths


async def measure(args: argparse.Namespace, ports: dict[str, int]) -> None:
    from trustflow_core.manager import get_plugin_manager
    from trustflow_core.registry import TRANSPORT_CHANNEL, backend_class
    from trustflow_core.tls_asset import load_tls_asset

    paths = {
        "direct": ports["app"],
        "plain tunnel (2 gateways)": ports["bob_plain"],
        "mTLS tunnel (egress->ingress)": ports["bob_out"],
    }
    rows = []
    for name, port in paths.items():
        mbs = await throughput(port, args.mbytes, args.duration)
        rps = await requests_per_second(port, args.concurrency, args.duration)
        rows.append((name, mbs, rps))
    base_mbs, base_rps = rows[0][1], rows[0][2]
    print(f"{'path':32} {'MB/s':>9} {'vs direct':>9} {'req/s':>9} {'vs direct':>9}")
    for name, mbs, rps in rows:
        print(f"{name:32} {mbs:9.1f} {mbs / base_mbs:9.2f} {rps:9.0f} {rps / base_rps:9.2f}")

    channel = backend_class(get_plugin_manager(), TRANSPORT_CHANNEL, "mtls")()
    asset, _ = load_tls_asset(args.root / "bob" / "tls.crt", args.root / "bob" / "tls.key")
    mtls_hs = await handshakes_per_second(
        channel.server_ssl_context(asset), channel.client_ssl_context(asset), args.duration
    )
    plain_hs = await handshakes_per_second(*plain_contexts(), args.duration)
    print("\nhandshakes/s (one client; server and client in this process, full handshakes)")
    print(f"  mtls channel (mutual, P-256 group asset) {mtls_hs:8.0f}")
    print(f"  plain ssl (server cert only, P-256)      {plain_hs:8.0f}  "
          f"(mtls = {mtls_hs / plain_hs:.2f}x)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--mbytes", type=int, default=8, help="MB per throughput transfer")
    args = parser.parse_args()
    if not 0.2 <= args.duration <= 5:
        raise SystemExit("--duration must be 0.2..5 s (the whole run stays under a minute)")
    trustflow = shutil.which("trustflow", path=str(Path(sys.executable).parent)) or "trustflow"
    ports = {n: free_port() for n in ("app", "carol_in", "carol_plain", "bob_out", "bob_plain")}
    procs: list[subprocess.Popen] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trustflow-bench-mtls-") as tmp:
        args.root = Path(tmp)
        try:
            dirs = issue_assets(args.root)
            configs = gateway_configs(args.root, dirs, ports)
            procs.append(subprocess.Popen([sys.executable, "-c", APP_CODE, str(ports["app"])]))
            wait_port(ports["app"], procs[-1])
            for who, check in (("carol", "carol_in"), ("bob", "bob_out")):
                procs.append(
                    subprocess.Popen(
                        [trustflow, "gateway", "-c", str(configs[who]), "--log-level", "warning"],
                        stderr=subprocess.PIPE,
                    )
                )
                wait_port(ports[check], procs[-1])
            print(
                f"mTLS benchmark on 127.0.0.1, {os.cpu_count()} CPUs, python "
                f"{sys.version.split()[0]}, {ssl.OPENSSL_VERSION}; {args.duration:g} s per "
                f"measurement, {args.concurrency} request connections, "
                f"{args.mbytes} MB transfers\n"
            )
            asyncio.run(measure(args, ports))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(f"\ntotal run time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
