"""Every TDX evaluation in expected.json gives its documented outcome at its pinned time, with
the documented intermediate results; tampered collateral is rejected."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import collateral_from_files, evaluations, read, when
from trustflow_core.attestation import Attributes, Policy
from trustflow_core.errors import VerificationError

from trustflow_tee_tdx.collateral import Collateral
from trustflow_tee_tdx.dcap import verify_quote
from trustflow_tee_tdx.report import make_report
from trustflow_tee_tdx.verifier import TdxVerifier

EVALUATIONS = evaluations()
IDS = [f"{name}#{i}" for name, i, _ in EVALUATIONS]
#: expected_status values that are verification failures rather than TCB statuses.
FAILURES = {"CollateralExpired": "collateral_expired"}


def _crls_bundled(ev: dict) -> bool:
    return ev["details"]["pck_crl_sig"] is not None


@pytest.mark.parametrize(("name", "index", "ev"), EVALUATIONS, ids=IDS)
def test_documented_outcome(name: str, index: int, ev: dict) -> None:
    collateral = collateral_from_files(ev["collateral"]["files"])
    now = when(ev["verify_time"])
    expected = ev["expected_status"]
    if expected in FAILURES:
        with pytest.raises(VerificationError) as info:
            verify_quote(read(name), collateral, now, require_crls=_crls_bundled(ev))
        assert info.value.check == FAILURES[expected]
        return
    verdict = verify_quote(read(name), collateral, now, require_crls=_crls_bundled(ev))
    details = ev["details"]
    assert verdict.tcb_status == expected
    assert verdict.revocation == ("checked" if _crls_bundled(ev) else "unchecked")
    result = verdict.tcb
    assert result is not None
    assert result.qe_level is not None and result.qe_level.status == details["qe_tcb_status"]
    assert verdict.quote.qe_report.isv_svn == details["qe_isvsvn"]
    sgx = details["sgx_level"]
    if sgx is None:
        assert result.platform_level is None
    else:
        assert [result.platform_level.status, result.platform_level.tcb_date] == sgx
    if details["tdx_level"] is not None:
        status, date, advisories = details["tdx_level"]
        assert result.tcb_date == date
        assert set(advisories) <= set(verdict.advisory_ids)
    module = details["module_identity"]
    assert result.module_id == module["id"]
    if "status" in module:
        status, date, advisories = module["status"]
        assert result.module_level is not None
        assert (result.module_level.status, result.module_level.tcb_date) == (status, date)
        assert list(result.module_level.advisory_ids) == advisories
    else:
        assert result.module_level is None
    if expected != "TcbNotSupported":
        expected_ids = list(details["tdx_level"][2]) + list(module.get("status", [0, 0, []])[2])
        assert sorted(verdict.advisory_ids) == sorted(set(expected_ids))


@pytest.mark.parametrize(("name", "index", "ev"), EVALUATIONS, ids=IDS)
@pytest.mark.asyncio
async def test_verifier_verdict_with_default_settings(name: str, index: int, ev: dict) -> None:
    """Fail-closed defaults: only UpToDate-like statuses, CRLs required, debug TDs rejected."""
    collateral = collateral_from_files(ev["collateral"]["files"])
    report = make_report(read(name), collateral)
    policy = Policy((Attributes(str_tee_platform="TDX"),))
    now = when(ev["verify_time"])
    expected = ev["expected_status"]
    verifier = TdxVerifier.from_settings({})
    if expected == "UpToDate" and _crls_bundled(ev):
        from conftest import expected_tdx

        debug = expected_tdx()[name]["td_debug"]
        if debug:
            with pytest.raises(VerificationError) as info:
                await verifier.verify(report, policy, now=now)
            assert info.value.check == "td_debug"
        else:
            verified = await verifier.verify(report, policy, now=now)
            assert verified.details["tcb_status"] == "UpToDate"
            assert verified.details["advisory_ids"] == []
        return
    with pytest.raises(VerificationError) as info:
        await verifier.verify(report, policy, now=now)
    if expected in FAILURES:
        assert info.value.check == FAILURES[expected]
    elif not _crls_bundled(ev):
        assert info.value.check == "collateral"
        assert "revocation" in info.value.detail
    else:
        assert info.value.check == "tcb_status"
        assert expected in info.value.detail


@pytest.mark.asyncio
async def test_out_of_date_platform_accepted_only_when_allowed() -> None:
    name, _, ev = next(e for e in EVALUATIONS if e[2]["expected_status"] == "OutOfDate")
    collateral = collateral_from_files(ev["collateral"]["files"])
    report = make_report(read(name), collateral)
    policy = Policy((Attributes(str_tee_platform="TDX"),))
    now = when(ev["verify_time"])
    strict = TdxVerifier.from_settings({"require_crls": False})
    with pytest.raises(VerificationError) as info:
        await strict.verify(report, policy, now=now)
    assert info.value.check == "tcb_status" and "OutOfDate" in info.value.detail
    lenient = TdxVerifier.from_settings(
        {"require_crls": False, "accepted_tcb_statuses": ["UpToDate", "OutOfDate"]}
    )
    verified = await lenient.verify(report, policy, now=now)
    assert verified.details["tcb_status"] == "OutOfDate"
    assert verified.details["revocation"] == "unchecked"


@pytest.mark.asyncio
async def test_debug_td_is_visible_to_policy_when_allowed() -> None:
    from conftest import expected_tdx

    name, _, ev = next(e for e in EVALUATIONS if expected_tdx()[e[0]]["td_debug"])
    report = make_report(read(name), collateral_from_files(ev["collateral"]["files"]))
    now = when(ev["verify_time"])
    verifier = TdxVerifier.from_settings({"allow_debug_td": True})
    verified = await verifier.verify(report, Policy((Attributes(str_tee_platform="TDX"),)), now=now)
    assert verified.attributes.bool_debug_disabled == "false"
    cm_policy = Policy((Attributes(str_tee_platform="TDX", bool_debug_disabled="1"),))
    with pytest.raises(VerificationError) as info:
        await verifier.verify(report, cm_policy, now=now)
    assert info.value.check == "policy" and "bool_debug_disabled" in info.value.detail


def _good() -> tuple[str, dict]:
    name, _, ev = next(
        e
        for e in EVALUATIONS
        if e[2]["expected_status"] == "UpToDate" and _crls_bundled(e[2]) and "dcap-qvl" in e[0]
    )
    return name, ev


COLLATERAL_FIELDS = [f.name for f in dataclasses.fields(Collateral)]


@pytest.mark.parametrize("field", COLLATERAL_FIELDS)
def test_tampered_collateral_is_rejected(field: str) -> None:
    """Flip bytes of each collateral piece (every signature byte, a stride of the rest)."""
    name, ev = _good()
    collateral = collateral_from_files(ev["collateral"]["files"])
    quote, now = read(name), when(ev["verify_time"])
    verify_quote(quote, collateral, now)
    value = getattr(collateral, field)
    positions = range(len(value)) if len(value) <= 64 else range(0, len(value), 7)
    accepted = []
    for i in positions:
        tampered = value[:i] + bytes([value[i] ^ 0x01]) + value[i + 1 :]
        try:
            verify_quote(quote, dataclasses.replace(collateral, **{field: tampered}), now)
        except VerificationError:
            continue
        accepted.append(i)
    if field == "pck_crl_issuer_chain":
        # We check the PCK CRL against the PCK CA already chained from the quote, so this
        # piece is informational only.
        return
    assert not accepted, f"{field}: flips accepted at {accepted[:10]}"


@pytest.mark.parametrize("field", ["tcb_info", "qe_identity", "tcb_info_issuer_chain"])
def test_missing_collateral_piece_is_rejected(field: str) -> None:
    name, ev = _good()
    collateral = collateral_from_files(ev["collateral"]["files"])
    missing = dataclasses.replace(collateral, **{field: None})
    if field == "tcb_info_issuer_chain":
        missing = dataclasses.replace(missing, qe_identity_issuer_chain=None)
    with pytest.raises(VerificationError) as info:
        verify_quote(read(name), missing, when(ev["verify_time"]))
    assert info.value.check == "collateral"


def test_collateral_of_another_platform_is_rejected() -> None:
    """The dcap-qvl June 2025 collateral does not fit the trustee v5 quote (other FMSPC)."""
    _, ev = _good()
    collateral = collateral_from_files(ev["collateral"]["files"])
    with pytest.raises(VerificationError) as info:
        verify_quote(
            read("tdx/dcap-qvl/tdx_quote_outdated"), collateral, when("2026-03-01T00:00:00Z")
        )
    assert info.value.check in ("collateral_expired", "tcb_info")


@pytest.mark.asyncio
async def test_min_tcb_evaluation_data_number() -> None:
    name, ev = _good()
    collateral = collateral_from_files(ev["collateral"]["files"])
    report = make_report(read(name), collateral)
    policy = Policy((Attributes(str_tee_platform="TDX"),))
    now = when(ev["verify_time"])
    verified = await TdxVerifier.from_settings({}).verify(report, policy, now=now)
    number = verified.details["tcb_evaluation_data_number"]
    ok = TdxVerifier.from_settings({"min_tcb_evaluation_data_number": number})
    await ok.verify(report, policy, now=now)
    newer = TdxVerifier.from_settings({"min_tcb_evaluation_data_number": number + 1})
    with pytest.raises(VerificationError) as info:
        await newer.verify(report, policy, now=now)
    assert info.value.check == "tcb_info" and "evaluation" in info.value.detail


@pytest.mark.asyncio
async def test_policy_pins_td_measurements_attributes_and_xfam() -> None:
    """MRTD / MRCONFIGID / MROWNER / RTMRs / TDATTRIBUTES / XFAM expectations go through the
    UAL attributes (values from expected.json); one changed MRTD byte is a policy mismatch."""
    from conftest import expected_tdx

    name, ev = _good()
    body = expected_tdx()[name]["body"]
    report = make_report(read(name), collateral_from_files(ev["collateral"]["files"]))
    platform = "".join(
        body[k]
        for k in (
            "mr_seam",
            "mr_signer_seam",
            "mr_td",
            "mr_config_id",
            "mr_owner",
            "mr_owner_config",
        )
    )
    pinned = Attributes(
        str_tee_platform="TDX",
        hex_platform_measurement=platform.upper(),
        hex_boot_measurement=body["rtmr0"] + body["rtmr1"],
        hex_ta_measurement=body["rtmr2"] + body["rtmr3"],
        hex_secure_flags=body["td_attributes"] + body["xfam"],
        bool_debug_disabled="true",
        hex_user_data=body["report_data"][:64],
    )
    verifier = TdxVerifier.from_settings({})
    now = when(ev["verify_time"])
    await verifier.verify(report, Policy((pinned,)), now=now)
    mrtd_at = 2 * (48 + 48)
    flipped = (
        platform[:mrtd_at] + ("0" if platform[mrtd_at] != "0" else "1") + platform[mrtd_at + 1 :]
    )
    wrong = dataclasses.replace(pinned, hex_platform_measurement=flipped)
    with pytest.raises(VerificationError) as info:
        await verifier.verify(report, Policy((wrong,)), now=now)
    assert info.value.check == "policy" and "hex_platform_measurement" in info.value.detail
    xfam = dataclasses.replace(pinned, hex_secure_flags=body["td_attributes"] + "00" * 8)
    with pytest.raises(VerificationError) as info:
        await verifier.verify(report, Policy((xfam,)), now=now)
    assert "hex_secure_flags" in info.value.detail
