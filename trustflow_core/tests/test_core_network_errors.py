"""Every network failure of the owner's and the app client's commands is one readable line and
exit 1 (issue 15): a refused connection, a server that closes the connection, a server that
never answers, an unknown host — for ``trustflow client`` (HTTP through aiohttp) and
``trustflow cms`` (gRPC), through the real CLI against real sockets on 127.0.0.1. Unknown host
is checked on the formatter with the resolver's own error (no lookup leaves this machine)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from trustflow_core.roles._net import grpc_failure, http_failure
from trustflow_core.testing.support import free_port

CLI = [sys.executable, "-c", "from trustflow_core.cli import main; main()"]
RAW = ("ClientConnectorError", "ConnectionKey", "Traceback", "AioRpcError", "ipv4:")


def _trustflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "tee_sim,channel_jwe", **(env or {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=60)


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert not [raw for raw in RAW if raw in done.stderr], done.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.fixture
def closing_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts each connection and closes it at once."""
    yield from _server(answer=False)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    yield from _server(answer=None)


def _server(answer: bool | None) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            if answer is None:
                held.append(conn)
            else:
                conn.recv(65536)
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_client_gateway_refused() -> None:
    port = free_port()
    line = _one_line_error(_trustflow("client", f"http://127.0.0.1:{port}", "--allow-simulation"))
    assert line == (
        f"Error: gateway http://127.0.0.1:{port} is unreachable: connection refused "
        "(POST /RaProxy/GetRaCert)"
    )


def test_client_gateway_closes_the_connection(closing_server: int) -> None:
    done = _trustflow("client", f"http://127.0.0.1:{closing_server}", "--allow-simulation")
    line = _one_line_error(done)
    assert line == (
        f"Error: gateway http://127.0.0.1:{closing_server} closed the connection without an "
        "answer (POST /RaProxy/GetRaCert)"
    )


def test_client_gateway_never_answers(silent_server: int) -> None:
    url = f"http://127.0.0.1:{silent_server}"
    line = _one_line_error(_trustflow("client", url, "--allow-simulation", "--timeout", "1"))
    assert line == f"Error: gateway {url}: no answer within 1 s (POST /RaProxy/GetRaCert)"


def test_client_refuses_a_url_without_scheme() -> None:
    done = _trustflow("client", "127.0.0.1:50001")
    assert done.returncode == 2
    assert "'127.0.0.1:50001' is not an http:// or https:// URL" in done.stderr


def _cms_config(tmp_path: Path, host: str) -> Path:
    config = tmp_path / "cms.yaml"
    config.write_text(f"host: {host}\ntee_plat: sim\n")
    return config


def test_cms_capsule_manager_down(tmp_path: Path) -> None:
    port = free_port()
    config = _cms_config(tmp_path, f"127.0.0.1:{port}")
    line = _one_line_error(_trustflow("cms", "--config-file", str(config), "get-public-key"))
    assert line == (
        f"Error: capsule manager 127.0.0.1:{port} is unreachable: connection refused (GetRaCert)"
    )


def test_cms_capsule_manager_never_answers(tmp_path: Path, silent_server: int) -> None:
    config = _cms_config(tmp_path, f"127.0.0.1:{silent_server}")
    done = _trustflow("cms", "--config-file", str(config), "--timeout", "1", "get-public-key")
    line = _one_line_error(done)
    assert (
        line == f"Error: capsule manager 127.0.0.1:{silent_server}: no answer to GetRaCert in time"
    )


def test_unknown_host_in_plain_words() -> None:
    key = ConnectionKey("nosuchhost.invalid", 9, False, True, None, None, None)
    dns = aiohttp.ClientConnectorError(key, socket.gaierror(-2, "Name or service not known"))
    assert http_failure(dns, "gateway http://nosuchhost.invalid:9", "POST /x") == (
        "gateway http://nosuchhost.invalid:9 is unreachable: unknown host (POST /x)"
    )
    # the details gRPC gives when the name does not resolve
    details = (
        "errors resolving nosuchhost.invalid:8888: [field:hostname lookup error:address "
        "lookup failed for nosuchhost.invalid:8888: Domain name not found]"
    )
    assert grpc_failure("nosuchhost.invalid:8888", "GetRaCert", "UNAVAILABLE", details) == (
        "capsule manager nosuchhost.invalid:8888 is unreachable: unknown host (GetRaCert)"
    )
