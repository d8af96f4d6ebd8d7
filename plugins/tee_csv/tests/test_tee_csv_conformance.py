"""The csv backends pass the core attestation conformance kits. The verifier kit's tamper
test flips every byte of the report and of the embedded HSK/CEK chain."""

from __future__ import annotations

import dataclasses

import pytest
from tee_csv_fakes import TemplateFirmware
from trustflow_core.attestation import Report
from trustflow_core.testing.attestation import (
    AttesterConformance,
    VerifierConformance,
    flipped,
)

from trustflow_tee_csv.attester import CsvAttester
from trustflow_tee_csv.certs import CertSources
from trustflow_tee_csv.evidence import CsvEvidence
from trustflow_tee_csv.verifier import CsvVerifier


def tamper_every_byte(report: Report) -> list[Report]:
    """One copy per byte of the decoded quote, HSK and CEK, with that byte XOR 0x01."""
    evidence = CsvEvidence.from_json(report.json_report)
    copies = []
    for name in ("quote", "hsk", "cek"):
        for data in flipped(getattr(evidence, name)):
            changed = dataclasses.replace(evidence, **{name: data})
            copies.append(dataclasses.replace(report, json_report=changed.to_json()))
    return copies


class TestCsvVerifierConformance(VerifierConformance):
    @pytest.fixture
    def verifier(self):
        return CsvVerifier.from_settings({})

    @pytest.fixture
    def good_report(self, good_report):  # the conftest fixture: csv-rs report + chain
        return good_report

    @pytest.fixture
    def good_report_user_data(self, report_expected):
        return bytes.fromhex(report_expected["report_data"])[:32].rstrip(b"\0")

    @pytest.fixture
    def tamper(self):
        return tamper_every_byte

    @pytest.fixture
    def expected_attributes(self, report_expected):
        return {
            "hex_boot_measurement": report_expected["measure"],
            "hex_nonce": report_expected["mnonce"],
            "hex_prod_id": report_expected["vm_id"],
            "hex_platform_sw_version": report_expected["vm_version"],
            "hex_hash_or_pem_pubkey": report_expected["report_data"][64:],
            "bool_debug_disabled": "true",
        }


class TestCsvAttesterConformance(AttesterConformance):
    @pytest.fixture
    def attester(self, report_raw, vectors):
        sources = CertSources(hsk_cek_file=vectors / "csv-rs" / "hsk_cek.cert")
        return CsvAttester(TemplateFirmware(report_raw), sources)
