"""The one server runner and worker model (``roles._server``, ``roles._listeners``,
``roles._workers``), through the real ``trustflow`` commands in subprocesses on 127.0.0.1: one
server per port (a second gateway or Capsule Manager with ``--workers`` is refused), every
worker serves, SIGTERM and the parent's death stop every worker, and a port in use is one line
on stderr for every role. In process: a second listener is one ``add``, a listener that fails
closes the others, and a worker that cannot start or dies fails :func:`run` with one line."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from trustflow_core.errors import BackendUnavailable
from trustflow_core.roles._listeners import Listeners, StreamListener, WebListener
from trustflow_core.roles._server import AppServer, run
from trustflow_core.testing.fixtures import free_port

TRUSTFLOW = str(Path(sys.executable).parent / "trustflow")
LISTENING = r"{role} listening on (?:http://)?127\.0\.0\.1:(\d+)"
IN_USE = "Address already in use"
CLAIMED = "another trustflow server with --workers serves this port"


class Server:
    """A ``trustflow`` server command in a subprocess, its stderr in a file."""

    def __init__(self, env: dict[str, str], log: Path, role: str, *args: str) -> None:
        self.role, self.log = role, log
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [TRUSTFLOW, role, *args], env=env, stderr=err, stdout=subprocess.DEVNULL
            )
        self.port = 0

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self, timeout: float = 90) -> Server:
        pattern = re.compile(LISTENING.format(role=self.role))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pattern.search(self.output())
            if found:
                self.port = int(found.group(1))
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}: {self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"not listening after {timeout} s: {self.output()}")

    def exit_code(self, timeout: float = 60) -> int:
        """Wait for the process to end by itself (one that keeps running fails the test)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"still running after {timeout} s: {self.output()}") from None

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except OSError:  # ended
            return []

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        children = self.children()
        self.stop()
        for pid in wait_gone(children, 10):  # never leave a worker behind, whatever happened
            with_gone(pid, kill=True)


def with_gone(pid: int, *, kill: bool = False) -> bool:
    """Whether process ``pid`` is gone (or a zombie); ``kill`` it first when asked."""
    if kill:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    """The processes of ``pids`` still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if not with_gone(pid)]
        time.sleep(0.1)
    return alive


def socket_owners(port: int, pids: list[int], state: str) -> dict[int, int]:
    """How many TCP sockets on local ``port`` in ``state`` (``0A`` listening, ``01``
    established) each of ``pids`` holds (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    owners: dict[int, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    owners[pid] = owners.get(pid, 0) + 1
            except OSError:
                continue
    return owners


def serving_workers(server: Server, count: int) -> list[int]:
    """The ``count`` children of ``server`` that listen on its port (multiprocessing's
    resource tracker is a child too, and does not)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        serving = socket_owners(server.port, server.children(), "0A")
        if len(serving) == count:
            return sorted(serving)
        time.sleep(0.2)
    raise AssertionError(f"{count} workers do not listen: {server.output()}")


def gateway_config(path: Path, port: int) -> Path:
    path.write_text(
        f"listeners:\n  - name: web\n    address: 127.0.0.1:{port}\n"
        "    routes: [{prefix: /, cluster: app}]\n"
        'clusters:\n  app: {endpoints: ["127.0.0.1:9"]}\n'
    )
    return path


def gateway(env: dict[str, str], tmp_path: Path, name: str, port: int, *args: str) -> Server:
    config = gateway_config(tmp_path / f"{name}.yml", port)
    return Server(env, tmp_path / f"{name}.stderr", "gateway", "-c", str(config), *args)


def capsule_manager(env: dict[str, str], tmp_path: Path, name: str, port: int, *a: str) -> Server:
    args = ["--plat", "sim", "--data-dir", str(tmp_path / name), "--port", str(port), *a]
    return Server(env, tmp_path / f"{name}.stderr", "capsule-manager", *args)


START = {"gateway": gateway, "capsule-manager": capsule_manager}


def assert_refused(server: Server, port: int, reason: str, prefix: str = "") -> None:
    """Exit 1 and one line on stderr (the Data Capsule Proxy names itself in its errors)."""
    assert server.exit_code(60) == 1, server.output()
    assert server.output() == f"Error: {prefix}cannot listen on 127.0.0.1:{port}: {reason}\n"


# ---- one server per port --------------------------------------------------------------------


def test_second_gateway_with_workers_on_a_taken_port_is_refused(
    sim_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    with gateway(sim_env, tmp_path, "first", port, "--workers", "2") as first:
        first.wait_listening()
        with gateway(sim_env, tmp_path, "second", port, "--workers", "2") as second:
            assert_refused(second, port, CLAIMED)
        with gateway(sim_env, tmp_path, "third", port) as third:
            assert_refused(third, port, IN_USE)
        assert healthz(port, 8) == {200}  # the first one still serves, alone
        serving = serving_workers(first, 1)
        assert set(socket_owners(port, [first.proc.pid, *serving], "0A")) == {
            first.proc.pid,
            *serving,
        }


def test_gateway_with_workers_on_a_port_a_plain_gateway_holds_is_refused(
    sim_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    with gateway(sim_env, tmp_path, "plain", port) as plain:
        plain.wait_listening()
        with gateway(sim_env, tmp_path, "second", port, "--workers", "2") as second:
            assert_refused(second, port, IN_USE)
        assert socket_owners(port, [plain.proc.pid], "0A") == {plain.proc.pid: 1}


def test_a_port_in_use_is_one_line_for_every_role(sim_env: dict[str, str], tmp_path: Path) -> None:
    env = {**sim_env, "TRUSTFLOW_LOAD_PLUGINS": "tee_sim,channel_jwe,storage_local"}
    cert, key = tmp_path / "app.crt", tmp_path / "app.key"
    keygen = ["util", "generate-rsa-keypair", "--private-key-file", str(key)]
    subprocess.run(
        [TRUSTFLOW, *keygen, "--cert-file", str(cert)],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dcp = ["--cert-path", str(cert), "--private-key-path", str(key), "--port", str(port)]
        dcp += ["--allowed-root", str(tmp_path), "--cm-endpoint", "127.0.0.1:9"]
        runs = [
            ("ra-proxy", ["--plat", "sim", "--cert-path", str(cert), "--port", str(port)]),
            ("data-capsule-proxy", dcp),
            ("gateway", ["-c", str(gateway_config(tmp_path / "gw.yml", port))]),
            ("gateway", ["-c", str(tmp_path / "gw.yml"), "--workers", "2"]),
            ("capsule-manager", ["--plat", "sim", "--data-dir", str(tmp_path / "cm")]),
        ]
        runs.append(("capsule-manager", [*runs[-1][1], "--workers", "2"]))
        for i, (role, args) in enumerate(runs):
            if role == "capsule-manager":
                args = [*args, "--port", str(port)]
            with Server(env, tmp_path / f"{i}.stderr", role, *args) as server:
                prefix = "data-capsule-proxy: " if role == "data-capsule-proxy" else ""
                assert_refused(server, port, IN_USE, prefix)


# ---- every worker serves; SIGTERM or the parent's death stops them all ---------------------


def healthz(port: int, connections: int) -> set[int]:
    """GET /healthz over ``connections`` separate connections; the statuses seen."""
    statuses = set()
    for _ in range(connections):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", "/healthz")
            statuses.add(conn.getresponse().status)
        finally:
            conn.close()
    return statuses


def gateway_connections(port: int, count: int, pids: list[int]) -> dict[int, int]:
    """GET /healthz over ``count`` connections kept open; the accepted ones per process of
    ``pids``, counted while they are open."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(count)]
    try:
        for conn in conns:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert response.status == 200
            response.read()
        return socket_owners(port, pids, "01")
    finally:
        for conn in conns:
            conn.close()


async def cm_connections(port: int, count: int, pids: list[int]) -> dict[int, int]:
    """GetRaCert over ``count`` connections kept open; the accepted ones per process of
    ``pids``, counted while they are open."""
    import grpc

    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2 as cm_pb2,
    )
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2_grpc as cm_grpc,
    )

    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(count)
    ]
    try:
        for channel in channels:
            stub = cm_grpc.CapsuleManagerStub(channel)
            response = await stub.GetRaCert(cm_pb2.GetRaCertRequest(nonce="n"), timeout=30)
            assert response.status.code == 0
        return socket_owners(port, pids, "01")
    finally:
        for channel in channels:
            await channel.close()


def accepted_per_process(role: str, port: int, pids: list[int], count: int) -> dict[int, int]:
    if role == "capsule-manager":
        return asyncio.run(cm_connections(port, count, pids))
    return gateway_connections(port, count, pids)


@pytest.mark.parametrize("role", ["gateway", "capsule-manager"])
def test_every_worker_serves_and_sigterm_stops_them_all(
    sim_env: dict[str, str], tmp_path: Path, role: str
) -> None:
    """Port 0: the first process binds, the workers join the port the kernel chose."""
    with START[role](sim_env, tmp_path, "server", 0, "--workers", "3") as server:
        server.wait_listening()
        workers = serving_workers(server, 2)
        everyone = [server.proc.pid, *workers]
        assert set(socket_owners(server.port, everyone, "0A")) == set(everyone)
        accepted = accepted_per_process(role, server.port, everyone, 48)
        assert set(accepted) == set(everyone), accepted  # each process answered some
        children = server.children()  # the workers and multiprocessing's resource tracker
        server.proc.send_signal(signal.SIGTERM)
        assert server.exit_code(30) == 0, server.output()
        assert wait_gone(children) == []
        out = server.output()
        for pid in workers:
            assert re.search(rf"{role} worker \d \(pid {pid}\) stopped \(status 0\)", out), out
        assert f"{role} stopped" in out


@pytest.mark.parametrize("role", ["gateway", "capsule-manager"])
def test_workers_end_with_their_parent(sim_env: dict[str, str], tmp_path: Path, role: str) -> None:
    with START[role](sim_env, tmp_path, "server", 0, "--workers", "2") as server:
        server.wait_listening()
        serving_workers(server, 1)
        children = server.children()
        server.proc.kill()  # no chance to stop them
        server.proc.wait(30)
        assert wait_gone(children) == []


# ---- in process: the listener contract and the worker model's failures ----------------------


def hello_app(text: str) -> web.Application:
    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/", hello)
    return app


@pytest.mark.asyncio
async def test_a_second_listener_is_one_add() -> None:
    service = AppServer("test-role", hello_app("main"), "127.0.0.1", 0)
    admin = service.listeners.add(WebListener(hello_app("admin"), "127.0.0.1", 0, label="admin"))
    await service.start()
    try:
        main_port = service.listeners.ports[0]
        assert service.listeners.lines(["1 worker"]) == [
            f"test-role listening on http://127.0.0.1:{main_port} (1 worker)",
            f"test-role listening on http://127.0.0.1:{admin.port} (admin, 1 worker)",
        ]
        async with aiohttp.ClientSession() as session:
            for port, text in ((main_port, "main"), (admin.port, "admin")):
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    assert await response.text() == text
    finally:
        await service.stop()


@pytest.mark.asyncio
async def test_a_listener_that_cannot_bind_closes_the_opened_ones() -> None:
    port = free_port()  # both are free when checked; the second bind fails
    service = AppServer("test-role", hello_app("main"), "127.0.0.1", port)
    service.listeners.add(WebListener(hello_app("admin"), "127.0.0.1", port, label="admin"))
    with pytest.raises(BackendUnavailable) as refused:
        await service.start()
    assert str(refused.value) == f"cannot listen on 127.0.0.1:{port}: {IN_USE}"
    with socket.socket() as probe:  # the first listener is closed again
        probe.bind(("127.0.0.1", port))
        probe.listen()


async def _hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


class WorkersFail:
    """A service whose workers fail: ``start`` (they cannot start) or ``die`` (they end with
    status 3 half a second after they serve). The first process serves normally."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.listeners = Listeners("test-role")
        self.listeners.add(StreamListener(_hang_up, "127.0.0.1", 0))

    async def start(self) -> None:
        worker = self.listeners.sharing == "worker"
        if worker and self.how == "start":
            raise BackendUnavailable("no such backend here")
        await self.listeners.open()
        if worker and self.how == "die":
            asyncio.get_running_loop().call_later(0.5, os._exit, 3)

    async def stop(self) -> None:
        await self.listeners.close()

    def notes(self) -> list[str]:
        return []


@pytest.mark.parametrize("workers", [2, 4])
def test_a_worker_that_cannot_start_fails_the_server_with_its_line(workers: int) -> None:
    with pytest.raises(BackendUnavailable) as failed:
        run(partial(WorkersFail, "start"), workers=workers)
    assert re.fullmatch(r"test-role worker \d: no such backend here", str(failed.value))


def test_a_worker_that_dies_stops_the_server() -> None:
    with pytest.raises(BackendUnavailable) as failed:
        run(partial(WorkersFail, "die"), workers=2)
    assert re.fullmatch(r"test-role worker 1 \(pid \d+\) ended with status 3", str(failed.value))
