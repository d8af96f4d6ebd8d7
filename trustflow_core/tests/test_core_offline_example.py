"""``examples/offline``: the example app is the very file ``trustflow demo offline`` runs, it
runs on its own (standard library only), and the demo works with the v2 result format."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_core_offline_psi import expected_join

from trustflow_core.capsule.v2 import MAGIC
from trustflow_core.demo import psi_app
from trustflow_core.demo.offline import run_offline

pytestmark = [
    pytest.mark.plugins("channel_jwe", "tee_sim", "storage_local", "storage_oss"),
    pytest.mark.usefixtures("plugin_env"),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"


def test_offline_example_is_the_demo_app():
    app = EXAMPLE / "psi_app.py"
    assert app.resolve() == Path(psi_app.__file__).resolve()
    assert (EXAMPLE / "README.md").read_text().count("trustflow demo offline") >= 1


def test_offline_example_runs_standalone(tmp_path):
    """Without site-packages (-S) and isolated (-I): the app needs only the standard library;
    a bad or unreachable proxy is a one-line failure, not a traceback."""
    app = str(EXAMPLE / "psi_app.py")
    done = subprocess.run(
        [sys.executable, "-I", "-S", app, "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and "--proxy" in done.stdout, done.stderr
    done = subprocess.run(
        [sys.executable, "-I", "-S", app, "--proxy", "ftp://x", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and done.stderr.strip() == (
        "--proxy must be an http(s) URL, got 'ftp://x'"
    )
    with socket.socket() as bound:  # bound, not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{bound.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-I", "-S", app, "--proxy", proxy, "--data", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"GetInputData failed: proxy {proxy} unreachable")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


@pytest.mark.asyncio
async def test_offline_demo_with_v2_results(tmp_path):
    work = tmp_path / "work"
    result = await run_offline(work=work, result_format="v2")
    assert result.joined_csv == expected_join("demo_sample")
    assert (work / "data" / "join.csv.enc").read_bytes()[: len(MAGIC)] == (MAGIC)
