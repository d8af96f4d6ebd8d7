"""The online scenario as real processes, as an operator runs it: ``trustflow ra-proxy``,
``examples/online/demo_http_server.py``, ``trustflow gateway -c online-envoy.yml`` (addresses
and paths rewritten to loopback) and ``trustflow client``; plus ``trustflow demo online``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from trustflow_core.testing.fixtures import free_port

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "examples" / "online" / "demo_http_server.py"
ENVOY_SAMPLE = (
    Path(os.environ.get("TRUSTFLOW_ENVOY_SAMPLES", REPO.parent / "shared" / "testdata" / "envoy"))
    / "online-envoy.yml"
)
TRUSTFLOW = shutil.which("trustflow", path=str(Path(sys.executable).parent)) or "trustflow"


@pytest.fixture
def env(tmp_path):
    return {
        **os.environ,
        "TRUSTFLOW_SIM_DIR": str(tmp_path / "sim"),
        "TRUSTFLOW_LOAD_PLUGINS": "tee_sim,channel_jwe",
    }


def run(env, *args, check=True):
    return subprocess.run(
        [TRUSTFLOW, *args], env=env, capture_output=True, text=True, timeout=60, check=check
    )


def wait_ready(proc: subprocess.Popen, url: str | None, port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if url is None:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{proc.args} did not become ready")


def wait_line(proc: subprocess.Popen, needle: str, timeout: float = 60) -> None:
    """Read ``proc``'s stderr until a line holds ``needle`` (the lines before it are gone)."""
    seen: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            seen.append(line)
            if needle in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(timeout):
        raise AssertionError(f"{proc.args}: no {needle!r} in {''.join(seen)}")


@pytest.fixture
def deployment(env, tmp_path):
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    run(
        env,
        "util",
        "generate-rsa-keypair",
        "--private-key-file",
        str(deploy / "carol.key"),
        "--cert-file",
        str(deploy / "carol.crt"),
    )
    app_port, ra_port, gw_port = free_port(), free_port(), free_port()
    admin = {"ra-proxy": free_port(), "gateway": free_port()}
    multiproc = tmp_path / "gateway-metrics"  # the gateway's workers add up their metrics
    multiproc.mkdir()
    commands = [
        ([sys.executable, str(APP), "--port", str(app_port)], None, app_port, env),
        (
            [
                TRUSTFLOW,
                "ra-proxy",
                "--cert_path",
                str(deploy / "carol.crt"),
                "--plat",
                "sim",
                "--port",
                str(ra_port),
                "--log_path",
                str(tmp_path / "ra_proxy.log"),
                "--log-format",
                "json",
                "--admin-port",
                str(admin["ra-proxy"]),
            ],
            f"http://127.0.0.1:{ra_port}/health",
            ra_port,
            env,
        ),
        (
            [
                TRUSTFLOW,
                "gateway",
                "-c",
                str(ENVOY_SAMPLE),
                "--map-address",
                f"0.0.0.0:50001=127.0.0.1:{gw_port}",
                "--map-address",
                f"ra-proxy:50002=127.0.0.1:{ra_port}",
                "--map-address",
                f"teeapp:8000=127.0.0.1:{app_port}",
                "--map-path",
                f"/shared/deploy={deploy}",
                "--workers",
                "2",
                "--admin-port",
                str(admin["gateway"]),
            ],
            f"http://127.0.0.1:{gw_port}/healthz",
            gw_port,
            {**env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)},
        ),
    ]
    procs = []
    try:
        for argv, url, port, proc_env in commands:
            proc = subprocess.Popen(
                argv, env=proc_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            procs.append(proc)
            wait_ready(proc, url, port)
        wait_line(procs[-1], "2 workers)")  # the gateway: every worker serves
        admin_urls = {role: f"http://127.0.0.1:{port}" for role, port in admin.items()}
        yield f"http://127.0.0.1:{gw_port}", procs, admin_urls
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()


def scrape(admin_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_cli_client_both_profiles_then_clean_shutdown(env, deployment, tmp_path):
    url, procs, admin = deployment
    before = {role: scrape(base) for role, base in admin.items()}
    # the gateway URL as the README writes it (positional) and as --url
    for where in ([url], ["--url", url, "--compat"]):
        done = run(env, "client", *where, "--data", "hello", "--allow-simulation")
        lines = done.stdout.splitlines()
        assert lines[0].startswith("Response: {'protected': '")
        assert lines[1] == "Response Raw: I got your message: hello"
        assert "SIM report verified" in done.stderr
    as_json = run(env, "client", url, "--data", "hi", "--allow-simulation", "--json")
    reply = json.loads(as_json.stdout)
    assert reply["status"] == 200 and reply["plaintext"] == "I got your message: hi\n"
    assert reply["attested"]["platform"] == "SIM" and reply["attested"]["report_verified"]
    assert set(reply["envelope"]) >= {"protected", "ciphertext", "tag"}
    assert as_json.stderr == ""
    both = run(env, "client", url, "--url", "http://127.0.0.1:9", check=False)
    assert both.returncode == 2 and "two gateway URLs given" in both.stderr
    refused = run(env, "client", "--url", url, check=False)
    assert refused.returncode == 1
    assert "simulation:" in refused.stderr and "does not allow simulation" in refused.stderr
    assert "Traceback" not in refused.stderr
    wrong = run(env, "client", "--url", url, "--allow-simulation", "--platform", "TDX", check=False)
    assert wrong.returncode == 1
    assert "str_tee_platform: expected TDX, got SIM" in wrong.stderr

    # the counters moved, as scraped from each role's admin listener (the gateway's two
    # workers add up through PROMETHEUS_MULTIPROC_DIR)
    after = {role: scrape(base) for role, base in admin.items()}
    teeapp = {"role": "gateway", "route": "public_entry:/teeapp", "status": "200"}
    gw_before, gw_after = before["gateway"], after["gateway"]
    assert (
        total(gw_after, "trustflow_requests_total", **teeapp)
        - total(gw_before, "trustflow_requests_total", **teeapp)
        == 3  # two profiles and --json
    )
    for direction in ("upstream", "downstream"):
        assert total(gw_after, "trustflow_proxy_bytes_total", direction=direction) > total(
            gw_before, "trustflow_proxy_bytes_total", direction=direction
        )
    ra = {"role": "ra-proxy", "route": "/RaProxy/GetRaCert", "status": "200"}
    assert (
        total(after["ra-proxy"], "trustflow_requests_total", **ra)
        - total(before["ra-proxy"], "trustflow_requests_total", **ra)
        == 5  # every client run above fetched one report
    )
    for base in admin.values():
        with urllib.request.urlopen(base + "/-/readyz", timeout=5) as r:
            assert r.read() == b"ready\n"
        with urllib.request.urlopen(base + "/-/plugins", timeout=5) as r:
            assert "tee_sim" in r.read().decode()

    _, ra_proxy, gateway = procs
    for proc in (ra_proxy, gateway):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "Traceback" not in proc.stderr.read()
    # --log-format json: every line of the RA proxy's log parses; its requests and its
    # shutdown are there
    lines = [json.loads(line) for line in (tmp_path / "ra_proxy.log").read_text().splitlines()]
    assert all(entry["role"] == "ra-proxy" and entry["pid"] == ra_proxy.pid for entry in lines)
    messages = [entry["message"] for entry in lines]
    assert any(m.startswith("GetRaCert nonce=") for m in messages)
    assert (
        sum(1 for e in lines if e["message"].startswith("GetRaCert") and e.get("request_id")) == 5
    )
    assert messages[-2:] == ["ra-proxy stopping", "ra-proxy stopped"]


def test_a_replay_is_refused_by_every_worker(deployment, tmp_path):
    """The gateway runs two workers; each replay of a captured envelope arrives on a new
    connection, which the kernel hands to either worker: all of them are refused, because
    the workers share one replay cache (each had its own before, and about half of the
    replays were served)."""
    from cryptography import x509
    from test_core_roles_gateway_hardening import rfc_envelope

    url, _, _ = deployment
    cert = x509.load_pem_x509_certificate((tmp_path / "deploy" / "carol.crt").read_bytes())

    def envelope(jti: str) -> bytes:
        return rfc_envelope(cert.public_key(), b"pay 100", iat=int(time.time()), jti=jti)

    def post(body: bytes) -> int:
        request = urllib.request.Request(
            url + "/teeapp", body, {"Content-Type": "application/jose+json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status
        except urllib.error.HTTPError as refused:
            return refused.code

    captured = envelope("captured")
    statuses = [post(captured) for _ in range(24)]  # a new connection each
    assert statuses == [200] + [409] * 23
    assert [post(envelope(f"fresh-{i}")) for i in range(8)] == [200] * 8


def test_demo_online_command():
    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "tee_sim,channel_jwe"}
    done = run(env, "demo", "online")
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Response: {'protected': 'eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0'")
    assert lines[1] == "Response Raw: I got your message: hello"
    assert "gateway  on http://127.0.0.1:" in done.stderr


def test_servers_on_a_port_in_use_fail_with_one_line(env, tmp_path):
    """Every HTTP server role names the address it cannot bind; no traceback."""
    env = {**env, "TRUSTFLOW_LOAD_PLUGINS": "tee_sim,channel_jwe,storage_local"}
    run(
        env,
        "util",
        "generate-rsa-keypair",
        "--private-key-file",
        str(tmp_path / "app.key"),
        "--cert-file",
        str(tmp_path / "app.crt"),
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "gateway.yml"
        config.write_text(
            f"listeners:\n  - name: a\n    address: 127.0.0.1:{port}\n"
            "    routes: [{prefix: /, cluster: app}]\n"
            'clusters:\n  app: {endpoints: ["127.0.0.1:9"]}\n'
        )
        cert, key = str(tmp_path / "app.crt"), str(tmp_path / "app.key")
        dcp = ["data-capsule-proxy", "--cert-path", cert, "--private-key-path", key]
        dcp += ["--allowed-root", str(tmp_path), "--cm-endpoint", "127.0.0.1:9"]
        for args in (
            ["ra-proxy", "--plat", "sim", "--cert-path", cert, "--port", str(port)],
            ["gateway", "-c", str(config)],
            [*dcp, "--port", str(port)],
        ):
            done = run(env, *args, check=False)
            assert done.returncode == 1, (args, done.stderr)
            assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
            assert "Traceback" not in done.stderr
