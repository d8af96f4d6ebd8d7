"""``trustflow attest verify`` on evidence files nested deeper than the JSON parser's recursion
limit (found by fuzzing): one ``rejected: check 'format' failed`` line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from trustflow_core.testing.fixtures import compat_vectors_dir

TRUSTFLOW = str(Path(sys.executable).parent / "trustflow")
DEEP_JSON = '{"a":' * 100_000


@pytest.mark.parametrize(
    ("plat", "deep_option", "reason"),
    [
        ("csv", "--quote", "CSV evidence is neither a binary report nor JSON"),
        ("tdx", "--collateral", "collateral is not JSON"),
        ("tdx", "--report", "json_report is not JSON"),
        ("csv", "surrogate", "json_report is not valid Unicode"),
    ],
)
def test_deeply_nested_evidence_is_rejected_in_one_line(
    tmp_path: Path, plat: str, deep_option: str, reason: str
) -> None:
    deep = tmp_path / "deep.json"
    if deep_option == "--report":  # a report whose json_report is the deep document
        deep.write_text(
            '{"str_report_version":"1.0","str_report_type":"Passport",'
            f'"str_tee_platform":"TDX","json_report":"{DEEP_JSON}"}}'.replace('"a":', '\\"a\\":')
        )
        args = ["--report", str(deep)]
    elif deep_option == "surrogate":  # a CSV report whose json_report JSON escapes "\ud800"
        deep.write_text('{"str_tee_platform": "CSV", "json_report": "\\ud800"}')
        args = ["--quote", str(deep)]
    elif deep_option == "--collateral":
        quote = compat_vectors_dir().parent / "attestation" / "tdx" / "dcap-qvl" / "tdx_quote"
        deep.write_text(DEEP_JSON)
        args = ["--quote", str(quote), "--collateral", str(deep)]
    else:
        deep.write_text(DEEP_JSON)
        args = ["--quote", str(deep)]
    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "tee_csv,tee_tdx"}
    done = subprocess.run(
        [TRUSTFLOW, "attest", "verify", "--plat", plat, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    assert len(output.splitlines()) == 1, output
    assert "rejected: check 'format' failed" in output and reason in output, output
