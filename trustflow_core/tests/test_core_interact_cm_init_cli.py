"""``trustflow data-capsule-proxy --cm_init_config`` as a real process against a real Capsule
Manager: a granted app starts and serves with the asset written (key 0600); a refused app and
tampered existing files each end start-up with one line on stderr and exit status 1."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from test_core_interact_cm_init import cm_init_file, identity, world  # noqa: F401

from trustflow_core.roles.capsule_manager_client.keyexchange import ephemeral_credentials
from trustflow_core.testing.fixtures import free_port
from trustflow_core.tls_asset import load_tls_asset

TRUSTFLOW = shutil.which("trustflow", path=str(Path(sys.executable).parent)) or "trustflow"


def command(cm: dict, home: Path, party: str, port: int) -> list[str]:
    cert, key = identity(home, cm["parties"][party])
    (home / "root").mkdir(exist_ok=True)
    return [
        TRUSTFLOW, "data-capsule-proxy",
        "--cert_path", str(cert),
        "--private_key_path", str(key),
        "--plat", "sim",
        "--port", str(port),
        "--cm_endpoint", cm["target"],
        "--allowed-root", str(home / "root"),
        "--cm_init_config", str(cm_init_file(home)),
        "--log_path", str(home / "dcp.log"),
    ]  # fmt: skip


def run_to_failure(args: list[str]) -> tuple[int, str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, env=os.environ)
    return proc.returncode, proc.stderr


def test_granted_app_serves_with_the_asset_written(world, tmp_path) -> None:  # noqa: F811
    port = free_port()
    home = tmp_path / "bob"
    proc = subprocess.Popen(
        command(world, home, "bob", port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.read() == b"OK"
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "the proxy did not start"
                time.sleep(0.1)
        cert, key = home / "deploy" / "tls.crt", home / "deploy" / "tls.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        load_tls_asset(cert, key)  # valid now
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        proc.stderr.close()


def test_refused_app_exits_with_one_line(world, tmp_path) -> None:  # noqa: F811
    home = tmp_path / "mallory"
    code, stderr = run_to_failure(command(world, home, "mallory", free_port()))
    assert code == 1
    [line] = stderr.strip().splitlines()
    assert line.startswith("Error: data-capsule-proxy: ")
    assert "code 7" in line and "op 'interact'" in line
    assert not (home / "deploy" / "tls.key").exists()


def test_tampered_existing_asset_exits_with_one_line(world, tmp_path) -> None:  # noqa: F811
    home = tmp_path / "carol"
    args = command(world, home, "carol", free_port())
    deploy = home / "deploy"
    # a first start writes the asset; it is then tampered with (a foreign CA appended)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (deploy / "tls.crt").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    foreign = ephemeral_credentials("foreign-ca").chain_pems[0]
    with open(deploy / "tls.crt", "a") as f:
        f.write(foreign)
    tampered = (deploy / "tls.crt").read_bytes()
    code, stderr = run_to_failure(args)
    assert code == 1
    [line] = stderr.strip().splitlines()
    assert "modified by someone else" in line and str(deploy / "tls.crt") in line
    assert (deploy / "tls.crt").read_bytes() == tampered
