"""The Capsule Manager's gRPC health (``grpc.health.v1``) follows its database: a CM on a
throw-away PostgreSQL database answers SERVING, NOT_SERVING once the database refuses
connections, SERVING again when it is back, and NOT_SERVING after shutdown began. The admin
listener's readiness says the same. And the command with ``--admin-port`` and
``--log-format json``, as an operator runs it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, make_url, text

from trustflow_core.roles._admin import create_admin_app
from trustflow_core.roles._server import start_site
from trustflow_core.roles.capsule_manager.health import CM_SERVICE
from trustflow_core.roles.capsule_manager.server import CapsuleManager
from trustflow_core.roles.capsule_manager.settings import CMSettings
from trustflow_core.testing.databases import admin_url, throwaway_database
from trustflow_core.testing.fixtures import free_port

pytestmark = [pytest.mark.asyncio, pytest.mark.plugins("channel_jwe", "tee_sim")]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INTERVAL = 0.2
TRUSTFLOW = str(Path(sys.executable).parent / "trustflow")


@contextlib.contextmanager
def database_switch(url: str) -> Iterator[tuple[object, object]]:
    """(down, up): make the database refuse every connection (and end the open ones), and
    accept them again; always accepting again on exit, so that it can be dropped."""
    name = make_url(url).database
    engine = create_engine(admin_url("postgresql"), isolation_level="AUTOCOMMIT")

    def down() -> None:
        with engine.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )

    def up() -> None:
        with engine.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))

    try:
        yield down, up
    finally:
        up()
        engine.dispose()


async def status_of(stub, service: str = "") -> int:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status


async def until(stub, want: int, service: str = "", timeout: float = 10.0) -> int:
    """Poll the health status until it is ``want`` (or ``timeout`` passed); return the last."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await status_of(stub, service)
        if got == want or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(INTERVAL / 2)


async def readyz(base: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(base + "/-/readyz") as r:
        return r.status, await r.text()


async def test_health_follows_the_postgresql_database(pm, tmp_path):
    with (
        throwaway_database("postgresql") as url,
        database_switch(url) as (down, up),
    ):
        settings = CMSettings(port=0, data_dir=tmp_path / "cm", storage_url=url, plat="none")
        cm = CapsuleManager(settings, pm=pm, health_interval=INTERVAL)
        port = await cm.start()
        assert cm.health is not None
        runner, admin_port = await start_site(
            create_admin_app("capsule-manager", pm, [cm.health.readiness]), "127.0.0.1", 0
        )
        base = f"http://127.0.0.1:{admin_port}"
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                assert await status_of(stub) == SERVING
                assert await status_of(stub, CM_SERVICE) == SERVING
                assert await readyz(base) == (200, "ready\n")

                await asyncio.to_thread(down)
                assert await until(stub, NOT_SERVING) == NOT_SERVING
                assert await status_of(stub, CM_SERVICE) == NOT_SERVING
                status, body = await readyz(base)
                assert status == 503 and "database:" in body and "not currently accepting" in body

                await asyncio.to_thread(up)
                assert await until(stub, SERVING) == SERVING
                assert await readyz(base) == (200, "ready\n")

                unknown = health_pb2.HealthCheckRequest(service="no.such.Service")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Check(unknown, timeout=5)
                assert info.value.code() == grpc.StatusCode.NOT_FOUND

                await cm.health.stop()  # what stop() does first: shutdown began
                assert await status_of(stub) == NOT_SERVING
        finally:
            await runner.cleanup()
            await cm.stop(grace=0)


async def test_the_command_serves_health_admin_and_json_logs(sim_env, tmp_path):
    """``trustflow capsule-manager --admin-port ... --log-format json``: gRPC health SERVING,
    readiness and metrics on the admin port, JSON log lines, shutdown logged."""
    port, admin_port = free_port(), free_port()
    log_file = tmp_path / "cm.log"
    args = [TRUSTFLOW, "capsule-manager", "--plat", "sim", "--data-dir", str(tmp_path / "cm")]
    args += ["--port", str(port), "--admin-port", str(admin_port)]
    args += ["--log-format", "json", "--log-path", str(log_file)]
    proc = subprocess.Popen(args, env=sim_env, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{admin_port}"
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            try:
                assert await readyz(base) == (200, "ready\n")
                break
            except aiohttp.ClientError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.2)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await status_of(health_pb2_grpc.HealthStub(channel), CM_SERVICE) == SERVING
        async with aiohttp.ClientSession() as http, http.get(base + "/metrics") as r:
            metrics = await r.text()
        assert "trustflow_db_up 1.0" in metrics
        assert 'trustflow_db_duration_seconds_count{operation="ping",outcome="ok"}' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
        proc.stderr.close()
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert {entry["role"] for entry in lines} == {"capsule-manager"}
    messages = [entry["message"] for entry in lines]
    assert "database reachable: serving" in messages
    assert messages[-2:] == ["capsule-manager stopping", "capsule-manager stopped"]
