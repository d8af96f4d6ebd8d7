"""The installed ``trustflow`` command finds Mirage through its entry point: listing, report,
verification (real processes, no registration by the test)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def trustflow(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("trustflow", path=str(Path(sys.executable).parent)) or "trustflow"
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )


def test_plugins_lists_mirage_as_simulated() -> None:
    done = trustflow("plugins", "--json")
    assert done.returncode == 0, done.stderr
    [mirage] = [p for p in json.loads(done.stdout) if p["name"] == "tee_mirage"]
    assert mirage["dist"] == "trustflow-tee-mirage"
    assert {(b["kind"], b["name"], b["simulated"]) for b in mirage["backends"]} == {
        ("attester", "mirage", True),
        ("verifier", "mirage", True),
    }


def test_attest_report_and_verify(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    user_data = "00" * 31 + "2a"
    done = trustflow(
        "attest", "report", "--plat", "mirage", "--user-data", user_data, "--out", str(report)
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(report.read_text())["str_tee_platform"] == "MIRAGE"
    # simulated evidence: refused unless simulation is allowed
    refused = trustflow("attest", "verify", "--report", str(report), "--user-data", user_data)
    assert refused.returncode != 0
    assert "simulat" in refused.stdout + refused.stderr
    accepted = trustflow(
        "attest",
        "verify",
        "--report",
        str(report),
        "--user-data",
        user_data,
        "--allow-simulation",
        "--json",
    )
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    verdict = json.loads(accepted.stdout)
    assert "MIRAGE" in json.dumps(verdict)
