"""``trustflow attest verify --report`` given raw evidence (a binary CSV report, a TDX quote)
recognizes it and verifies it as ``--quote`` with the platform that recognized it, saying so on
stderr, instead of failing with a UTF-8 decode error (issue 15). The files and the expected
values come from shared/testdata/attestation/expected.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from trustflow_core.testing.support import compat_vectors_dir

TRUSTFLOW = str(Path(sys.executable).parent / "trustflow")
VECTORS = compat_vectors_dir().parent / "attestation"


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    return json.loads((VECTORS / "expected.json").read_text())  # type: ignore[no-any-return]


def _verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "tee_csv,tee_tdx,tee_sim"}
    return subprocess.run(
        [TRUSTFLOW, "attest", "verify", *map(str, args), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_raw_csv_report_given_as_report(expected: dict[str, Any]) -> None:
    name = "csv/csv-rs/report.cert"
    facts = expected["csv"][name]
    raw = VECTORS / name
    assert len(raw.read_bytes()) == facts["len"]
    done = _verify("--report", raw, "--certs", VECTORS / "csv/csv-rs/hsk_cek.cert")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == (
        f"note: {raw} is raw CSV evidence, not a report JSON; "
        f"verifying it as --quote {raw} --plat csv\n"
    )
    verdict = json.loads(done.stdout)
    assert verdict["verdict"] == "accepted"
    assert verdict["attributes"]["str_tee_platform"] == "CSV"
    assert verdict["attributes"]["hex_boot_measurement"] == facts["measure"]
    assert verdict["details"]["chip_id"] == facts["chip_id"]


def test_raw_tdx_quote_given_as_report(expected: dict[str, Any]) -> None:
    name = "tdx/dcap-qvl/tdx_quote"
    (evaluation,) = [
        e for e in expected["tdx"][name]["evaluations"] if e["expected_status"] == "UpToDate"
    ]
    raw = VECTORS / name
    collateral = VECTORS / evaluation["collateral"]["files"][0]
    done = _verify("--report", raw, "--collateral", collateral, "--time", evaluation["verify_time"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is raw TDX evidence, not a report JSON" in done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["verdict"] == "accepted"
    assert verdict["attributes"]["str_tee_platform"] == "TDX"


def test_binary_that_no_verifier_recognizes_is_one_clear_verdict() -> None:
    cert = VECTORS / "csv/csv-rs/hsk.cert"  # binary, but a certificate, not evidence
    done = _verify("--report", cert)
    assert done.returncode == 1
    verdict = json.loads(done.stdout)
    assert verdict["verdict"] == "rejected" and verdict["check"] == "format"
    assert verdict["message"] == (
        f"{cert} is not a report JSON and no installed verifier recognizes it as raw "
        f"evidence; for raw evidence use --quote {cert} --plat P"
    )
    assert "utf-8" not in done.stdout + done.stderr


def test_raw_evidence_of_the_named_platform_is_still_verified_by_it() -> None:
    """--plat picks the verifier: raw CSV evidence checked as TDX is rejected by TDX."""
    raw = VECTORS / "csv/csv-rs/report.cert"
    done = _verify("--report", raw, "--plat", "tdx")
    assert done.returncode == 1
    assert json.loads(done.stdout)["verdict"] == "rejected"
    assert "verifying it as --quote" in done.stderr and "--plat tdx" in done.stderr
