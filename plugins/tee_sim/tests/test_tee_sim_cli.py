"""``trustflow attest report`` / ``trustflow attest verify`` with the sim backends."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from trustflow_core.attestation import Report
from trustflow_core.cli import build_cli

USER_DATA = "00112233445566778899aabbccddeeff"


@pytest.fixture
def run():
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(build_cli(), list(args))

    return run


@pytest.fixture
def report_file(run, tmp_path):
    path = tmp_path / "report.json"
    result = run("attest", "report", "--plat", "sim", "--user-data", USER_DATA, "--out", str(path))
    assert result.exit_code == 0, result.output
    return path


def verify(run, report_file, *args: str):
    return run("attest", "verify", "--report", str(report_file), *args)


def test_report_prints_wire_json(run):
    result = run("attest", "report", "--plat", "sim", "--user-data", USER_DATA)
    assert result.exit_code == 0, result.output
    report = Report.from_dict(json.loads(result.stdout))
    assert report.str_tee_platform == "SIM"
    assert report.str_report_version == "1.0" and report.str_report_type == "Passport"
    assert set(json.loads(result.stdout)) == {
        "str_tee_platform",
        "json_report",
        "str_report_version",
        "str_report_type",
    }


def test_report_to_file_then_verify_is_accepted(run, report_file):
    result = verify(run, report_file, "--user-data", USER_DATA, "--allow-simulation")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("accepted (SIMULATED evidence)")
    assert f"hex_user_data: {USER_DATA}{'00' * 16}" in result.stdout


def test_json_verdict(run, report_file):
    result = verify(run, report_file, "--allow-simulation", "--json")
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "accepted" and verdict["check"] is None
    assert verdict["simulated"] is True
    assert verdict["attributes"]["str_tee_platform"] == "SIM"
    assert verdict["attributes"]["hex_user_data"] == USER_DATA + "00" * 16


def test_rejected_without_allow_simulation(run, report_file):
    result = verify(run, report_file, "--user-data", USER_DATA, "--json")
    assert result.exit_code == 1
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "rejected" and verdict["check"] == "simulation"
    assert verdict["attributes"] == {}


def test_tampered_file_is_rejected_without_traceback(run, report_file):
    wire = json.loads(report_file.read_text())
    inner = wire["json_report"]
    i = inner.index('\\"hex_user_data\\":\\"') + 22  # inside the signed body's user data
    wire["json_report"] = inner[:i] + ("1" if inner[i] != "1" else "2") + inner[i + 1 :]
    report_file.write_text(json.dumps(wire))
    result = verify(run, report_file, "--allow-simulation")
    assert result.exit_code == 1
    assert "rejected: check 'signature' failed" in result.stdout
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


def _rewrite_outer(report_file, change) -> None:
    wire = json.loads(report_file.read_text())
    outer = json.loads(wire["json_report"])
    change(outer)
    wire["json_report"] = json.dumps(outer, sort_keys=True, separators=(",", ":"))
    report_file.write_text(json.dumps(wire))


def test_user_data_is_at_the_top_of_json_report(run, report_file):
    """A generic client finds the binding where upstream suggests it, and it is the signed
    one: the verifier accepts the report and reports the same user data."""
    outer = json.loads(json.loads(report_file.read_text())["json_report"])
    assert outer["hex_user_data"] == USER_DATA + "00" * 16
    assert json.loads(outer["json_body"])["hex_user_data"] == outer["hex_user_data"]
    result = verify(run, report_file, "--user-data", USER_DATA, "--allow-simulation", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["attributes"]["hex_user_data"] == outer["hex_user_data"]


def test_top_level_user_data_must_be_the_signed_one(run, report_file):
    def other(outer):
        outer["hex_user_data"] = "ff" * 32

    _rewrite_outer(report_file, other)
    result = verify(run, report_file, "--allow-simulation", "--json")
    assert result.exit_code == 1
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "rejected" and verdict["check"] == "format"
    assert verdict["message"] == (
        "json_report hex_user_data is not the signed body's hex_user_data"
    )


def test_reports_without_top_level_user_data_still_verify(run, report_file):
    """Reports made before the field was added keep verifying (the body is what is signed)."""
    _rewrite_outer(report_file, lambda outer: outer.pop("hex_user_data"))
    assert "hex_user_data" not in json.loads(json.loads(report_file.read_text())["json_report"])
    result = verify(run, report_file, "--user-data", USER_DATA, "--allow-simulation")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("content", "check"), [("not json", "format"), ('{"json_report": "x"}', "format")]
)
def test_malformed_report_file_is_rejected(run, tmp_path, content, check):
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = verify(run, path, "--allow-simulation", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["check"] == check


def test_user_data_mismatch_is_rejected(run, report_file):
    result = verify(run, report_file, "--user-data", "ff" * 16, "--allow-simulation")
    assert result.exit_code == 1
    assert "check 'policy' failed" in result.stdout and "hex_user_data" in result.stdout


def test_policy_file_with_measurements(run, report_file, tmp_path):
    accepted = json.loads(verify(run, report_file, "--allow-simulation", "--json").stdout)
    ta = accepted["attributes"]["hex_ta_measurement"]
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"main_attributes": [{"hex_ta_measurement": ta}]}))
    result = verify(run, report_file, "--policy", str(policy), "--allow-simulation")
    assert result.exit_code == 0, result.output
    policy.write_text(
        json.dumps(
            {"main_attributes": [{"hex_ta_measurement": "00" * 32}], "allow_simulation": True}
        )
    )
    result = verify(run, report_file, "--policy", str(policy), "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["check"] == "policy"


def test_time_option_is_used(run, report_file):
    result = verify(run, report_file, "--allow-simulation", "--time", "2001-01-01T00:00:00Z")
    assert result.exit_code == 1
    assert "check 'timestamp' failed" in result.stdout
    result = verify(run, report_file, "--allow-simulation", "--time", "yesterday")
    assert result.exit_code == 1
    assert "--time must be ISO 8601" in result.output


def test_explicit_verifier_rejects_another_platform(run, report_file):
    wire = json.loads(report_file.read_text())
    wire["str_tee_platform"] = "TDX"
    report_file.write_text(json.dumps(wire))
    result = verify(run, report_file, "--plat", "sim", "--allow-simulation", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["check"] == "platform"


def test_unknown_platform_has_a_clear_error(run, report_file):
    wire = json.loads(report_file.read_text())
    wire["str_tee_platform"] = "TDX"
    report_file.write_text(json.dumps(wire))
    result = verify(run, report_file, "--allow-simulation")
    assert result.exit_code == 1
    assert "no verifier for TEE platform 'TDX'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plat", "tdx", "--user-data", "00"], "no attester backend 'tdx'"),
        (["--plat", "sim", "--user-data", "xyz"], "--user-data must be hex"),
        (["--plat", "sim", "--user-data", "00" * 33], "at most 32"),
        (["--user-data", "00"], "simulated backends must be named"),
    ],
)
def test_report_errors_exit_1(run, args, message):
    result = run("attest", "report", *args)
    assert result.exit_code == 1
    assert message in result.output


def test_report_settings_file(run, tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("measurements:\n  hex_ta_measurement: 'ab'\ndebug: true\n")
    out = tmp_path / "r.json"
    result = run(
        "attest", "report", "--plat", "sim", "--user-data", "01",
        "--settings", str(settings), "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    verdict = json.loads(verify(run, out, "--allow-simulation", "--json").stdout)
    assert verdict["attributes"]["hex_ta_measurement"] == "ab"
    assert verdict["attributes"]["bool_debug_disabled"] == "false"


def test_verify_quote_with_a_backend_that_cannot_wrap_raw_evidence(tmp_path):
    quote = tmp_path / "q.bin"
    quote.write_bytes(b"\0" * 64)
    result = CliRunner().invoke(
        build_cli(), ["attest", "verify", "--quote", str(quote), "--plat", "sim"]
    )
    assert result.exit_code == 1
    assert "cannot wrap raw evidence" in result.output
