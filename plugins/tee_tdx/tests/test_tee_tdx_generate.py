"""Quote generation against fakes of the TD guest kernel interfaces (configfs-tsm tree and
/dev/tdx_guest ioctls) built on the real quote and TDREPORT vectors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import timedelta

import pytest
from conftest import collateral_from_files, evaluations, expected_tdx, read, when
from tee_tdx_fakes import FakeConfigfs, FakePccs, FakeTdxIoctl, quote_with_report_data, serve_pccs
from trustflow_core.attestation import Attributes, Policy
from trustflow_core.errors import BackendUnavailable, InvalidInput, VerificationError
from trustflow_core.testing.attestation import AttesterConformance

from trustflow_tee_tdx import guest
from trustflow_tee_tdx.attester import TdxAttester
from trustflow_tee_tdx.collateral import Collateral
from trustflow_tee_tdx.quote import parse_quote
from trustflow_tee_tdx.report import open_report
from trustflow_tee_tdx.verifier import TdxVerifier

TEMPLATE = "tdx/dcap-qvl/tdx_quote"
V5_TEMPLATE = "tdx/trustee/tdx_quote_5.dat"
ZERO_REPORT_DATA_QUOTE = "tdx/go-tdx-guest/cos-113-tdx-quote.dat"
TDREPORT = "tdx/guest-components/tdx_report_1.bin"


def _bundle_file(tmp_path) -> str:
    ev = next(ev for n, _, ev in evaluations() if n == TEMPLATE)
    path = tmp_path / "collateral.json"
    path.write_text(collateral_from_files(ev["collateral"]["files"]).to_json())
    return str(path)


@pytest.fixture
def configfs(tmp_path) -> FakeConfigfs:
    return FakeConfigfs(tmp_path / "tsm" / "report", read(TEMPLATE))


@pytest.fixture
def device(tmp_path):
    path = tmp_path / "tdx_guest"
    path.write_bytes(b"")
    return path


@pytest.fixture
def fake_ioctl() -> FakeTdxIoctl:
    return FakeTdxIoctl(read(TDREPORT), read(V5_TEMPLATE))


def configfs_attester(configfs: FakeConfigfs, collateral_file: str | None = None) -> TdxAttester:
    settings = {"interface": "configfs", "configfs_root": str(configfs.root)}
    attester = TdxAttester.from_settings(
        {**settings, **({"collateral_file": collateral_file} if collateral_file else {})}
    )
    assert isinstance(attester.source, guest.ConfigfsTsm)
    attester.source.ops = configfs  # the seam: the fake tree's kernel behaviour
    return attester


def ioctl_attester(device, fake_ioctl, collateral_file: str | None = None) -> TdxAttester:
    settings = {"interface": "ioctl", "device": str(device)}
    if collateral_file:
        settings["collateral_file"] = collateral_file
    attester = TdxAttester.from_settings(settings)
    assert isinstance(attester.source, guest.TdxGuestDevice)
    attester.source.ioctl = fake_ioctl
    return attester


class TestTdxAttesterConformanceConfigfs(AttesterConformance):
    @pytest.fixture
    def attester(self, configfs, tmp_path):
        return configfs_attester(configfs, _bundle_file(tmp_path))


class TestTdxAttesterConformanceIoctl(AttesterConformance):
    @pytest.fixture
    def attester(self, device, fake_ioctl, tmp_path):
        return ioctl_attester(device, fake_ioctl, _bundle_file(tmp_path))


# ---- configfs-tsm -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_configfs_report_layout_and_binding(configfs, tmp_path) -> None:
    attester = configfs_attester(configfs, _bundle_file(tmp_path))
    report = await attester.generate(b"\xab\xcd")
    assert configfs.inblobs == [b"\xab\xcd" + bytes(62)]
    assert configfs.removed and not any(configfs.root.iterdir())
    body = json.loads(report.json_report)
    assert set(body) == {"b64_quote", "json_collateral"}
    collateral = json.loads(body["json_collateral"])
    assert collateral["tee_type"] == "129" and collateral["version"] == "3"
    quote, bundled = open_report(report.json_report)
    assert bundled is not None and bundled.tcb_info is not None
    parsed = parse_quote(quote)
    assert parsed.trailing == 0  # the outblob padding is cut off
    assert parsed.body.report_data == b"\xab\xcd" + bytes(62)


@pytest.mark.asyncio
async def test_configfs_background_check_needs_no_collateral(configfs) -> None:
    report = await configfs_attester(configfs).generate(b"x", report_type="BackgroundCheck")
    assert set(json.loads(report.json_report)) == {"b64_quote"}
    with pytest.raises(BackendUnavailable, match="collateral"):
        await configfs_attester(configfs).generate(b"x")


@pytest.mark.asyncio
async def test_configfs_provider_must_be_tdx_guest(configfs) -> None:
    configfs.provider = b"sev_guest\n"
    with pytest.raises(BackendUnavailable, match="sev_guest"):
        await configfs_attester(configfs).generate(b"x", report_type="BackgroundCheck")
    assert not any(configfs.root.iterdir())


@pytest.mark.asyncio
async def test_configfs_generation_race_is_retried(configfs) -> None:
    configfs.races = 1
    report = await configfs_attester(configfs).generate(b"x", report_type="BackgroundCheck")
    assert len(configfs.inblobs) == 2
    assert parse_quote(open_report(report.json_report)[0]).body.report_data[:1] == b"x"
    configfs.races = 10
    with pytest.raises(BackendUnavailable, match="changing"):
        await configfs_attester(configfs).generate(b"x", report_type="BackgroundCheck")
    assert not any(configfs.root.iterdir())


@pytest.mark.asyncio
@pytest.mark.parametrize("outblob", [b"", b"\x04\x00" + bytes(100)])
async def test_configfs_bad_outblob(configfs, outblob: bytes) -> None:
    configfs.outblob = outblob
    with pytest.raises(BackendUnavailable):
        await configfs_attester(configfs).generate(b"x", report_type="BackgroundCheck")


@pytest.mark.asyncio
async def test_quote_for_other_report_data_is_refused(configfs) -> None:
    configfs.splice = False
    with pytest.raises(BackendUnavailable, match="report data"):
        await configfs_attester(configfs).generate(b"x", report_type="BackgroundCheck")


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_configfs_inblob_must_be_64_bytes(configfs, size: int) -> None:
    with pytest.raises(InvalidInput, match="64 bytes"):
        guest.ConfigfsTsm(configfs.root, configfs).get_quote(bytes(size))


def test_missing_configfs_is_unavailable(tmp_path) -> None:
    source = guest.ConfigfsTsm(tmp_path / "absent")
    with pytest.raises(BackendUnavailable, match="ENOENT"):
        source.get_quote(bytes(64))


@pytest.mark.asyncio
async def test_real_quote_round_trip_through_the_verifier(tmp_path) -> None:
    """A quote whose REPORTDATA is all zero comes back unchanged from the fake and verifies
    cryptographically (no collateral is bundled for it: TCB status Unknown)."""
    configfs = FakeConfigfs(tmp_path / "report", read(ZERO_REPORT_DATA_QUOTE))
    configfs.splice = False
    report = await configfs_attester(configfs).generate(b"", report_type="BackgroundCheck")
    verifier = TdxVerifier.from_settings(
        {"require_collateral": False, "accepted_tcb_statuses": ["Unknown"]}
    )
    policy = Policy((Attributes(str_tee_platform="TDX"),)).with_user_data(bytes(32))
    leaf = parse_quote(read(ZERO_REPORT_DATA_QUOTE))
    assert leaf.body.report_data == bytes(64)
    leaf_start = expected_tdx()[ZERO_REPORT_DATA_QUOTE]["pck_leaf"]["not_before"]
    now = when(leaf_start.replace(" ", "T")) + timedelta(days=1)
    verified = await verifier.verify(report, policy, now=now)
    assert verified.details["tcb_status"] == "Unknown"
    strict = TdxVerifier.from_settings({})
    with pytest.raises(VerificationError) as info:
        await strict.verify(report, policy, now=now)
    assert info.value.check == "collateral"


@pytest.mark.asyncio
async def test_fake_quotes_do_not_verify(configfs, tmp_path) -> None:
    """The fakes splice report data into real quotes; the verifier must notice."""
    report = await configfs_attester(configfs, _bundle_file(tmp_path)).generate(b"spliced")
    ev = next(ev for n, _, ev in evaluations() if n == TEMPLATE)
    with pytest.raises(VerificationError) as info:
        await TdxVerifier.from_settings({}).verify(
            report, Policy((Attributes(str_tee_platform="TDX"),)), now=when(ev["verify_time"])
        )
    assert info.value.check == "quote_signature"


# ---- /dev/tdx_guest ----------------------------------------------------------------------


def test_ioctl_get_report_returns_checked_tdreport(device, fake_ioctl) -> None:
    source = guest.TdxGuestDevice(device, fake_ioctl)
    report_data = bytes(range(64))
    tdreport = source.get_report(report_data)
    assert fake_ioctl.requests == [0xC4405401]
    assert tdreport[128:192] == report_data
    assert tdreport[32:80] == hashlib.sha384(tdreport[256:495]).digest()
    assert tdreport[80:128] == hashlib.sha384(tdreport[512:1024]).digest()
    assert tdreport[256:] == read(TDREPORT)[256:]


def test_ioctl_corrupt_tdreport_is_refused(device, fake_ioctl) -> None:
    fake_ioctl.corrupt_report = True
    with pytest.raises(BackendUnavailable, match="hashes"):
        guest.TdxGuestDevice(device, fake_ioctl).get_report(bytes(64))


def test_ioctl_get_quote_protocol(device, fake_ioctl) -> None:
    report_data = bytes(range(64))
    quote = guest.TdxGuestDevice(device, fake_ioctl).get_quote(report_data)
    assert fake_ioctl.requests == [0xC4405401, 0x80105404]
    parsed = parse_quote(quote)
    assert parsed.version == 5 and parsed.body.report_data == report_data
    assert quote == quote_with_report_data(read(V5_TEMPLATE), report_data)


@pytest.mark.parametrize("status", [0xFFFFFFFFFFFFFFFF, 0x8000000000000000, 0x8000000000000001])
def test_ioctl_quote_status_errors(device, fake_ioctl, status: int) -> None:
    fake_ioctl.status = status
    with pytest.raises(BackendUnavailable, match="TDX_CMD_GET_QUOTE"):
        guest.TdxGuestDevice(device, fake_ioctl).get_quote(bytes(64))


def test_ioctl_errors_are_unavailable(tmp_path, fake_ioctl) -> None:
    with pytest.raises(BackendUnavailable, match="ENOENT"):
        guest.TdxGuestDevice(tmp_path / "absent", fake_ioctl).get_quote(bytes(64))

    def refusing(fd, request, arg, mutate=True):
        raise OSError(5, "Input/output error")

    path = tmp_path / "dev"
    path.write_bytes(b"")
    with pytest.raises(BackendUnavailable, match="EIO"):
        guest.TdxGuestDevice(path, refusing).get_quote(bytes(64))


# ---- detection, settings, PCCS --------------------------------------------------------------


def test_viability_probe_never_raises() -> None:
    assert isinstance(TdxAttester.viable(), bool)
    reason = TdxAttester.unviable_reason()
    assert reason is None or "TDX" in reason or "tdx" in reason
    assert (
        guest.detect(guest.CONFIGFS_ROOT / "absent", guest.DEVICE.with_name("absent")) is not None
    )


@pytest.mark.parametrize(
    "settings",
    [{"interface": "sgx"}, {"bogus": 1}, {"device": ""}, {"pccs_url": "file:///x"}],
)
def test_bad_attester_settings(settings: dict) -> None:
    with pytest.raises(InvalidInput):
        TdxAttester.from_settings(settings)


@pytest.mark.asyncio
async def test_passport_collateral_from_pccs(configfs) -> None:
    ev = next(ev for n, _, ev in evaluations() if n == TEMPLATE)
    fake = FakePccs(collateral_from_files(ev["collateral"]["files"]))
    async with serve_pccs(fake) as url:
        attester = TdxAttester.from_settings(
            {"interface": "configfs", "configfs_root": str(configfs.root), "pccs_url": url}
        )
        attester.source.ops = configfs  # type: ignore[attr-defined]
        attester.clock = lambda: when(ev["verify_time"])
        async with attester:
            first = await attester.generate(b"one")
            await attester.generate(b"two")
    assert len(fake.paths) == 4  # cached for the second report
    _, bundled = open_report(first.json_report)
    assert isinstance(bundled, Collateral)
    assert bundled.tcb_info == fake.c.tcb_info
    assert dataclasses.replace(bundled, pck_crl=None) != bundled


@pytest.mark.skipif(not TdxAttester.viable(), reason="needs an Intel TDX guest")
@pytest.mark.asyncio
async def test_real_td_quote_verifies_cryptographically() -> None:
    """On TDX hardware: a fresh quote binds the user data and verifies (crypto-only here: the
    host's collateral source is not known to the test)."""
    async with TdxAttester.from_settings({}) as attester:
        report = await attester.generate(b"hardware", report_type="BackgroundCheck")
    verifier = TdxVerifier.from_settings(
        {"require_collateral": False, "accepted_tcb_statuses": ["Unknown"]}
    )
    policy = Policy((Attributes(str_tee_platform="TDX"),)).with_user_data(b"hardware")
    verified = await verifier.verify(report, policy)
    assert verified.attributes.bool_debug_disabled == "true"
