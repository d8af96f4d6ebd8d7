"""Plugin wiring and ``trustflow attest verify --plat csv`` on the bundled vectors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from trustflow_core.cli import build_cli
from trustflow_core.errors import BackendUnavailable
from trustflow_core.manager import get_plugin_manager
from trustflow_core.registry import (
    ATTESTER,
    VERIFIER,
    backend_class,
    backends_of,
    list_plugins,
    verifier_for_platform,
)

from trustflow_tee_csv.attester import CsvAttester
from trustflow_tee_csv.verifier import CsvVerifier


def test_tee_csv_plugin_is_installed():
    info = {i.name: i for i in list_plugins(get_plugin_manager())}["tee_csv"]
    assert info.dist == "trustflow-tee-csv" and info.error is None
    assert info.module == "trustflow_tee_csv.plugin"
    assert {(b.kind, b.name) for b in info.backends} == {("attester", "csv"), ("verifier", "csv")}


def test_backends_are_found_by_name_and_platform():
    pm = get_plugin_manager()
    assert backends_of(pm, ATTESTER)["csv"] is CsvAttester
    assert backend_class(pm, VERIFIER, "csv") is CsvVerifier
    assert verifier_for_platform(pm, "CSV") is CsvVerifier


@pytest.fixture
def run():
    runner = CliRunner()
    return lambda *args: runner.invoke(build_cli(), [str(a) for a in args])


@pytest.fixture
def files(vectors):
    return {
        "report": vectors / "csv-rs" / "report.cert",
        "certs": vectors / "csv-rs" / "hsk_cek.cert",
        "trustee": vectors / "trustee" / "csv_evidence.json",
    }


@pytest.mark.skipif(CsvAttester.viable(), reason="this host is a CSV guest")
def test_attester_outside_a_guest_is_unavailable(run):
    with pytest.raises(BackendUnavailable, match="csv-guest"):
        backend_class(get_plugin_manager(), ATTESTER, "csv")
    result = run("attest", "report", "--plat", "csv", "--user-data", "00")
    assert result.exit_code != 0
    assert "csv-guest" in (result.output + repr(result.exception))


def test_quote_with_certs_is_accepted(run, files, report_expected):
    result = run(
        "attest", "verify", "--quote", files["report"], "--plat", "csv",
        "--certs", files["certs"], "--user-data", b"user data".hex(), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "accepted"
    assert verdict["attributes"]["hex_boot_measurement"] == report_expected["measure"]
    assert verdict["details"]["chip_id"] == report_expected["chip_id"]


def test_wrong_user_data_is_rejected(run, files):
    result = run(
        "attest", "verify", "--quote", files["report"], "--plat", "csv",
        "--certs", files["certs"], "--user-data", b"other".hex(),
    )  # fmt: skip
    assert result.exit_code == 1
    assert "check 'policy' failed" in result.stdout


def test_trustee_evidence_fails_closed_offline(run, files, trustee_expected):
    result = run("attest", "verify", "--quote", files["trustee"], "--plat", "csv", "--json")
    assert result.exit_code == 1
    verdict = json.loads(result.stdout)
    assert verdict["check"] == "endorsement"
    assert trustee_expected["chip_id"] in verdict["message"]


def test_report_file_round_trip(run, files, tmp_path):
    """A report JSON built from the raw evidence verifies through --report too."""
    report = CsvVerifier.report_from_evidence(
        files["report"].read_bytes(), endorsements=files["certs"].read_bytes()
    )
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report.to_dict()))
    assert run("attest", "verify", "--report", path).exit_code == 0


def test_local_cert_settings(run, files, tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"hsk_cek_file: {files['certs']}\n")
    result = run(
        "attest", "verify", "--quote", files["report"], "--plat", "csv", "--settings", settings
    )
    assert result.exit_code == 0, result.output


def test_bad_evidence_is_a_format_rejection(run, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 10)
    result = run("attest", "verify", "--quote", junk, "--plat", "csv", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["check"] == "format"


def test_report_json_as_quote_takes_certs(run, files, tmp_path):
    """A chainless CSV report JSON plus --certs (the way to add HSK/CEK to a stored report)."""
    bare = CsvVerifier.report_from_evidence(files["report"].read_bytes())
    path = tmp_path / "bare.json"
    path.write_text(json.dumps(bare.to_dict()))
    assert run("attest", "verify", "--report", path).exit_code == 1
    result = run("attest", "verify", "--quote", path, "--plat", "csv", "--certs", files["certs"])
    assert result.exit_code == 0, result.output
