"""The tdx verifier passes the core attestation conformance kit on a real quote."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import collateral_from_files, evaluations, expected_tdx, read, when
from trustflow_core.testing.attestation import VerifierConformance, flipped

from trustflow_tee_tdx.quote import parse_quote
from trustflow_tee_tdx.report import make_report, open_report
from trustflow_tee_tdx.verifier import TdxVerifier

GOOD = "tdx/dcap-qvl/tdx_quote"


def _good_evaluation() -> dict:
    return next(
        ev for name, _, ev in evaluations() if name == GOOD and ev["expected_status"] == "UpToDate"
    )


class TestTdxVerifierConformance(VerifierConformance):
    @pytest.fixture
    def verifier(self):
        return TdxVerifier.from_settings({})

    @pytest.fixture
    def good_report_user_data(self):
        return bytes.fromhex(expected_tdx()[GOOD]["body"]["report_data"])[:32]

    @pytest.fixture
    def good_report(self):
        collateral = collateral_from_files(_good_evaluation()["collateral"]["files"])
        return make_report(read(GOOD), collateral)

    @pytest.fixture
    def verify_time(self):
        return when(_good_evaluation()["verify_time"])

    @pytest.fixture
    def tamper(self):
        def tamper(report):
            """Every byte of the signed region, signature, attestation key, QE report, its
            signature and the QE auth data flipped (every byte of the whole quote, PCK chain
            included, is flipped for every vector in test_tee_tdx_quote.py)."""
            quote, collateral = open_report(report.json_report)
            parsed = parse_quote(quote)
            end = len(parsed.signed) + 4 + 128 + 6 + 384 + 64 + 2 + len(parsed.qe_auth_data)
            return [make_report(bad + quote[end:], collateral) for bad in flipped(quote[:end])]

        return tamper

    @pytest.fixture
    def expected_attributes(self):
        body = expected_tdx()[GOOD]["body"]
        platform = "".join(
            body[k]
            for k in (
                "mr_seam",
                "mr_signer_seam",
                "mr_td",
                "mr_config_id",
                "mr_owner",
                "mr_owner_config",
            )
        )
        return {
            "hex_platform_measurement": platform,
            "hex_boot_measurement": body["rtmr0"] + body["rtmr1"],
            "hex_ta_measurement": body["rtmr2"] + body["rtmr3"],
            "hex_hash_or_pem_pubkey": body["report_data"][64:],
            "hex_secure_flags": body["td_attributes"] + body["xfam"],
            "bool_debug_disabled": "false" if expected_tdx()[GOOD]["td_debug"] else "true",
        }


class TestTdxVerifierConformanceCollateralFromFile(TestTdxVerifierConformance):
    """The same quote as a BackgroundCheck-style report, collateral from a local bundle file."""

    @pytest.fixture
    def verifier(self, tmp_path):
        files = _good_evaluation()["collateral"]["files"]
        path = tmp_path / "collateral.json"
        path.write_text(collateral_from_files(files).to_json())
        return TdxVerifier.from_settings({"collateral_file": str(path)})

    @pytest.fixture
    def good_report(self):
        return dataclasses.replace(make_report(read(GOOD), None), str_report_type="BackgroundCheck")

    @pytest.fixture
    def tamper(self):
        def tamper(report):
            quote, _ = open_report(report.json_report)
            end = len(parse_quote(quote).signed)  # the signed region (lighter sweep)
            return [
                dataclasses.replace(
                    make_report(bad + quote[end:], None), str_report_type="BackgroundCheck"
                )
                for bad in flipped(quote[:end])
            ]

        return tamper
