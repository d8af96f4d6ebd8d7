"""CsvVerifier outcomes on the bundled vectors: csv-rs VALID with the documented attributes,
trustee evidence failing closed offline, cert sources (report, file, dir, loopback KDS)."""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil

import pytest
from tee_csv_kds import KdsStandIn, serve_kds
from trustflow_core.attestation import Attributes, Policy, Report
from trustflow_core.errors import InvalidInput, VerificationError

from trustflow_tee_csv.evidence import CsvEvidence
from trustflow_tee_csv.verifier import CsvVerifier

CSV_ONLY = Policy((Attributes(str_tee_platform="CSV"),))


@pytest.fixture
def bare_report(report_raw):
    """The csv-rs report without a cert chain."""
    return CsvVerifier.report_from_evidence(report_raw)


@pytest.fixture
def trustee_report(trustee_raw):
    return CsvVerifier.report_from_evidence(trustee_raw)


async def verify(report, settings=None, policy=CSV_ONLY):
    async with CsvVerifier.from_settings(settings or {}) as verifier:
        return await verifier.verify(report, policy)


async def rejection(report, settings=None, policy=CSV_ONLY) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        await verify(report, settings, policy)
    return info.value


@pytest.mark.asyncio
async def test_csv_rs_report_verifies_with_documented_values(good_report, report_expected):
    want = report_expected
    verified = await verify(good_report)
    a = verified.attributes
    assert not verified.simulated
    assert a.str_tee_platform == "CSV"
    assert a.hex_boot_measurement == want["measure"]
    assert a.hex_prod_id == want["vm_id"]
    assert a.hex_platform_sw_version == want["vm_version"]
    assert a.hex_secure_flags == int(want["policy"], 16).to_bytes(4, "little").hex()
    assert a.hex_user_data == want["report_data"][:64]
    assert a.hex_hash_or_pem_pubkey == want["report_data"][64:]
    assert a.hex_nonce == want["mnonce"]
    assert a.bool_debug_disabled == "true"
    assert verified.details["chip_id"] == want["chip_id"]
    assert verified.details["mac"] == "verified"
    assert verified.details["cert_chain_source"] == "report"
    assert verified.details["pek_firmware_api"] == want["pek"]["api"]
    assert "TCB" in verified.details["tcb_status"]


@pytest.mark.asyncio
async def test_json_report_is_the_upstream_layout(good_report, report_raw, hsk_cek_raw, expected):
    body = json.loads(good_report.json_report)
    assert list(body) == ["b64_quote", "json_cert_chain", "str_chip_id"]
    evidence = CsvEvidence.from_json(good_report.json_report)
    assert evidence.quote == report_raw
    assert evidence.hsk + evidence.cek == hsk_cek_raw
    assert list(json.loads(body["json_cert_chain"])) == ["b64_hsk_cert", "b64_cek_cert"]
    assert body["str_chip_id"] == expected["csv/csv-rs/report.cert"]["chip_id"]
    assert ": " not in good_report.json_report  # compact, as protobuf prints it


@pytest.mark.asyncio
async def test_policy_pins_measurement_and_user_data(good_report, report_expected):
    entry = Attributes(
        str_tee_platform="CSV",
        hex_boot_measurement=report_expected["measure"].upper(),
        bool_debug_disabled="1",
    )
    await verify(good_report, policy=Policy((entry,)).with_user_data(b"user data"))
    wrong = Policy((entry,)).with_user_data(b"user datA")
    assert (await rejection(good_report, policy=wrong)).check == "policy"


@pytest.mark.asyncio
async def test_bare_report_fails_closed_offline(bare_report, report_expected):
    error = await rejection(bare_report)
    assert error.check == "endorsement"
    assert report_expected["chip_id"] in error.detail and "offline" in error.detail


@pytest.mark.asyncio
async def test_trustee_evidence_fails_closed_offline(trustee_report, trustee_expected):
    error = await rejection(trustee_report)
    assert error.check == "endorsement"
    assert trustee_expected["chip_id"] in error.detail


@pytest.mark.asyncio
async def test_trustee_evidence_is_parsed_like_documented(trustee_report, trustee_expected):
    evidence = CsvEvidence.from_json(trustee_report.json_report)
    assert evidence.chip_id == trustee_expected["serial_number"]
    from trustflow_tee_csv.structs import CsvReport

    report = CsvReport.parse(evidence.quote)
    assert not report.pek_masked  # re-exported: PEK and sn already de-masked
    assert report.measure.hex() == trustee_expected["measure"]
    assert report.mnonce.hex() == trustee_expected["mnonce"]
    assert report.policy == int(trustee_expected["policy"], 16)


@pytest.mark.asyncio
async def test_trustee_pek_is_not_signed_by_another_chips_cek(trustee_raw, hsk_cek_raw):
    report = CsvVerifier.report_from_evidence(trustee_raw, endorsements=hsk_cek_raw)
    assert (await rejection(report)).check == "pek"


@pytest.mark.asyncio
async def test_local_bundle_file(bare_report, vectors):
    settings = {"hsk_cek_file": str(vectors / "csv-rs" / "hsk_cek.cert")}
    verified = await verify(bare_report, settings)
    assert verified.details["cert_chain_source"] == "hsk_cek_file"


@pytest.mark.asyncio
@pytest.mark.parametrize("layout", ["{chip}/hsk_cek.cert", "{chip}_hsk_cek.cert"])
async def test_cert_dir_layouts(bare_report, vectors, report_expected, tmp_path, layout):
    target = tmp_path / layout.format(chip=report_expected["chip_id"])
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(vectors / "csv-rs" / "hsk_cek.cert", target)
    verified = await verify(bare_report, {"cert_dir": str(tmp_path)})
    assert verified.details["cert_chain_source"] == "cert_dir"


@pytest.mark.asyncio
async def test_cert_dir_without_the_chip_fails_closed(bare_report, tmp_path):
    assert (await rejection(bare_report, {"cert_dir": str(tmp_path)})).check == "endorsement"


@pytest.mark.asyncio
async def test_loopback_kds_is_asked_once_per_chip(bare_report, hsk_cek_raw, report_expected):
    chip = report_expected["chip_id"]
    stand_in = KdsStandIn({chip: hsk_cek_raw})
    async with (
        serve_kds(stand_in) as kds,
        CsvVerifier.from_settings({"kds_url": kds.url}) as verifier,
    ):
        first = await verifier.verify(bare_report, CSV_ONLY)
        await verifier.verify(bare_report, CSV_ONLY)
    assert first.details["cert_chain_source"] == "kds"
    assert kds.requests == [chip]


@pytest.mark.asyncio
async def test_loopback_kds_streaming_small_chunks(bare_report, hsk_cek_raw, report_expected):
    chip = report_expected["chip_id"]
    async with serve_kds(KdsStandIn({chip: hsk_cek_raw}, chunk=100)) as kds:
        verified = await verify(bare_report, {"kds_url": kds.url})
    assert verified.details["cert_chain_source"] == "kds"


@pytest.mark.asyncio
async def test_trustee_evidence_through_kds_needs_its_chips_certs(trustee_report, hsk_cek_raw):
    """The trustee chip's HSK/CEK are not in the test data (only the csv-rs chip's are), so
    the stand-in cannot serve them: the verifier reports that the KDS does not have them.
    The positive case is untestable offline (see README)."""
    async with serve_kds(KdsStandIn({"NZA9T14052605": hsk_cek_raw})) as kds:
        error = await rejection(trustee_report, {"kds_url": kds.url})
    assert error.check == "endorsement" and "HTTP 404" in error.detail


@pytest.mark.asyncio
async def test_kds_serving_another_chips_certs_is_rejected(
    trustee_report, trustee_expected, hsk_cek_raw
):
    async with serve_kds(KdsStandIn({trustee_expected["chip_id"]: hsk_cek_raw})) as kds:
        assert (await rejection(trustee_report, {"kds_url": kds.url})).check == "pek"


@pytest.mark.asyncio
async def test_kds_bad_body_and_timeout(bare_report, hsk_cek_raw, report_expected):
    chip = report_expected["chip_id"]
    async with serve_kds(KdsStandIn({chip: hsk_cek_raw[:-1]})) as kds:
        error = await rejection(bare_report, {"kds_url": kds.url})
    assert error.check == "endorsement" and "2916" in error.detail
    async with serve_kds(KdsStandIn({chip: hsk_cek_raw}, delay=2)) as kds:
        settings = {"kds_url": kds.url, "kds_timeout_seconds": 0.1}
        error = await rejection(bare_report, settings)
    assert error.check == "endorsement" and "Timeout" in error.detail


@pytest.mark.asyncio
async def test_debug_guest_is_rejected_before_the_signature(good_report, report_raw):
    evidence = CsvEvidence.from_json(good_report.json_report)
    flipped = bytearray(report_raw)
    flipped[176] ^= 0x01  # policy bit 0 (NODBG), masked in place
    debug = dataclasses.replace(
        good_report, json_report=dataclasses.replace(evidence, quote=bytes(flipped)).to_json()
    )
    assert (await rejection(debug)).check == "debug"
    # Allowing debug only moves the failure to the signature: the bit is signed.
    assert (await rejection(debug, {"allow_debug": True})).check == "report_signature"


@pytest.mark.asyncio
async def test_chip_id_field_must_match_the_report(good_report):
    body = json.loads(good_report.json_report)
    body["str_chip_id"] = "OTHERCHIP"
    report = dataclasses.replace(good_report, json_report=json.dumps(body))
    assert (await rejection(report)).check == "format"


@pytest.mark.asyncio
async def test_upstream_shaped_report_verifies(report_raw, hsk_cek_raw, report_expected):
    """What upstream's CSV generator emits (csv_generator.cc): reserved2 zeroed, the chip id
    as the whole 64-byte de-masked sn (NUL padding included), HSK/CEK as base64 JSON."""
    from trustflow_tee_csv.structs import OFF_MAC, OFF_RESERVED2, CsvReport

    sn = CsvReport.parse(report_raw).sn
    assert len(sn) == 64 and sn.rstrip(b"\0").decode() == report_expected["chip_id"]
    chain = {
        "b64_hsk_cert": base64.b64encode(hsk_cek_raw[:832]).decode(),
        "b64_cek_cert": base64.b64encode(hsk_cek_raw[832:]).decode(),
    }
    body = {
        "b64_quote": base64.b64encode(
            report_raw[:OFF_RESERVED2] + bytes(32) + report_raw[OFF_MAC:]
        ).decode(),
        "json_cert_chain": json.dumps(chain, separators=(",", ":")),
        "str_chip_id": sn.decode("ascii"),
    }
    report = Report(
        str_tee_platform="CSV",
        json_report=json.dumps(body, separators=(",", ":")),
        str_report_type="Passport",
    )
    assert "\\u0000" in report.json_report
    user_data = bytes.fromhex(report_expected["report_data"])[:32]
    verified = await verify(report, policy=CSV_ONLY.with_user_data(user_data))
    assert verified.details["chip_id"] == report_expected["chip_id"]
    assert verified.details["cert_chain_source"] == "report"
    assert verified.details["reserved2"] == "zero"
    # NUL padding is all that is forgiven
    body["str_chip_id"] = report_expected["chip_id"] + "X"
    changed = dataclasses.replace(report, json_report=json.dumps(body))
    assert (await rejection(changed)).check == "format"


@pytest.mark.parametrize(
    "settings",
    [
        {"bogus": 1},
        {"allow_debug": "yes"},
        {"kds_url": "ftp://x"},
        {"kds_timeout_seconds": 0},
        {"cert_dir": ""},
    ],
)
def test_bad_settings_are_invalid_input(settings):
    with pytest.raises(InvalidInput):
        CsvVerifier.from_settings(settings)


@pytest.mark.parametrize(
    "evidence",
    [
        b"",
        b"\0" * 100,
        b"{not json",
        b'{"x": 1}',
        b'{"attestation_report": {"magic": [1], "flags": 1, "data": []}}',
        b'{"attestation_report": {"data": [300]}}',
        b'{"str_tee_platform": "TDX", "json_report": "{}"}',
        b'{"b64_quote": "AAAA", "extra": 1}',
    ],
)
def test_unusable_raw_evidence_is_invalid_input(evidence):
    with pytest.raises(InvalidInput):
        CsvVerifier.report_from_evidence(evidence)


def test_unusable_certs_are_invalid_input(report_raw):
    with pytest.raises(InvalidInput):
        CsvVerifier.report_from_evidence(report_raw, endorsements=b"\1" * 100)
