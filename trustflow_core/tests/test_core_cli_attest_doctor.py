"""``trustflow attest doctor`` through the CLI (the per-platform diagnoses and verdicts are
tested with faked seams in the tee_tdx / tee_csv suites)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from trustflow_core.cli import build_cli


def test_doctor_runs_the_whole_chain_on_the_simulated_tee():
    result = CliRunner().invoke(build_cli(), ["attest", "doctor", "--plat", "sim", "--json"])
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.output)
    assert verdict["verdict"] == "ready" and verdict["platform"] == "SIM"
    names = [c["name"] for c in verdict["checks"]]
    assert names == ["guest", "generate", "simulated", "verify"]
    assert verdict["report_type"] == "Passport"


def test_doctor_text_output_and_unknown_backend():
    result = CliRunner().invoke(build_cli(), ["attest", "doctor", "--plat", "sim"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "verdict: ready"
    assert "[  ok] generate: Passport report" in result.output
    result = CliRunner().invoke(build_cli(), ["attest", "doctor", "--plat", "nosuch"])
    assert result.exit_code == 1
    assert "no attester backend 'nosuch'" in result.output


def test_doctor_bad_settings_file_is_one_line(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("- not a mapping\n")
    result = CliRunner().invoke(
        build_cli(), ["attest", "doctor", "--plat", "sim", "--settings", str(bad)]
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output and result.output.startswith("Error:")
