"""Wiring: the plugin is installed, registers the tdx backends, and the CLI verifies quotes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import attestation_dir, collateral_from_files, evaluations
from trustflow_core.cli import build_cli
from trustflow_core.errors import InvalidInput
from trustflow_core.manager import get_plugin_manager
from trustflow_core.registry import list_plugins

from trustflow_tee_tdx.verifier import TdxVerifier


def test_tee_tdx_plugin_is_installed() -> None:
    plugins = {p.name: p for p in list_plugins(get_plugin_manager())}
    assert "tee_tdx" in plugins
    info = plugins["tee_tdx"]
    assert info.dist == "trustflow-tee-tdx"
    names = {(b.kind, b.name) for b in info.backends}
    assert names == {("verifier", "tdx"), ("attester", "tdx")}


@pytest.mark.parametrize(
    "settings",
    [
        {"unknown": 1},
        {"accepted_tcb_statuses": ["Fine"]},
        {"accepted_tcb_statuses": ["TcbNotSupported"]},
        {"accepted_tcb_statuses": "UpToDate"},
        {"require_crls": "yes"},
        {"pccs_url": "ftp://x"},
        {"pccs_url": "http://127.0.0.1:1", "pccs_timeout_seconds": 0},
        {"collateral_file": "/nonexistent/collateral.json"},
        {"min_tcb_evaluation_data_number": -1},
        {"min_tcb_evaluation_data_number": "17"},
    ],
)
def test_bad_settings_are_rejected(settings: dict) -> None:
    with pytest.raises(InvalidInput):
        TdxVerifier.from_settings(settings)


def _evaluation(status: str) -> tuple[str, dict]:
    return next((n, ev) for n, _, ev in evaluations() if ev["expected_status"] == status)


def _verify_cli(tmp_path, name: str, ev: dict, *extra: str):
    collateral = tmp_path / "collateral.json"
    collateral.write_text(collateral_from_files(ev["collateral"]["files"]).to_json())
    args = [
        "attest",
        "verify",
        "--plat",
        "tdx",
        "--quote",
        str(attestation_dir() / name),
        "--collateral",
        str(collateral),
        "--time",
        ev["verify_time"],
        *extra,
    ]
    return CliRunner().invoke(build_cli(), args)


def test_cli_accepts_an_up_to_date_quote(tmp_path) -> None:
    name, ev = next(
        (n, ev)
        for n, _, ev in evaluations()
        if ev["expected_status"] == "UpToDate" and "dcap-qvl" in n
    )
    result = _verify_cli(tmp_path, name, ev, "--json")
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.output)
    assert verdict["verdict"] == "accepted"
    assert verdict["details"]["tcb_status"] == "UpToDate"
    assert verdict["details"]["advisory_ids"] == []
    assert verdict["attributes"]["str_tee_platform"] == "TDX"
    text = _verify_cli(tmp_path, name, ev)
    assert text.exit_code == 0 and "tcb_status: UpToDate" in text.output


def test_cli_rejects_tcb_not_supported(tmp_path) -> None:
    name, ev = _evaluation("TcbNotSupported")
    result = _verify_cli(tmp_path, name, ev, "--json")
    assert result.exit_code == 1, result.output
    verdict = json.loads(result.output)
    assert verdict["check"] == "tcb_status" and "TcbNotSupported" in verdict["message"]


def test_cli_rejects_expired_collateral(tmp_path) -> None:
    name, ev = _evaluation("CollateralExpired")
    result = _verify_cli(tmp_path, name, ev)
    assert result.exit_code == 1
    assert "collateral_expired" in result.output


def test_cli_rejects_garbage_quote(tmp_path) -> None:
    bad = tmp_path / "quote.bin"
    bad.write_bytes(b"\x04\x00" + b"\x00" * 100)
    result = CliRunner().invoke(
        build_cli(), ["attest", "verify", "--plat", "tdx", "--quote", str(bad)]
    )
    assert result.exit_code == 1
    assert "quote_format" in result.output
    result = CliRunner().invoke(
        build_cli(),
        ["attest", "verify", "--plat", "tdx", "--quote", str(bad), "--collateral", str(bad)],
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
