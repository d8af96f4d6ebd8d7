"""``trustflow-healthcheck`` (deploy/healthcheck.py), the probe of every compose health check
and of the Kubernetes sidecars, against real servers on 127.0.0.1."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import pytest

PROBE = Path(__file__).resolve().parents[1] / "healthcheck.py"


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROBE), *args, "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 200 if self.path == "/health" else 503
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_probe(http_port: int) -> None:
    assert probe("http", f"http://127.0.0.1:{http_port}/health").returncode == 0
    down = probe("http", f"http://127.0.0.1:{http_port}/other")
    assert down.returncode == 1 and "answered HTTP 503" in down.stderr
    gone = probe("http", f"http://127.0.0.1:{_closed_port()}/health")
    assert gone.returncode == 1 and "unreachable" in gone.stderr


def test_tcp_and_file_probes(http_port: int, tmp_path: Path) -> None:
    assert probe("tcp", f"127.0.0.1:{http_port}").returncode == 0
    assert probe("tcp", f"127.0.0.1:{_closed_port()}").returncode == 1
    asset = tmp_path / "tls.crt"
    assert probe("file", str(asset)).returncode == 1
    asset.write_text("")
    assert "is empty" in probe("file", str(asset)).stderr
    asset.write_text("pem")
    assert probe("file", str(asset)).returncode == 0
    assert "expected HOST:PORT" in probe("tcp", "nowhere").stderr


def test_grpc_probe_follows_the_health_service() -> None:
    grpc = pytest.importorskip("grpc")
    health = pytest.importorskip("grpc_health.v1.health")
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert probe("grpc", f"127.0.0.1:{port}").returncode == 0
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        down = probe("grpc", f"127.0.0.1:{port}")
        assert down.returncode == 1 and "NOT_SERVING" in down.stderr
    finally:
        server.stop(0)
    gone = probe("grpc", f"127.0.0.1:{_closed_port()}")
    assert gone.returncode == 1 and "UNAVAILABLE" in gone.stderr
