"""``trustflow attest doctor --plat tdx|csv`` as an operator runs it, on this host (not a TD,
not a CSV guest): every check printed, generation not tried, exit status 1. The outcomes on
faked guests are tested in the tee_tdx / tee_csv suites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trustflow_tee_csv.attester import CsvAttester
from trustflow_tee_tdx.attester import TdxAttester

TRUSTFLOW = str(Path(sys.executable).parent / "trustflow")


@pytest.mark.parametrize(("plat", "cls"), [("tdx", TdxAttester), ("csv", CsvAttester)])
def test_doctor_outside_a_guest(tmp_path: Path, plat: str, cls: type) -> None:
    if cls.viable():
        pytest.skip(f"this host is a {plat} guest")
    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "tee_tdx,tee_csv"}
    for name in ("TRUSTFLOW_TEE", "TRUSTFLOW_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(name, None)
    done = subprocess.run(
        [TRUSTFLOW, "attest", "doctor", "--plat", plat, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["verdict"] == "not ready" and verdict["report_type"] is None
    checks = {c["name"]: c for c in verdict["checks"]}
    assert checks["guest"]["status"] == "fail"
    assert checks["generate"]["detail"].startswith("not tried: ")
    text = subprocess.run(
        [TRUSTFLOW, "attest", "doctor", "--plat", plat],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 1 and text.stdout.splitlines()[-1] == "verdict: not ready"
    assert "[FAIL] guest: " in text.stdout
