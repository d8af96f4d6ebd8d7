"""RA proxy, Capsule Manager and client with ``--plat tdx`` / ``--plat csv``, the TEE faked.

The roles run in this process, on loopback ports, with a plugin manager in which the ``tdx`` and
``csv`` attesters are the real plugin classes on a *pretend* guest: viable, and with their kernel
seam (``ConfigfsTsm.ops`` / ``CsvAttester.device``) swapped for the plugins' own fakes after the
real ``from_settings`` ran on the settings the role passed (``RaProxySettings.attester_settings``
= ``trustflow ra-proxy --settings FILE``; the CM config's ``attester:`` section). Verifiers are the
real ones, verification is never faked.

What can honestly be shown (a fake cannot sign with Intel's or Hygon's keys):

* generation: the roles' reports carry the real vector evidence with *their* binding
  (SHA-256(cert || "." || nonce)) spliced in; the matching verifier with the vector's
  collateral / cert chain passes every check up to the evidence signature and rejects there
  (``quote_signature`` / ``report_signature``); the unmodified vector passes those checks;
* app reports at the CM: a replayed genuine report passes the platform verification and is
  refused for its binding, with the CM's PERMISSION_DENIED code and the ``hex_user_data``
  mismatch named.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from trustflow_core.attestation import Attributes, Policy, Report, ra_user_data
from trustflow_core.errors import VerificationError
from trustflow_core.hookspecs import hookimpl
from trustflow_core.manager import get_plugin_manager
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.roles._server import start_site
from trustflow_core.roles.capsule_manager.server import CapsuleManager
from trustflow_core.roles.capsule_manager.settings import CMSettings
from trustflow_core.roles.capsule_manager_client.client import (
    CapsuleManagerClient,
    CapsuleManagerError,
    Credentials,
)
from trustflow_core.roles.capsule_manager_client.keyexchange import ephemeral_credentials
from trustflow_core.roles.capsule_manager_protocol.errors import Kind
from trustflow_core.roles.capsule_manager_protocol.reports import report_to_pb
from trustflow_core.roles.client.online import OnlineClient
from trustflow_core.roles.ra_proxy.app import create_app
from trustflow_core.roles.ra_proxy.settings import RaProxySettings
from trustflow_core.testing.fixtures import compat_vectors_dir
from trustflow_core.wire import serialize_canonical
from trustflow_tee_csv.attester import CsvAttester
from trustflow_tee_csv.device import CsvGuestDevice
from trustflow_tee_csv.evidence import CsvEvidence
from trustflow_tee_csv.structs import CsvReport
from trustflow_tee_csv.verifier import CsvVerifier
from trustflow_tee_tdx.attester import TdxAttester
from trustflow_tee_tdx.guest import ConfigfsTsm
from trustflow_tee_tdx.quote import parse_quote
from trustflow_tee_tdx.report import open_report
from trustflow_tee_tdx.verifier import TdxVerifier

REPO = Path(__file__).resolve().parents[1]
TDX_QUOTE = "tdx/dcap-qvl/tdx_quote"  # non-debug v4 quote with a collateral bundle
CSV_REPORT = "csv/csv-rs/report.cert"
CSV_CHAIN = "csv/csv-rs/hsk_cek.cert"


# ---- vectors and the plugins' own fakes -------------------------------------------------------


def attestation_dir() -> Path:
    configured = os.environ.get("TRUSTFLOW_ATTESTATION_DIR")
    path = Path(configured) if configured else compat_vectors_dir().parent / "attestation"
    if not (path / "expected.json").is_file():
        raise FileNotFoundError(f"attestation vectors not found at {path}")
    return path


def expected() -> dict[str, Any]:
    return json.loads((attestation_dir() / "expected.json").read_text())


def read(name: str) -> bytes:
    return (attestation_dir() / name).read_bytes()


def when(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _fakes(plugin: str) -> ModuleType:
    """``plugins/<plugin>/tests/<plugin>_fakes.py`` (the fakes the plugin's tests use)."""
    name = f"{plugin}_fakes"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, REPO / "plugins" / plugin / "tests" / f"{name}.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def tdx_collateral_case() -> tuple[Path, datetime.datetime]:
    """The collateral bundle of :data:`TDX_QUOTE` and a time at which it is UpToDate."""
    cases = expected()["tdx"][TDX_QUOTE]["evaluations"]
    case = next(
        c
        for c in cases
        if c["expected_status"] == "UpToDate" and len(c["collateral"]["files"]) == 1
    )
    return attestation_dir() / case["collateral"]["files"][0], when(case["verify_time"])


# ---- a pretend guest: the real attesters with their kernel seam faked ----------------------


class FakeGuestPlugin:
    """Registers the given attester classes and the real ``tdx``/``csv`` verifiers."""

    def __init__(self, *attesters: type) -> None:
        self.attesters = attesters

    @hookimpl
    def trustflow_register_attesters(self, register: Any) -> None:
        for cls in self.attesters:
            register(cls)

    @hookimpl
    def trustflow_register_verifiers(self, register: Any) -> None:
        register(TdxVerifier)
        register(CsvVerifier)


def pretend_td(configfs: Any, seen: list[Mapping[str, Any]]) -> type[TdxAttester]:
    """``TdxAttester`` in a pretend TD: viable; after the real ``from_settings`` (which must
    have been pointed at the fake tree by the role's settings) the configfs-tsm kernel
    behaviour is the fake's."""

    class PretendTdTdxAttester(TdxAttester):
        @classmethod
        def unviable_reason(cls) -> str | None:
            return None

        @classmethod
        def from_settings(cls, settings: Mapping[str, Any] | None = None) -> PretendTdTdxAttester:
            seen.append(dict(settings or {}))
            attester = super().from_settings(settings)
            assert isinstance(attester.source, ConfigfsTsm)
            assert attester.source.root == configfs.root, "settings did not reach the attester"
            attester.source.ops = configfs
            return attester

    return PretendTdTdxAttester


def pretend_csv_guest(
    device: Path, firmware: Any, seen: list[Mapping[str, Any]]
) -> type[CsvAttester]:
    """``CsvAttester`` in a pretend CSV guest: viable; the device named by the role's settings
    is answered by ``firmware``."""

    class PretendCsvGuestAttester(CsvAttester):
        @classmethod
        def unviable_reason(cls) -> str | None:
            return None

        @classmethod
        def from_settings(
            cls, settings: Mapping[str, Any] | None = None
        ) -> PretendCsvGuestAttester:
            seen.append(dict(settings or {}))
            attester = super().from_settings(settings)
            assert isinstance(attester.device, CsvGuestDevice)
            assert attester.device.path == device, "settings did not reach the attester"
            attester.device = firmware
            return attester

    return PretendCsvGuestAttester


@pytest.fixture
def plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TRUSTFLOW_TEE", "TRUSTFLOW_VERIFIER", "TRUSTFLOW_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(name, raising=False)
    # tee_sim for the unverified ("sim", i.e. simulated) CM clients that inspect raw reports
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "channel_jwe,tee_tdx,tee_csv,tee_sim")


def guest_pm(*attesters: type) -> Any:
    """The roles' plugin manager: JWE channel, the pretend-guest attesters, real verifiers."""
    pm = get_plugin_manager()
    pm.unregister(name="tee_tdx")
    pm.unregister(name="tee_csv")
    pm.register(FakeGuestPlugin(*attesters), name="pretend_guest")
    return pm


def make_party(cn: str) -> Credentials:
    return ephemeral_credentials(cn, key_size=2048)  # 2048 bits: faster tests


def app_cert_file(tmp_path: Path) -> Path:
    path = tmp_path / "app.crt"
    cert = make_party("tee-app").chain[0]
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


async def ra_proxy(pm: Any, cert: Path, plat: str, attester_settings: Mapping[str, Any]) -> Any:
    settings = RaProxySettings(
        cert_path=cert, plat=plat, attester_settings=attester_settings, port=0
    )
    return await start_site(create_app(settings, pm), "127.0.0.1", 0)


def resource_request(initiator: str = "someone") -> cm_pb2.ResourceRequest:
    return cm_pb2.ResourceRequest(
        initiator_party_id=initiator,
        scope="default",
        op_name="psi",
        resources=[cm_pb2.ResourceRequest.Resource(resource_uri="d-" + secrets.token_hex(6))],
    )


async def assert_binding_refused(
    client: CapsuleManagerClient, report: Report, bound: bytes
) -> None:
    """GetDataKeys with ``report`` (genuine, binding ``bound``) is refused with the CM's
    PERMISSION_DENIED and exactly one mismatch: this request's binding."""
    app = make_party("app")
    request = resource_request(app.party_id)
    with pytest.raises(CapsuleManagerError) as info:
        await client.get_data_keys(app, request, report_to_pb(report))
    wanted = ra_user_data(app.chain_pems[0].encode(), serialize_canonical(request)).hex()
    refusal = info.value
    assert refusal.code == Kind.PERMISSION_DENIED.value[0], refusal.message
    assert refusal.message == (
        "err code: Permission denied; err detail: attestation report verify failed: policy: "
        f"no policy entry matches: #0: hex_user_data: expected {wanted}, got {bound.hex()}; "
    )


# ---- TDX ----------------------------------------------------------------------------------


@pytest.fixture
def tdx_guest(tmp_path: Path) -> tuple[Any, dict[str, Any], list[Mapping[str, Any]]]:
    fakes = _fakes("tee_tdx")
    configfs = fakes.FakeConfigfs(tmp_path / "tsm" / "report", read(TDX_QUOTE))
    collateral_file, _ = tdx_collateral_case()
    settings = {
        "interface": "configfs",
        "configfs_root": str(configfs.root),
        "collateral_file": str(collateral_file),
    }
    return configfs, settings, []


def spliced_tdx_quote(report: Report, binding: bytes) -> bytes:
    """The report's quote, checked to be the vector with exactly ``binding`` spliced in."""
    quote, collateral = open_report(report.json_report)
    assert collateral is not None and collateral.tcb_info  # Passport: collateral bundled
    assert parse_quote(quote).body.report_data == binding + bytes(32)
    template = read(TDX_QUOTE)
    assert (
        quote
        == _fakes("tee_tdx").quote_with_report_data(template, binding + bytes(32))[: len(quote)]
    )
    return quote


@pytest.mark.asyncio
async def test_tdx_vector_passes_the_checks_the_fakes_cannot(plugin_env) -> None:
    """Control: the unmodified vector verifies (UpToDate) with its collateral at its time, so
    the role tests' ``quote_signature`` rejections come from the spliced binding alone."""
    collateral_file, at = tdx_collateral_case()
    verifier = TdxVerifier.from_settings({"collateral_file": str(collateral_file)})
    report = TdxVerifier.report_from_evidence(read(TDX_QUOTE))
    own = parse_quote(read(TDX_QUOTE)).body.report_data[:32]
    policy = Policy((Attributes(str_tee_platform="TDX"),)).with_user_data(own)
    verified = await verifier.verify(report, policy, now=at)
    assert verified.details["tcb_status"] == "UpToDate"


@pytest.mark.asyncio
async def test_ra_proxy_plat_tdx_and_client(plugin_env, tmp_path, tdx_guest) -> None:
    configfs, settings, seen = tdx_guest
    pm = guest_pm(pretend_td(configfs, seen))
    cert_file = app_cert_file(tmp_path)
    runner, port = await ra_proxy(pm, cert_file, "tdx", settings)
    try:
        assert seen == [settings]  # the role handed its attester settings through
        collateral_file, _ = tdx_collateral_case()
        async with OnlineClient(
            f"http://127.0.0.1:{port}",
            policy=Policy((Attributes(str_tee_platform="TDX"),)),
            pm=get_plugin_manager(),  # the client: the installed plugins, nothing faked
            verifier_settings={"tdx": {"collateral_file": str(collateral_file)}},
        ) as client:
            nonce = secrets.token_hex(32)
            reply = await client.get_ra_cert(nonce)
            report = Report.from_dict(reply["attestation_report"])
            assert report.str_tee_platform == "TDX"
            binding = ra_user_data(cert_file.read_bytes(), nonce.encode())
            spliced_tdx_quote(report, binding)
            assert configfs.inblobs[-1] == binding + bytes(32)
            assert not any(configfs.root.iterdir())  # the configfs entry was removed
            with pytest.raises(VerificationError) as info:
                await client.attest()
            assert info.value.check == "quote_signature", info.value
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_capsule_manager_plat_tdx(plugin_env, tmp_path, tdx_guest) -> None:
    configfs, settings, seen = tdx_guest
    pm = guest_pm(pretend_td(configfs, seen))
    # The CM verifies at its own clock, past the vector collateral's window: crypto-only
    # (explicitly accepting TCB status Unknown); the PCK chain is still checked at that time.
    crypto_only = {"require_collateral": False, "accepted_tcb_statuses": ["Unknown"]}
    cm = CapsuleManager(
        CMSettings(
            port=0,
            plat="tdx",
            data_dir=tmp_path / "cm",
            attester=settings,
            verifiers={"tdx": crypto_only},
            main_attributes=(Attributes(str_tee_platform="TDX", bool_debug_disabled="true"),),
        ),
        pm=pm,
    )
    port = await cm.start()
    try:
        assert seen == [settings]
        assert configfs.inblobs == [bytes(64)]  # the start-up probe report
        target = f"127.0.0.1:{port}"
        # GetRaCert: bound to the CM cert and our nonce; the SDK-style check rejects the
        # fake's signature (collateral bundled by the CM's attester).
        async with CapsuleManagerClient(target, tee_plat="tdx", pm=get_plugin_manager()) as sdk:
            with pytest.raises(VerificationError) as info:
                await sdk.get_ra_cert()
            assert info.value.check == "quote_signature", info.value
        # Unverified (sim-mode client): the report binds the CM cert and our nonce.
        async with CapsuleManagerClient(target, tee_plat="sim", pm=get_plugin_manager()) as raw:
            nonce = secrets.token_hex(16)
            cert_pem, report = await raw.get_ra_cert(nonce)
            assert report is not None and report.str_tee_platform == "TDX"
            spliced_tdx_quote(report, ra_user_data(cert_pem.encode(), nonce.encode()))

            # An app replaying a genuine TD quote: platform checks pass, the binding does not.
            genuine = TdxVerifier.report_from_evidence(read(TDX_QUOTE))
            own = parse_quote(read(TDX_QUOTE)).body.report_data[:32]
            await TdxVerifier.from_settings(crypto_only).verify(
                genuine, cm.service.policy.with_user_data(own)
            )
            await assert_binding_refused(raw, genuine, own)

            # The same quote as a Passport with its (bundled) vector collateral: the CM
            # checks it at its own clock, after the collateral's nextUpdate.
            collateral_file, _ = tdx_collateral_case()
            passport = TdxVerifier.report_from_evidence(
                read(TDX_QUOTE), endorsements=collateral_file.read_bytes()
            )
            with pytest.raises(CapsuleManagerError) as expired:
                await raw.get_data_keys(
                    make_party("app"), resource_request(), report_to_pb(passport)
                )
            assert expired.value.code == Kind.PERMISSION_DENIED.value[0]
            assert "attestation report verify failed: collateral_expired: " in (
                expired.value.message
            )
    finally:
        await cm.stop()


# ---- CSV ----------------------------------------------------------------------------------


@pytest.fixture
def csv_guest(tmp_path: Path) -> tuple[Any, Path, dict[str, Any], list[Mapping[str, Any]]]:
    firmware = _fakes("tee_csv").TemplateFirmware(read(CSV_REPORT))
    device = tmp_path / "csv-guest"
    settings = {"device": str(device), "hsk_cek_file": str(attestation_dir() / CSV_CHAIN)}
    return firmware, device, settings, []


def templated_csv_report(report: Report, binding: bytes) -> None:
    """The report is the vector's, with ``binding`` as report data and its chain bundled."""
    evidence = CsvEvidence.from_json(report.json_report)
    assert evidence.hsk + evidence.cek == read(CSV_CHAIN)
    assert evidence.chip_id == expected()["csv"][CSV_REPORT]["chip_id"]
    csv = CsvReport.parse(evidence.quote)
    assert csv.user_data == binding + bytes(32)
    assert csv.measure.hex() == expected()["csv"][CSV_REPORT]["measure"]


@pytest.mark.asyncio
async def test_csv_vector_passes_the_checks_the_fake_cannot(plugin_env) -> None:
    report = CsvVerifier.report_from_evidence(read(CSV_REPORT), endorsements=read(CSV_CHAIN))
    own = bytes.fromhex(expected()["csv"][CSV_REPORT]["report_data"])[:32]
    policy = Policy((Attributes(str_tee_platform="CSV"),)).with_user_data(own)
    verified = await CsvVerifier.from_settings({}).verify(report, policy)
    assert verified.details["mac"] == "verified"


@pytest.mark.asyncio
async def test_ra_proxy_plat_csv_and_client(plugin_env, tmp_path, csv_guest) -> None:
    firmware, device, settings, seen = csv_guest
    pm = guest_pm(pretend_csv_guest(device, firmware, seen))
    cert_file = app_cert_file(tmp_path)
    runner, port = await ra_proxy(pm, cert_file, "csv", settings)
    try:
        assert seen == [settings]
        async with OnlineClient(
            f"http://127.0.0.1:{port}",
            policy=Policy((Attributes(str_tee_platform="CSV"),)),
            pm=get_plugin_manager(),
            verifier_settings={"csv": {"hsk_cek_file": settings["hsk_cek_file"]}},
        ) as client:
            nonce = secrets.token_hex(32)
            reply = await client.get_ra_cert(nonce)
            report = Report.from_dict(reply["attestation_report"])
            assert report.str_tee_platform == "CSV"
            templated_csv_report(report, ra_user_data(cert_file.read_bytes(), nonce.encode()))
            with pytest.raises(VerificationError) as info:
                await client.attest()
            # format, fields, MAC, debug, HSK, CEK, PEK passed; the signature cannot.
            assert info.value.check == "report_signature", info.value
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_capsule_manager_plat_csv(plugin_env, tmp_path, csv_guest) -> None:
    firmware, device, settings, seen = csv_guest
    pm = guest_pm(pretend_csv_guest(device, firmware, seen))
    cm = CapsuleManager(
        CMSettings(
            port=0,
            plat="csv",
            data_dir=tmp_path / "cm",
            attester=settings,
            verifiers={"csv": {}},
            main_attributes=(Attributes(str_tee_platform="CSV"),),
        ),
        pm=pm,
    )
    port = await cm.start()
    try:
        assert seen == [settings]
        target = f"127.0.0.1:{port}"
        async with CapsuleManagerClient(target, tee_plat="csv", pm=get_plugin_manager()) as sdk:
            with pytest.raises(VerificationError) as info:
                await sdk.get_ra_cert()
            assert info.value.check == "report_signature", info.value
        async with CapsuleManagerClient(target, tee_plat="sim", pm=get_plugin_manager()) as raw:
            nonce = secrets.token_hex(16)
            cert_pem, report = await raw.get_ra_cert(nonce)
            assert report is not None and report.str_tee_platform == "CSV"
            templated_csv_report(report, ra_user_data(cert_pem.encode(), nonce.encode()))
            genuine = CsvVerifier.report_from_evidence(
                read(CSV_REPORT), endorsements=read(CSV_CHAIN)
            )
            own = bytes.fromhex(expected()["csv"][CSV_REPORT]["report_data"])[:32]
            await assert_binding_refused(raw, genuine, own)
    finally:
        await cm.stop()


# ---- the commands on this (non-guest) host ------------------------------------------------


@pytest.mark.parametrize("plat", ["tdx", "csv"])
@pytest.mark.parametrize("role", ["ra-proxy", "capsule-manager"])
def test_commands_refuse_plat_outside_a_guest(tmp_path, plat: str, role: str) -> None:
    """Outside a guest ``--plat tdx|csv`` stops at start with one line naming the reason (no
    traceback, no listening server); the attester settings file is accepted as the input."""
    cls = {"tdx": TdxAttester, "csv": CsvAttester}[plat]
    if cls.viable():
        pytest.skip(f"this host is a {plat} guest")
    settings = tmp_path / "settings.yaml"
    if role == "ra-proxy":
        settings.write_text("{}\n")
        cert = str(app_cert_file(tmp_path))
        args = ["--plat", plat, "--settings", str(settings), "--cert-path", cert]
    else:
        settings.write_text(f"plat: {plat}\nattester: {{}}\n")
        args = ["--config-file", str(settings), "--data-dir", str(tmp_path / "cm")]
    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "channel_jwe,tee_tdx,tee_csv"}
    for name in ("TRUSTFLOW_TEE", "TRUSTFLOW_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(name, None)
    trustflow = str(Path(sys.executable).parent / "trustflow")
    done = subprocess.run(
        [trustflow, role, *args, "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    reason = cls.unviable_reason()
    assert done.stderr.strip() == f"Error: attester backend {plat!r} cannot run here: {reason}"


def test_fakes_digest_matches_the_vectors() -> None:
    """The vectors the fakes replay are the ones expected.json documents."""
    for section, name in (("tdx", TDX_QUOTE), ("csv", CSV_REPORT)):
        assert hashlib.sha256(read(name)).hexdigest() == expected()[section][name]["sha256"]
