"""Shared fixtures: the bundled Hygon CSV vectors (shared/testdata/attestation) and their
expectations (expected.json), read from the files, never re-typed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from trustflow_core.attestation import Report
from trustflow_core.testing.fixtures import compat_vectors_dir

from trustflow_tee_csv.verifier import CsvVerifier


def attestation_dir() -> Path:
    """``shared/testdata/attestation`` (next to the compat vectors); missing means failure."""
    path = compat_vectors_dir().parent / "attestation"
    if not (path / "expected.json").is_file():
        raise FileNotFoundError(f"attestation vectors not found at {path}")
    return path


@pytest.fixture(scope="session")
def vectors() -> Path:
    return attestation_dir() / "csv"


@pytest.fixture(scope="session")
def expected_all() -> dict[str, Any]:
    return json.loads((attestation_dir() / "expected.json").read_text())


@pytest.fixture(scope="session")
def expected(expected_all: dict[str, Any]) -> dict[str, Any]:
    return expected_all["csv"]


@pytest.fixture(scope="session")
def sm2_vectors(expected_all: dict[str, Any]) -> list[dict[str, Any]]:
    return expected_all["sm2_vectors"]


@pytest.fixture(scope="session")
def report_raw(vectors: Path) -> bytes:
    return (vectors / "csv-rs" / "report.cert").read_bytes()


@pytest.fixture(scope="session")
def hsk_cek_raw(vectors: Path) -> bytes:
    return (vectors / "csv-rs" / "hsk_cek.cert").read_bytes()


@pytest.fixture(scope="session")
def trustee_raw(vectors: Path) -> bytes:
    return (vectors / "trustee" / "csv_evidence.json").read_bytes()


@pytest.fixture(scope="session")
def report_expected(expected: dict[str, Any]) -> dict[str, Any]:
    return expected["csv/csv-rs/report.cert"]


@pytest.fixture(scope="session")
def trustee_expected(expected: dict[str, Any]) -> dict[str, Any]:
    return expected["csv/trustee/csv_evidence.json"]


@pytest.fixture(scope="session")
def good_report(report_raw: bytes, hsk_cek_raw: bytes) -> Report:
    """The csv-rs report with its HSK/CEK embedded, in the upstream layout."""
    return CsvVerifier.report_from_evidence(report_raw, endorsements=hsk_cek_raw)


@pytest.fixture(autouse=True)
def _only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "tee_csv")
    for name in ("TRUSTFLOW_TEE", "TRUSTFLOW_VERIFIER", "TRUSTFLOW_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(name, raising=False)
