"""Mirage passes the attestation conformance kits, like every first-party TEE backend."""

from __future__ import annotations

import pytest
import pytest_asyncio
from trustflow_core.attestation import Report
from trustflow_core.testing.attestation import AttesterConformance, VerifierConformance

from trustflow_tee_mirage.backends import MirageAttester, MirageVerifier
from trustflow_tee_mirage.report import DEFAULT_MEASUREMENTS


class TestMirageAttesterConformance(AttesterConformance):
    @pytest.fixture
    def attester(self) -> MirageAttester:
        return MirageAttester.from_settings({})


class TestMirageVerifierConformance(VerifierConformance):
    @pytest.fixture
    def verifier(self) -> MirageVerifier:
        return MirageVerifier.from_settings({})

    @pytest.fixture
    def good_report_user_data(self) -> bytes:
        return b"mirage conformance"

    @pytest_asyncio.fixture
    async def good_report(self, good_report_user_data: bytes) -> Report:
        return await MirageAttester.from_settings({}).generate(good_report_user_data)

    @pytest.fixture
    def expected_attributes(self) -> dict[str, str]:
        return {
            "hex_ta_measurement": DEFAULT_MEASUREMENTS["image"],
            "hex_boot_measurement": DEFAULT_MEASUREMENTS["firmware"],
            "hex_signer": DEFAULT_MEASUREMENTS["signer"],
            "bool_debug_disabled": "true",
        }
