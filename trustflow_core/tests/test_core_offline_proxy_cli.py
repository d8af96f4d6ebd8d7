"""``trustflow data-capsule-proxy`` as a real process: upstream flag spellings, /health, and a
proxy killed (SIGKILL) in the middle of PutResultData leaves no output and no key; after a
restart the same request succeeds and the dead process's staging directory is swept. Object
stores are reached only at ``--allowed-object-store-endpoint`` endpoints."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from trustflow_core.roles.data_capsule_proxy.paths import STAGE_PREFIX
from trustflow_core.testing.certs import write_app_identity
from trustflow_core.testing.fixtures import free_port

TRUSTFLOW = shutil.which("trustflow", path=str(Path(sys.executable).parent)) or "trustflow"


def start(tmp: Path, root: Path, port: int, *extra: str) -> subprocess.Popen:
    cert, key = tmp / "app.crt", tmp / "app.key"
    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "storage_local,storage_oss"}
    proc = subprocess.Popen(
        [
            TRUSTFLOW,
            "data-capsule-proxy",
            "--cert_path", str(cert),
            "--private-key-path", str(key),
            "--plat", "sim",
            "--port", str(port),
            "--key-exchange", "static",
            "--key-exchange-settings", str(tmp / "kx.json"),
            "--allowed-root", str(root),
            "--log_path", str(tmp / "dcp.log"),
            *extra,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                assert r.read() == b"OK"
                return proc
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"proxy did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    proc.stderr.close()


def put(port: int, body: dict, timeout: float = 120) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/DataCapsuleProxy/PutResultData",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def setup(tmp_path):
    root = tmp_path / "data"
    (root / "out").mkdir(parents=True)
    write_app_identity(tmp_path)
    keys_file = tmp_path / "keys.json"
    (tmp_path / "kx.json").write_text(json.dumps({"keys": {}, "keys_file": str(keys_file)}))
    return tmp_path, root, keys_file


def test_killed_mid_put_result_leaves_nothing_then_retry_succeeds(setup):
    tmp, root, keys_file = setup
    result = root / "result.bin"
    block = os.urandom(1 << 20)
    with open(result, "wb") as f:  # large enough that encrypting takes a while
        for _ in range(160):
            f.write(block)
    body = {
        "data_key_b64": base64.b64encode(os.urandom(16)).decode(),
        "cm_result_config": {"scope": "default", "resource_uri": "res", "ancestor_uuids": ["a"]},
        "source_config": {"path": str(result)},
        "local_fs_config": {"path": str(root / "out")},
    }
    port = free_port()
    proc = start(tmp, root, port)
    try:
        sender = subprocess.Popen(  # the request, sent from another process
            [sys.executable, "-c", _SEND, str(port), json.dumps(body)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not _staged_bytes(root / "out") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _staged_bytes(root / "out"), "the proxy never started writing"
        proc.kill()  # SIGKILL mid-transfer
        proc.wait(10)
        sender.wait(30)
    finally:
        stop(proc)
    visible = [n for n in os.listdir(root / "out") if not n.startswith(STAGE_PREFIX)]
    assert visible == []
    assert not keys_file.exists()

    port = free_port()
    proc = start(tmp, root, port, "--result-format", "v2")
    try:
        status, text = put(port, body)
    finally:
        stop(proc)
    assert status == 200, text
    assert os.listdir(root / "out") == ["result.bin.enc"]  # stale staging swept
    assert "res" in json.loads(keys_file.read_text())


def test_startup_failure_is_one_clear_line(setup):
    tmp, root, _ = setup
    proc = subprocess.run(
        [TRUSTFLOW, "data-capsule-proxy", "--allowed-root", str(root), "--port", "0",
         "--cert-path", str(tmp / "missing.crt"), "--key-exchange", "static"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "storage_local"},
    )  # fmt: skip
    assert proc.returncode != 0
    assert "missing.crt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_object_store_endpoints_come_only_from_the_allow_list_flag(setup):
    tmp, root, _ = setup
    (root / "r.txt").write_bytes(b"result")
    allowed, other = free_port(), free_port()  # nothing listens on either

    def body(port: int) -> dict:
        config = {"endpoint": f"127.0.0.1:{port}", "bucket": "bucket", "path": "out"}
        config["type"] = "S3_STORAGE_TYPE_MINIO"
        return {"need_encrypt": False, "source_config": {"path": str(root / "r.txt")},
                "s3_config": config}  # fmt: skip

    port = free_port()
    proc = start(tmp, root, port, "--allowed-object-store-endpoint", f"127.0.0.1:{allowed}")
    try:
        refused = put(port, body(other))
        failed = put(port, body(allowed))  # allowed, so tried: the store is down
    finally:
        stop(proc)
    assert refused[0] == 403, refused
    assert "--allowed-object-store-endpoint" in refused[1]
    assert failed == (500, "object store: write 's3://bucket/out/r.txt' failed "
                           "(the cause is in the proxy's log)\n")  # fmt: skip
    assert f"127.0.0.1:{allowed}" in (tmp / "dcp.log").read_text()


def _staged_bytes(directory: Path) -> int:
    total = 0
    for stage in directory.glob(f"{STAGE_PREFIX}*"):
        total += sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
    return total


_SEND = """
import sys, urllib.request
req = urllib.request.Request(
    f"http://127.0.0.1:{sys.argv[1]}/DataCapsuleProxy/PutResultData",
    data=sys.argv[2].encode(), headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=60).read()
except Exception:
    pass
"""
