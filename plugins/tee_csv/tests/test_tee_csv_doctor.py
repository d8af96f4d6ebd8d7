"""``trustflow attest doctor --plat csv``: the CSV diagnosis and the doctor's verdict for each
faked host (no guest; a guest with its cert chain: ready; a guest without one; a guest whose
host swaps the chip id) through the firmware fakes."""

from __future__ import annotations

import pytest
from tee_csv_fakes import ReplayFirmware
from trustflow_core.doctor import NOT_READY, READY, run_doctor

from trustflow_tee_csv.attester import CsvAttester, diagnose
from trustflow_tee_csv.structs import OFF_SN
from trustflow_tee_csv.verifier import CsvVerifier


def statuses(checks) -> dict[str, str]:
    return {c.name: c.status for c in checks}


def detail(checks, name: str) -> str:
    return next(c.detail for c in checks if c.name == name)


@pytest.fixture
def guest(tmp_path):
    device = tmp_path / "csv-guest"
    device.write_bytes(b"")
    return {"device": str(device)}


def factory(firmware, mnonce: bytes):
    def make(settings):
        attester = CsvAttester.from_settings(settings)
        attester.device = firmware
        attester._nonce = lambda: mnonce
        return attester

    return make


async def doctor(settings, firmware, report_expected, **kwargs):
    mnonce = bytes.fromhex(report_expected["mnonce"])
    user_data = bytes.fromhex(report_expected["report_data"])[:32]
    return await run_doctor(
        CsvAttester,
        CsvVerifier,
        settings=settings,
        verifier_settings={},
        user_data=user_data,
        checks=diagnose(settings, "5.10.134-csv"),
        make_attester=factory(firmware, mnonce),
        **kwargs,
    )


@pytest.mark.asyncio
async def test_not_a_csv_guest(tmp_path, report_raw, report_expected) -> None:
    settings = {"device": str(tmp_path / "absent")}
    checks = diagnose(settings, "6.8.0")
    assert statuses(checks) == {"kernel": "info", "guest": "fail", "cert chain": "warn"}
    result = await doctor(settings, ReplayFirmware(report_raw), report_expected)
    assert result.verdict == NOT_READY and result.report is None
    assert "not tried: guest" in detail(result.checks, "generate")


@pytest.mark.asyncio
async def test_guest_with_its_cert_chain_is_ready(guest, vectors, report_raw, report_expected):
    settings = {**guest, "hsk_cek_file": str(vectors / "csv-rs" / "hsk_cek.cert")}
    result = await doctor(settings, ReplayFirmware(report_raw), report_expected)
    assert statuses(result.checks) == {
        "kernel": "info",
        "guest": "ok",
        "path GET_ATTESTATION_REPORT": "ok",
        "cert chain": "ok",
        "generate": "ok",
        "verify": "ok",
    }
    assert result.verdict == READY
    assert result.details["chip_id"] == report_expected["chip_id"]
    assert result.details["reserved2"] == "zero"
    assert result.to_dict()["report_type"] == "Passport"


@pytest.mark.asyncio
async def test_guest_without_a_cert_chain(guest, report_raw, report_expected) -> None:
    result = await doctor(guest, ReplayFirmware(report_raw), report_expected)
    assert detail(result.checks, "cert chain").endswith("Passport reports are refused")
    assert result.verdict == NOT_READY
    assert "no HSK/CEK source is configured" in detail(result.checks, "generate")
    # with the fallback the report is generated, and the offline verifier fails closed
    settings = {**guest, "background_check_fallback": True}
    result = await doctor(settings, ReplayFirmware(report_raw), report_expected)
    assert "fall back to BackgroundCheck" in detail(result.checks, "cert chain")
    assert statuses(result.checks)["generate"] == "ok"
    assert detail(result.checks, "verify").startswith("check 'endorsement'")
    assert result.verdict == NOT_READY


@pytest.mark.asyncio
async def test_host_swapping_the_chip_id(guest, vectors, report_raw, report_expected) -> None:
    swapped = bytearray(report_raw)
    swapped[OFF_SN + 1] ^= 0x04
    settings = {**guest, "hsk_cek_file": str(vectors / "csv-rs" / "hsk_cek.cert")}
    result = await doctor(settings, ReplayFirmware(bytes(swapped)), report_expected)
    assert result.verdict == NOT_READY
    assert "MAC does not verify" in detail(result.checks, "generate")


def test_cert_sources_are_reported(tmp_path) -> None:
    settings = {
        "hsk_cek_file": str(tmp_path / "absent.cert"),
        "cert_dir": str(tmp_path),
        "kds_url": "https://cert.hygon.cn",
        "public_key_file": "/etc/key.pem",
    }
    checks = diagnose(settings, "6.6.0")
    chain = [c for c in checks if c.name == "cert chain"]
    assert [c.status for c in chain] == ["warn", "ok", "ok"]
    assert "cert.hygon.cn" in chain[2].detail
    assert "/etc/key.pem" in detail(checks, "public key")


def test_attester_diagnose_runs_on_this_host() -> None:
    checks = CsvAttester.diagnose({})
    assert statuses(checks)["guest"] == ("ok" if CsvAttester.viable() else "fail")
