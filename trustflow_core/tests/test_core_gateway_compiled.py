"""The build of the gateway's request path (roles/gateway/compiled.py): interpreted from an
editable install, compiled by mypyc in the ``compiled`` tox env (a wheel built with
``TRUSTFLOW_COMPILE=1``), where the gateway's own tests then run against the extensions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from trustflow_core.compiled_build import is_compiled
from trustflow_core.roles.gateway import compiled
from trustflow_core.testing.fixtures import free_port

TRUSTFLOW = shutil.which("trustflow", path=str(Path(sys.executable).parent)) or "trustflow"


def _expected() -> str:
    return "compiled" if os.environ.get("TRUSTFLOW_EXPECT_COMPILED") == "1" else "interpreted"


def test_the_running_build_is_the_one_installed() -> None:
    assert compiled.build() == _expected(), {m: is_compiled(m) for m in compiled.MODULES}


def test_the_gateway_logs_its_build_at_start(tmp_path: Path) -> None:
    port, app_port = free_port(), free_port()  # no app: nothing is requested
    config = {
        "listeners": [
            {
                "name": "plain",
                "address": f"127.0.0.1:{port}",
                "routes": [{"prefix": "/", "cluster": "app"}],
            }
        ],
        "clusters": {"app": {"endpoints": [f"127.0.0.1:{app_port}"]}},
    }
    (tmp_path / "gateway.yml").write_text(json.dumps(config))
    gateway = subprocess.Popen(
        [TRUSTFLOW, "gateway", "-c", str(tmp_path / "gateway.yml"), "--workers", "1"],
        env={**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "tee_sim,channel_jwe"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert gateway.stderr is not None
        lines = []
        for line in gateway.stderr:  # ends if the gateway does
            lines.append(line)
            if "gateway request path:" in line:
                break
        assert lines and lines[-1].rstrip().endswith(f"gateway request path: {_expected()}"), lines
    finally:
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=10) == 0
        gateway.stderr.close()


def test_every_listed_module_is_a_source_module_of_the_core() -> None:
    root = Path(compiled.__file__).parents[3]  # the folder holding the trustflow_core package
    for name in compiled.MODULES:
        assert name.split(".")[0] == "trustflow_core", name
        assert root.joinpath(*name.split(".")).with_suffix(".py").is_file(), name
    assert compiled.__name__ not in compiled.MODULES
