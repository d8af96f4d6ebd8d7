"""``trustflow attest doctor --plat tdx``: the TDX diagnosis and the doctor's verdict for each
faked host (no TD; a TD on 6.2-6.6 with the QGS; the QGS unreachable; configfs-tsm with a
genuine quote; no collateral), through the same seams as the generation tests."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from conftest import expected_tdx, read, when
from tee_tdx_fakes import FakeConfigfs, FakeTdxIoctl, QgsStandIn, serve_qgs
from trustflow_core.doctor import NOT_READY, READY, run_doctor

from trustflow_tee_tdx import guest
from trustflow_tee_tdx.attester import TdxAttester, quote_paths
from trustflow_tee_tdx.doctor import Host, diagnose
from trustflow_tee_tdx.verifier import TdxVerifier

TEMPLATE = "tdx/dcap-qvl/tdx_quote"
GENUINE_ZERO = "tdx/go-tdx-guest/cos-113-tdx-quote.dat"
TDREPORT = "tdx/guest-components/tdx_report_1.bin"
TD_CPU = "flags\t\t: fpu vme tdx_guest\n"
CRYPTO_ONLY = {"require_collateral": False, "accepted_tcb_statuses": ["Unknown"]}


def statuses(checks) -> dict[str, str]:
    return {c.name: c.status for c in checks}


def detail(checks, name: str) -> str:
    return next(c.detail for c in checks if c.name == name)


@pytest.fixture
def fake_ioctl() -> FakeTdxIoctl:
    fake = FakeTdxIoctl(read(TDREPORT), read(TEMPLATE))
    fake.mainline = True
    return fake


@pytest.fixture
def td(tmp_path):
    device = tmp_path / "tdx_guest"
    device.write_bytes(b"")
    config = tmp_path / "tdx-attest.conf"
    config.write_text("port = 4050\n")
    return {
        "configfs_root": str(tmp_path / "no-configfs"),
        "device": str(device),
        "qgs_config": str(config),
    }


def paths_on(settings, fake_ioctl, qgs_address=None, configfs=None):
    paths = quote_paths(settings)
    paths["ioctl"].ioctl = fake_ioctl
    if qgs_address is not None:
        paths["vsock"].family, paths["vsock"].address = socket.AF_INET, qgs_address
    if configfs is not None:
        paths["configfs"].ops = configfs
    return paths


def factory(paths):
    """``make_attester`` for the doctor: the real from_settings, then the faked paths."""

    def make(settings):
        attester = TdxAttester.from_settings(settings)
        order = list(paths.values())
        if isinstance(attester.source, guest.QuotePaths):
            attester.source.paths = order
        else:
            attester.source = paths[settings["interface"]]
        return attester

    return make


@pytest.mark.asyncio
async def test_not_a_td(tmp_path) -> None:
    settings = {
        "configfs_root": str(tmp_path / "none"),
        "device": str(tmp_path / "none"),
        "qgs_config": str(tmp_path / "none.conf"),
    }
    checks = diagnose(quote_paths(settings), settings, Host("6.8.0", "flags\t: fpu vme\n"))
    assert statuses(checks) == {
        "kernel": "ok",
        "guest": "fail",
        "device": "warn",
        "path configfs-tsm": "unusable",
        "path QGS over vsock": "unusable",
        "path TDX_CMD_GET_QUOTE": "unusable",
        "quote paths": "fail",
        "collateral": "warn",
    }
    assert "no 'port = N'" in detail(checks, "path QGS over vsock")
    result = await run_doctor(
        TdxAttester, TdxVerifier, settings=settings, verifier_settings={}, checks=checks
    )
    assert result.verdict == NOT_READY and result.report is None
    assert result.checks[-1].name == "generate" and "not tried: guest" in result.checks[-1].detail


@pytest.mark.asyncio
async def test_td_on_6_2_with_the_qgs(td, fake_ioctl) -> None:
    """Every path's status is right; the quote comes from the QGS; the local verifier then
    refuses the fake's quote (spliced report data) and the verdict says so."""
    qgs = QgsStandIn(read(TEMPLATE))
    with serve_qgs(qgs) as address:
        paths = paths_on(td, fake_ioctl, address)
        checks = diagnose(paths, td, Host("6.5.0-tdx", TD_CPU))
        assert statuses(checks) == {
            "kernel": "warn",
            "guest": "ok",
            "device": "ok",
            "path configfs-tsm": "unusable",
            "path QGS over vsock": "ok",
            "path TDX_CMD_GET_QUOTE": "warn",
            "collateral": "warn",
        }
        assert "QGS over vsock" in detail(checks, "kernel")
        assert str(address) in detail(checks, "path QGS over vsock")
        result = await run_doctor(
            TdxAttester,
            TdxVerifier,
            settings={**td, "background_check_fallback": True},
            verifier_settings=CRYPTO_ONLY,
            checks=checks,
            make_attester=factory(paths),
        )
    assert len(qgs.requests) == 1
    assert statuses(result.checks)["generate"] == "ok"
    generated = detail(result.checks, "generate")
    assert generated.startswith("BackgroundCheck report (fallback: no endorsements) via QGS")
    assert "(skipped configfs-tsm: " in generated
    assert result.verdict == NOT_READY
    assert detail(result.checks, "verify").startswith("check 'quote_signature'")


@pytest.mark.asyncio
async def test_qgs_configured_but_unreachable(td, fake_ioctl) -> None:
    with serve_qgs(QgsStandIn(read(TEMPLATE))) as address:
        pass
    paths = paths_on(td, fake_ioctl, address)
    checks = diagnose(paths, td, Host("6.5.0", TD_CPU))
    assert statuses(checks)["path QGS over vsock"] == "unusable"
    assert "connecting to the QGS" in detail(checks, "path QGS over vsock")
    # the device is there, so the last path might work: the doctor tries, and reports why not
    result = await run_doctor(
        TdxAttester,
        TdxVerifier,
        settings=td,
        verifier_settings={},
        report_type="BackgroundCheck",
        checks=checks,
        make_attester=factory(paths),
    )
    assert result.verdict == NOT_READY
    text = detail(result.checks, "generate")
    assert text.startswith("no TDX quote path worked")
    assert "ENOTTY" in text and "connecting to the QGS" in text


@pytest.mark.asyncio
async def test_configfs_with_a_genuine_quote_is_ready(td, fake_ioctl, tmp_path) -> None:
    configfs = FakeConfigfs(tmp_path / "tsm" / "report", read(GENUINE_ZERO))
    configfs.splice = False  # the genuine quote binds 64 zero bytes
    settings = {**td, "configfs_root": str(configfs.root)}
    paths = paths_on(settings, fake_ioctl, configfs=configfs)
    checks = diagnose(paths, settings, Host("6.8.0", TD_CPU))
    assert statuses(checks)["path configfs-tsm"] == "ok"
    not_before = expected_tdx()[GENUINE_ZERO]["pck_leaf"]["not_before"]
    result = await run_doctor(
        TdxAttester,
        TdxVerifier,
        settings=settings,
        verifier_settings=CRYPTO_ONLY,
        report_type="BackgroundCheck",
        user_data=b"",
        now=when(not_before.replace(" ", "T")) + timedelta(days=1),
        checks=checks,
        make_attester=factory(paths),
    )
    assert result.verdict == READY, result.checks
    assert detail(result.checks, "generate") == "BackgroundCheck report via configfs-tsm"
    assert result.details["tcb_status"] == "Unknown"
    assert result.to_dict()["report_type"] == "BackgroundCheck"


@pytest.mark.asyncio
async def test_passport_without_collateral_is_not_ready(td, fake_ioctl, tmp_path) -> None:
    configfs = FakeConfigfs(tmp_path / "tsm" / "report", read(TEMPLATE))
    settings = {**td, "configfs_root": str(configfs.root)}
    paths = paths_on(settings, fake_ioctl, configfs=configfs)
    checks = diagnose(paths, settings, Host("6.8.0", TD_CPU))
    assert detail(checks, "collateral").endswith("are refused")
    result = await run_doctor(
        TdxAttester,
        TdxVerifier,
        settings=settings,
        verifier_settings={},
        checks=checks,
        make_attester=factory(paths),
    )
    assert result.verdict == NOT_READY
    assert "collateral" in detail(result.checks, "generate")


def test_pinned_interface_and_settings_are_reported(td, fake_ioctl, tmp_path) -> None:
    settings = {**td, "interface": "vsock", "qgs_port": 7000, "pccs_url": "https://pccs:8081"}
    checks = diagnose(paths_on(settings, fake_ioctl), settings, Host("6.8.0", TD_CPU))
    assert "pinned to 'vsock'" in detail(checks, "interface")
    assert "https://pccs:8081" in detail(checks, "collateral")
    assert statuses(checks)["path QGS over vsock"] == "unusable"  # nothing listens on vsock here


def test_old_kernel_and_unparsable_release() -> None:
    paths = quote_paths({})
    assert "older than 6.2" in detail(diagnose(paths, {}, Host("5.15.0", "")), "kernel")
    assert statuses(diagnose(paths, {}, Host("weird", "")))["kernel"] == "warn"


def test_attester_diagnose_runs_on_this_host() -> None:
    checks = TdxAttester.diagnose({})
    assert {c.name for c in checks} >= {"kernel", "guest", "path configfs-tsm"}
    if not TdxAttester.viable():
        assert statuses(checks)["guest"] in ("fail", "warn")
