"""CsvAttester against fake firmware (tee_csv_fakes) and the real ioctl path's failure modes."""

from __future__ import annotations

import dataclasses
import json

import pytest
from tee_csv_fakes import ReplayFirmware, TemplateFirmware
from tee_csv_kds import KdsStandIn, serve_kds
from trustflow_core.attestation import BACKGROUND_CHECK, Attributes, Policy
from trustflow_core.errors import BackendUnavailable, InvalidInput, VerificationError

from trustflow_tee_csv.attester import CsvAttester
from trustflow_tee_csv.certs import CertSources
from trustflow_tee_csv.device import DEVICE_PATH, CsvGuestDevice
from trustflow_tee_csv.evidence import CsvEvidence
from trustflow_tee_csv.structs import OFF_SN
from trustflow_tee_csv.verifier import CsvVerifier


@pytest.fixture
def vector_nonce(report_expected):
    return lambda: bytes.fromhex(report_expected["mnonce"])


@pytest.fixture
def vector_user_data(report_expected):
    return bytes.fromhex(report_expected["report_data"])[:32].rstrip(b"\0")


@pytest.fixture
def bundle_sources(vectors):
    return CertSources(hsk_cek_file=vectors / "csv-rs" / "hsk_cek.cert")


@pytest.mark.asyncio
async def test_replayed_real_report_is_shipped_and_verifies(
    report_raw, vector_nonce, vector_user_data, bundle_sources, report_expected
):
    firmware = ReplayFirmware(report_raw)
    async with CsvAttester(firmware, bundle_sources, nonce=vector_nonce) as attester:
        report = await attester.generate(vector_user_data)
    assert len(firmware.requests) == 1
    evidence = CsvEvidence.from_json(report.json_report)
    assert evidence.quote == report_raw  # reserved2 kept: the MAC stays checkable
    assert evidence.chip_id == report_expected["chip_id"]
    assert evidence.hsk and evidence.cek
    policy = Policy((Attributes(str_tee_platform="CSV"),)).with_user_data(vector_user_data)
    verified = await CsvVerifier().verify(report, policy)
    assert verified.details["mac"] == "verified"


@pytest.mark.asyncio
async def test_chain_bundled_from_loopback_kds(
    report_raw, vector_nonce, vector_user_data, hsk_cek_raw, report_expected
):
    async with serve_kds(KdsStandIn({report_expected["chip_id"]: hsk_cek_raw})) as kds:
        sources = CertSources(kds_url=kds.url)
        async with CsvAttester(ReplayFirmware(report_raw), sources, nonce=vector_nonce) as a:
            report = await a.generate(vector_user_data)
    assert (
        CsvEvidence.from_json(report.json_report).hsk
        + CsvEvidence.from_json(report.json_report).cek
        == hsk_cek_raw
    )


@pytest.mark.asyncio
async def test_background_check_and_no_sources_carry_no_chain(
    report_raw, vector_nonce, vector_user_data, bundle_sources
):
    attester = CsvAttester(ReplayFirmware(report_raw), bundle_sources, nonce=vector_nonce)
    report = await attester.generate(vector_user_data, report_type=BACKGROUND_CHECK)
    assert "json_cert_chain" not in json.loads(report.json_report)
    attester = CsvAttester(ReplayFirmware(report_raw), nonce=vector_nonce)
    assert "json_cert_chain" not in json.loads(
        (await attester.generate(vector_user_data)).json_report
    )


@pytest.mark.asyncio
async def test_another_nonce_is_detected(report_raw, vector_user_data):
    attester = CsvAttester(ReplayFirmware(report_raw), nonce=lambda: b"\x01" * 16)
    with pytest.raises(BackendUnavailable, match="mnonce"):
        await attester.generate(vector_user_data)


@pytest.mark.asyncio
async def test_other_user_data_is_detected(report_raw, vector_nonce):
    attester = CsvAttester(ReplayFirmware(report_raw), nonce=vector_nonce)
    with pytest.raises(BackendUnavailable, match="report data"):
        await attester.generate(b"something else")


@pytest.mark.asyncio
async def test_host_swapping_the_chip_id_is_detected(report_raw, vector_nonce, vector_user_data):
    swapped = bytearray(report_raw)
    swapped[OFF_SN + 3] ^= 0x02
    attester = CsvAttester(ReplayFirmware(bytes(swapped)), nonce=vector_nonce)
    with pytest.raises(BackendUnavailable, match="MAC"):
        await attester.generate(vector_user_data)


@pytest.mark.asyncio
async def test_template_reports_bind_user_data_but_are_not_genuine(report_raw, hsk_cek_raw):
    """The template fake binds the request (the attester's checks pass), but only genuine
    firmware can sign: the verifier rejects its output at the report signature."""
    attester = CsvAttester(TemplateFirmware(report_raw), CertSources())
    report = await attester.generate(b"\xaa" * 32)
    report = dataclasses.replace(
        report,
        json_report=dataclasses.replace(
            CsvEvidence.from_json(report.json_report), hsk=hsk_cek_raw[:832], cek=hsk_cek_raw[832:]
        ).to_json(),
    )
    with pytest.raises(VerificationError) as info:
        await CsvVerifier().verify(report, Policy((Attributes(str_tee_platform="CSV"),)))
    assert info.value.check == "report_signature"


@pytest.mark.asyncio
async def test_broken_cert_source_is_unavailable(
    report_raw, vector_nonce, vector_user_data, tmp_path
):
    sources = CertSources(hsk_cek_file=tmp_path / "missing.cert")
    attester = CsvAttester(ReplayFirmware(report_raw), sources, nonce=vector_nonce)
    with pytest.raises(BackendUnavailable, match=r"missing\.cert"):
        await attester.generate(vector_user_data)


def test_real_device_path_errors_are_unavailable(tmp_path):
    request = bytes(112)
    with pytest.raises(BackendUnavailable, match="cannot open"):
        CsvGuestDevice(tmp_path / "csv-guest").get_report(request)
    regular = tmp_path / "not-a-device"
    regular.write_bytes(b"")
    with pytest.raises(BackendUnavailable, match="ioctl"):
        CsvGuestDevice(regular).get_report(request)


def test_viability_follows_the_device_node():
    reason = CsvAttester.unviable_reason()
    assert CsvAttester.viable() == DEVICE_PATH.exists()
    if reason is not None:
        assert str(DEVICE_PATH) in reason


@pytest.mark.parametrize("settings", [{"bogus": 1}, {"device": ""}, {"kds_url": "x"}])
def test_bad_settings_are_invalid_input(settings):
    with pytest.raises(InvalidInput):
        CsvAttester.from_settings(settings)


def test_settings_build_the_real_device(tmp_path):
    attester = CsvAttester.from_settings({"device": str(tmp_path / "dev")})
    assert isinstance(attester.device, CsvGuestDevice)
    assert attester.device.path == tmp_path / "dev"
