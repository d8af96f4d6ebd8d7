"""CsvAttester against fake firmware (tee_csv_fakes) and the real ioctl path's failure modes."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from tee_csv_fakes import ReplayFirmware, TemplateFirmware
from tee_csv_kds import KdsStandIn, serve_kds
from trustflow_core.attestation import (
    BACKGROUND_CHECK,
    PASSPORT,
    Attributes,
    Policy,
    match_policy,
)
from trustflow_core.errors import BackendUnavailable, InvalidInput, VerificationError

from trustflow_tee_csv.attester import CsvAttester
from trustflow_tee_csv.certs import CertSources
from trustflow_tee_csv.device import DEVICE_PATH, CsvGuestDevice
from trustflow_tee_csv.evidence import CsvEvidence
from trustflow_tee_csv.structs import OFF_MAC, OFF_RESERVED2, OFF_SN, REPORT_SIZE, CsvReport
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
    # reserved2 zeroed (after the guest-side MAC check), everything else as the firmware wrote
    assert evidence.quote[:OFF_RESERVED2] == report_raw[:OFF_RESERVED2]
    assert evidence.quote[OFF_RESERVED2:OFF_MAC] == bytes(32)
    assert evidence.quote[OFF_MAC:] == report_raw[OFF_MAC:]
    assert evidence.chip_id == report_expected["chip_id"]
    assert evidence.hsk and evidence.cek
    policy = Policy((Attributes(str_tee_platform="CSV"),)).with_user_data(vector_user_data)
    verified = await CsvVerifier().verify(report, policy)
    assert verified.details["mac"].startswith("not checkable: reserved2 was zeroed")
    assert verified.details["reserved2"] == "zero"


@pytest.mark.asyncio
async def test_no_generated_report_carries_reserved2(report_raw, vector_user_data, hsk_cek_raw):
    """Whatever the firmware leaves in reserved2 (a sealing key on some stacks), it is not
    shipped, on every path: replayed genuine reports, templated ones, both report types."""
    raw = CsvReport.parse(report_raw)
    assert any(raw.reserved2)
    for firmware, nonce in (
        (ReplayFirmware(report_raw), lambda: raw.mnonce),
        (TemplateFirmware(report_raw), None),
    ):
        attester = CsvAttester(
            firmware, CertSources(hsk_cek_file=None), nonce=nonce, background_check_fallback=True
        )
        for report_type in (PASSPORT, BACKGROUND_CHECK):
            report = await attester.generate(vector_user_data, report_type=report_type)
            quote = CsvEvidence.from_json(report.json_report).quote
            assert CsvReport.parse(quote).reserved2 == bytes(32)


@pytest.mark.asyncio
async def test_mac_is_checked_over_reserved2_before_it_is_zeroed(
    report_raw, vector_nonce, vector_user_data
):
    """The MAC covers reserved2 as the firmware wrote it: the guest-side check runs on the
    untouched report (a changed reserved2 is caught), and only then is the field zeroed."""
    changed = bytearray(report_raw)
    changed[OFF_RESERVED2 + 5] ^= 0x80
    attester = CsvAttester(ReplayFirmware(bytes(changed)), nonce=vector_nonce)
    with pytest.raises(BackendUnavailable, match="MAC"):
        await attester.generate(vector_user_data, report_type=BACKGROUND_CHECK)


@pytest.mark.asyncio
async def test_page_tail_after_the_report_is_ignored(report_raw, vector_nonce, vector_user_data):
    """Bytes 2548..4095 of the page are not the report: firmware may leave anything there."""
    firmware = ReplayFirmware(report_raw)
    firmware.tail = bytes(range(256)) * 6  # 1536 of the 1548 tail bytes
    attester = CsvAttester(firmware, nonce=vector_nonce)
    report = await attester.generate(vector_user_data, report_type=BACKGROUND_CHECK)
    quote = CsvEvidence.from_json(report.json_report).quote
    assert len(quote) == REPORT_SIZE


@pytest.mark.asyncio
async def test_public_key_binding_in_report_data(report_raw, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(pem)
    attester = CsvAttester.from_settings({"public_key_file": str(key_file)})
    attester.device = TemplateFirmware(report_raw)
    report = await attester.generate(b"bound", report_type=BACKGROUND_CHECK)
    csv = CsvReport.parse(CsvEvidence.from_json(report.json_report).quote)
    assert csv.user_data == b"bound".ljust(32, b"\0") + hashlib.sha256(pem).digest()
    # what the verifier exposes as hex_hash_or_pem_pubkey matches a policy naming the key
    match_policy(
        Attributes(hex_hash_or_pem_pubkey=csv.user_data[32:].hex()),
        Policy((Attributes(hex_hash_or_pem_pubkey=pem.decode()),)),
    )
    unbound = CsvAttester(TemplateFirmware(report_raw))
    report = await unbound.generate(b"bound", report_type=BACKGROUND_CHECK)
    zero = CsvReport.parse(CsvEvidence.from_json(report.json_report).quote).user_data[32:]
    assert zero == bytes(32)


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
async def test_background_check_carries_no_chain(
    report_raw, vector_nonce, vector_user_data, bundle_sources
):
    attester = CsvAttester(ReplayFirmware(report_raw), bundle_sources, nonce=vector_nonce)
    report = await attester.generate(vector_user_data, report_type=BACKGROUND_CHECK)
    assert "json_cert_chain" not in json.loads(report.json_report)
    assert report.str_report_type == BACKGROUND_CHECK


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("sources", "reason"),
    [
        ("none", "no HSK/CEK source is configured"),
        ("empty_cert_dir", "no configured HSK/CEK source has it"),
        ("dead_kds", "not available from KDS"),
    ],
)
async def test_passport_without_a_chain_is_refused_or_falls_back(
    report_raw, vector_nonce, vector_user_data, tmp_path, sources, reason
):
    """Like TDX without collateral: a Passport report that upstream verifiers would reject
    (no json_cert_chain) is never emitted. Refused with the reason, or a BackgroundCheck
    report when background_check_fallback allows it."""
    if sources == "none":
        settings = {}
    elif sources == "empty_cert_dir":
        settings = {"cert_dir": str(tmp_path)}
    else:
        settings = {"kds_url": "http://127.0.0.1:9", "kds_timeout_seconds": 0.5}
    for fallback in (False, True):
        attester = CsvAttester.from_settings({**settings, "background_check_fallback": fallback})
        attester.device = ReplayFirmware(report_raw)
        attester._nonce = vector_nonce
        async with attester:
            if not fallback:
                with pytest.raises(BackendUnavailable, match=reason) as info:
                    await attester.generate(vector_user_data)
                assert "Passport" in str(info.value)
                continue
            report = await attester.generate(vector_user_data)
        assert report.str_report_type == BACKGROUND_CHECK
        assert "json_cert_chain" not in json.loads(report.json_report)


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
    report = await attester.generate(b"\xaa" * 32, report_type=BACKGROUND_CHECK)
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


@pytest.mark.parametrize(
    "settings",
    [
        {"bogus": 1},
        {"device": ""},
        {"kds_url": "x"},
        {"background_check_fallback": "yes"},
        {"public_key_file": "/nonexistent/key.pem"},
    ],
)
def test_bad_settings_are_invalid_input(settings):
    with pytest.raises(InvalidInput):
        CsvAttester.from_settings(settings)


def test_settings_build_the_real_device(tmp_path):
    attester = CsvAttester.from_settings({"device": str(tmp_path / "dev")})
    assert isinstance(attester.device, CsvGuestDevice)
    assert attester.device.path == tmp_path / "dev"
