"""The sim backends pass the core attestation conformance kits."""

from __future__ import annotations

import pytest
import pytest_asyncio
from trustflow_core.testing.attestation import AttesterConformance, VerifierConformance

from trustflow_tee_sim.attester import SimAttester
from trustflow_tee_sim.verifier import SimVerifier


class TestSimAttesterConformance(AttesterConformance):
    @pytest.fixture
    def attester(self):
        return SimAttester.from_settings({})


class TestSimVerifierConformance(VerifierConformance):
    @pytest.fixture
    def verifier(self):
        return SimVerifier.from_settings({})

    @pytest.fixture
    def good_report_user_data(self):
        return b"tee_sim conformance"

    @pytest_asyncio.fixture
    async def good_report(self, good_report_user_data):
        async with SimAttester.from_settings({}) as attester:
            return await attester.generate(good_report_user_data)

    @pytest.fixture
    def expected_attributes(self):
        return {"bool_debug_disabled": "true", "hex_hash_or_pem_pubkey": "00" * 32}


class TestSimVerifierConformanceWithExplicitTrustAndMeasurements(VerifierConformance):
    """The same kit with a separate key file, an explicit trust list and custom measurements."""

    @pytest.fixture
    def key_file(self, tmp_path):
        return tmp_path / "elsewhere" / "key.pem"

    @pytest.fixture
    def verifier(self, key_file, good_report):
        # good_report first: the attester creates the key file the verifier is told to trust.
        return SimVerifier.from_settings({"trusted_platform_keys": [str(key_file)]})

    @pytest.fixture
    def good_report_user_data(self):
        return bytes(range(32))

    @pytest_asyncio.fixture
    async def good_report(self, key_file, good_report_user_data):
        settings = {
            "platform_key_file": str(key_file),
            "measurements": {"hex_ta_measurement": "ab" * 48},
            "debug": True,
        }
        return await SimAttester.from_settings(settings).generate(good_report_user_data)

    @pytest.fixture
    def expected_attributes(self):
        return {"hex_ta_measurement": "ab" * 48, "bool_debug_disabled": "false"}
