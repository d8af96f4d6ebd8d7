"""Every TDX quote path and their order (configfs-tsm, the QGS over vsock, TDX_CMD_GET_QUOTE)
against the fakes: the configfs tree, the /dev/tdx_guest ioctls and a QGS stand-in speaking
the real framing on 127.0.0.1 (the socket family and address are the seam; vsock does not
exist here)."""

from __future__ import annotations

import hashlib
import json
import socket

import pytest
from conftest import read
from tee_tdx_fakes import FakeConfigfs, FakeTdxIoctl, QgsStandIn, serve_qgs
from trustflow_core.attestation import BACKGROUND_CHECK, Attributes, Policy, match_policy
from trustflow_core.errors import BackendUnavailable, InvalidInput

from trustflow_tee_tdx import guest
from trustflow_tee_tdx.attester import TdxAttester
from trustflow_tee_tdx.quote import parse_quote
from trustflow_tee_tdx.report import open_report

TEMPLATE = "tdx/dcap-qvl/tdx_quote"
V5_TEMPLATE = "tdx/trustee/tdx_quote_5.dat"
TDREPORT = "tdx/guest-components/tdx_report_1.bin"


@pytest.fixture
def qgs() -> QgsStandIn:
    return QgsStandIn(read(TEMPLATE))


@pytest.fixture
def fake_ioctl() -> FakeTdxIoctl:
    return FakeTdxIoctl(read(TDREPORT), read(V5_TEMPLATE))


@pytest.fixture
def td(tmp_path, fake_ioctl):
    """Settings of a TD on a 6.2-6.6 kernel: /dev/tdx_guest (mainline: no GET_QUOTE), no
    configfs-tsm, a QGS port in tdx-attest.conf."""
    fake_ioctl.mainline = True
    device = tmp_path / "tdx_guest"
    device.write_bytes(b"")
    config = tmp_path / "tdx-attest.conf"
    config.write_text("# QGS on the host\nport = 4050\n")
    return {
        "configfs_root": str(tmp_path / "no-configfs"),
        "device": str(device),
        "qgs_config": str(config),
    }


def attester_on(settings, fake_ioctl, qgs_address=None, configfs=None) -> TdxAttester:
    """The real attester from ``settings`` with its kernel and socket seams swapped."""
    attester = TdxAttester.from_settings(settings)
    paths = attester.source.paths if isinstance(attester.source, guest.QuotePaths) else []
    for path in paths or [attester.source]:
        if isinstance(path, guest.TdxGuestDevice):
            path.ioctl = fake_ioctl
        elif isinstance(path, guest.QgsVsock):
            path.device.ioctl = fake_ioctl
            if qgs_address is not None:
                path.family, path.address = socket.AF_INET, qgs_address
        elif isinstance(path, guest.ConfigfsTsm) and configfs is not None:
            path.ops = configfs
    return attester


# ---- /etc/tdx-attest.conf ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "port"),
    [
        ("port = 4050\n", 4050),
        ("  port=4051  \n", 4051),
        ("# port = 1\nport = 4052\nport = 9\n", 4052),
        ("port = 4050 # comment\n", None),  # trailing text: libtdx_attest ignores the line
        ("port = 0\n", None),
        ("port = 99999999999\n", None),
        ("qgs = 4050\n", None),
        ("", None),
    ],
)
def test_qgs_port_is_read_like_libtdx_attest(tmp_path, text: str, port: int | None) -> None:
    config = tmp_path / "tdx-attest.conf"
    config.write_text(text)
    assert guest.qgs_port(config) == port


def test_missing_qgs_config_means_no_port(tmp_path) -> None:
    assert guest.qgs_port(tmp_path / "absent.conf") is None


# ---- the QGS over vsock ----------------------------------------------------------------------


def test_vsock_path_speaks_the_qgs_framing(td, fake_ioctl, qgs) -> None:
    with serve_qgs(qgs) as address:
        attester = attester_on({**td, "interface": "vsock"}, fake_ioctl, address)
        source = attester.source
        assert isinstance(source, guest.QgsVsock) and source.port == 4050
        assert source.address == address and source.probe() is None
        report_data = bytes(range(64))
        quote = source.get_quote(report_data)
    assert fake_ioctl.requests == [guest.TDX_CMD_GET_REPORT0]  # no GET_QUOTE ioctl
    assert len(qgs.requests) == 1 and qgs.requests[0][128:192] == report_data
    assert parse_quote(quote).body.report_data == report_data


def test_default_socket_is_vsock_to_the_host(td) -> None:
    source = TdxAttester.from_settings({**td, "interface": "vsock"}).source
    assert isinstance(source, guest.QgsVsock)
    assert source.address == (guest.VSOCK_CID_HOST, 4050)
    if hasattr(socket, "AF_VSOCK"):
        assert source.family == socket.AF_VSOCK
    override = TdxAttester.from_settings({**td, "interface": "vsock", "qgs_port": 5000}).source
    assert override.address == (2, 5000)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("mode", "match"),
    [("error", "quote generation service error 0x12"), ("hang_up", "closed"), ("huge", "range")],
)
def test_qgs_failures_are_unavailable(td, fake_ioctl, qgs, mode: str, match: str) -> None:
    qgs.mode = mode
    with serve_qgs(qgs) as address:
        source = attester_on({**td, "interface": "vsock"}, fake_ioctl, address).source
        with pytest.raises(BackendUnavailable, match=match):
            source.get_quote(bytes(64))


def test_unreachable_qgs_is_unavailable(td, fake_ioctl, qgs) -> None:
    with serve_qgs(qgs) as address:
        pass  # the port is closed again
    source = attester_on({**td, "interface": "vsock"}, fake_ioctl, address).source
    assert isinstance(source, guest.QgsVsock)
    assert "connecting to the QGS" in (source.probe() or "")
    with pytest.raises(BackendUnavailable, match="connecting to the QGS"):
        source.get_quote(bytes(64))


def test_vsock_without_port_is_unavailable(td, fake_ioctl) -> None:
    settings = {**td, "interface": "vsock", "qgs_config": td["qgs_config"] + ".absent"}
    source = attester_on(settings, fake_ioctl).source
    with pytest.raises(BackendUnavailable, match="no QGS port"):
        source.get_quote(bytes(64))


@pytest.mark.parametrize("port", [0, -1, "4050", True, 1 << 32])
def test_bad_qgs_port_setting(td, port) -> None:
    with pytest.raises(InvalidInput, match="qgs_port"):
        TdxAttester.from_settings({**td, "qgs_port": port})


# ---- the order and the reasons -------------------------------------------------------------


@pytest.mark.asyncio
async def test_td_without_configfs_gets_its_quote_from_the_qgs(td, fake_ioctl, qgs) -> None:
    """Kernel 6.2-6.6: the device is there, configfs-tsm is not, GET_QUOTE is ENOTTY. Before
    the vsock path such a TD got no quote at all."""
    with serve_qgs(qgs) as address:
        attester = attester_on(td, fake_ioctl, address)
        report = await attester.generate(b"six-two", report_type=BACKGROUND_CHECK)
    quote, _ = open_report(report.json_report)
    assert parse_quote(quote).body.report_data == b"six-two".ljust(64, b"\0")
    source = attester.source
    assert isinstance(source, guest.QuotePaths)
    assert [(a.path, a.ok) for a in source.attempts] == [
        ("configfs-tsm", False),
        ("QGS over vsock", True),
    ]
    assert "does not exist" in source.attempts[0].reason


def test_configfs_comes_first(td, fake_ioctl, qgs, tmp_path) -> None:
    configfs = FakeConfigfs(tmp_path / "tsm" / "report", read(TEMPLATE))
    settings = {**td, "configfs_root": str(configfs.root)}
    with serve_qgs(qgs) as address:
        source = attester_on(settings, fake_ioctl, address, configfs).source
        source.get_quote(bytes(64))
    assert qgs.requests == [] and len(configfs.inblobs) == 1
    assert [(a.path, a.ok) for a in source.attempts] == [("configfs-tsm", True)]


def test_broken_configfs_falls_through_to_the_qgs(td, fake_ioctl, qgs, tmp_path) -> None:
    configfs = FakeConfigfs(tmp_path / "tsm" / "report", read(TEMPLATE))
    configfs.provider = b"sev_guest\n"
    settings = {**td, "configfs_root": str(configfs.root)}
    with serve_qgs(qgs) as address:
        source = attester_on(settings, fake_ioctl, address, configfs).source
        source.get_quote(bytes(64))
    assert [(a.path, a.ok) for a in source.attempts] == [
        ("configfs-tsm", False),
        ("QGS over vsock", True),
    ]
    assert "sev_guest" in source.attempts[0].reason


def test_out_of_tree_driver_is_the_last_resort(td, fake_ioctl) -> None:
    fake_ioctl.mainline = False
    settings = {**td, "qgs_config": td["qgs_config"] + ".absent"}
    source = attester_on(settings, fake_ioctl).source
    source.get_quote(bytes(64))
    assert [(a.path, a.ok) for a in source.attempts] == [
        ("configfs-tsm", False),
        ("QGS over vsock", False),
        ("TDX_CMD_GET_QUOTE ioctl", True),
    ]


def test_no_path_works_every_reason_is_named(td, fake_ioctl, qgs) -> None:
    with serve_qgs(qgs) as address:
        pass
    source = attester_on(td, fake_ioctl, address).source
    with pytest.raises(BackendUnavailable) as info:
        source.get_quote(bytes(64))
    text = str(info.value)
    assert text.startswith("no TDX quote path worked: configfs-tsm: ")
    assert "QGS over vsock: connecting to the QGS" in text
    assert "TDX_CMD_GET_QUOTE ioctl: TDX_CMD_GET_QUOTE failed: ENOTTY" in text
    assert "mainline" in text


def test_bad_report_data_stops_at_once(td, fake_ioctl) -> None:
    source = attester_on(td, fake_ioctl).source
    with pytest.raises(InvalidInput, match="64 bytes"):
        source.get_quote(bytes(10))
    assert fake_ioctl.requests == []


@pytest.mark.parametrize(
    ("interface", "kind"),
    [("configfs", guest.ConfigfsTsm), ("vsock", guest.QgsVsock), ("ioctl", guest.TdxGuestDevice)],
)
def test_operator_can_pin_one_path(td, interface: str, kind: type) -> None:
    assert isinstance(TdxAttester.from_settings({**td, "interface": interface}).source, kind)
    assert isinstance(TdxAttester.from_settings(td).source, guest.QuotePaths)


# ---- Passport fallback, public-key binding ---------------------------------------------------


@pytest.mark.asyncio
async def test_passport_without_collateral_refused_or_falls_back(td, fake_ioctl, qgs) -> None:
    with serve_qgs(qgs) as address:
        with pytest.raises(BackendUnavailable, match="collateral"):
            await attester_on(td, fake_ioctl, address).generate(b"x")
        settings = {**td, "background_check_fallback": True}
        report = await attester_on(settings, fake_ioctl, address).generate(b"x")
    assert report.str_report_type == BACKGROUND_CHECK
    assert set(json.loads(report.json_report)) == {"b64_quote"}
    with pytest.raises(InvalidInput, match="background_check_fallback"):
        TdxAttester.from_settings({**td, "background_check_fallback": "yes"})


@pytest.mark.asyncio
async def test_public_key_binding_in_report_data(td, fake_ioctl, qgs, tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(pem)
    with serve_qgs(qgs) as address:
        attester = attester_on({**td, "public_key_file": str(key_file)}, fake_ioctl, address)
        report = await attester.generate(b"bound", report_type=BACKGROUND_CHECK)
    body = parse_quote(open_report(report.json_report)[0]).body
    assert body.report_data == b"bound".ljust(32, b"\0") + hashlib.sha256(pem).digest()
    match_policy(
        Attributes(hex_hash_or_pem_pubkey=body.report_data[32:].hex()),
        Policy((Attributes(hex_hash_or_pem_pubkey=pem.decode()),)),
    )
    with pytest.raises(InvalidInput, match="public_key_file"):
        TdxAttester.from_settings({**td, "public_key_file": str(tmp_path / "absent.pem")})
