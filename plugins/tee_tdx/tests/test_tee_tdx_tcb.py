"""TCB level selection and status combination (QVL rules) on a real TDX TCB info, with
synthetic platform / module / QE inputs for the cases the bundled quotes do not reach."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from conftest import read
from trustflow_core.errors import VerificationError

from trustflow_tee_tdx.certs import PckInfo
from trustflow_tee_tdx.collateral import Collateral
from trustflow_tee_tdx.quote import parse_quote
from trustflow_tee_tdx.tcb import Level, evaluate, load_json

INFO_FILE = "tdx/go-tdx-guest/sample_tcbinfo_response_v5"  # levels: UpToDate, OutOfDate x2


@pytest.fixture
def info() -> dict:
    body = Collateral.from_pcs(tcb_info_response=read(INFO_FILE)).tcb_info
    assert body is not None
    return copy.deepcopy(load_json(body, "tcb_info"))


def _level_svns(info: dict, index: int) -> tuple[list[int], int, list[int]]:
    tcb = info["tcbLevels"][index]["tcb"]
    return (
        [c["svn"] for c in tcb["sgxtcbcomponents"]],
        tcb["pcesvn"],
        [c["svn"] for c in tcb["tdxtcbcomponents"]],
    )


def _module_levels(info: dict, module_id: str) -> list[dict]:
    return next(m for m in info["tdxModuleIdentities"] if m["id"] == module_id)["tcbLevels"]


def _pck(info: dict, index: int = 0, pcesvn_delta: int = 0) -> PckInfo:
    sgx, pcesvn, _ = _level_svns(info, index)
    fmspc = bytes.fromhex(info["fmspc"])
    return PckInfo(
        fmspc, bytes.fromhex(info["pceId"]), pcesvn + pcesvn_delta, tuple(sgx), bytes(16)
    )


def _body(info: dict, *, major: int, module_svn: int, svn2: bytes | None = None, index: int = 0):
    """The trustee v5 quote's body with TEE_TCB_SVN meeting level ``index``."""
    body = parse_quote(read("tdx/trustee/tdx_quote_5.dat")).body
    _, _, tdx = _level_svns(info, index)
    svn = bytes([module_svn, major, *tdx[2:]])
    return dataclasses.replace(body, tee_tcb_svn=svn, tee_tcb_svn2=svn2)


UP = Level("UpToDate", "2024-11-13T00:00:00Z", ())


def _newest(info: dict, module_id: str) -> int:
    return _module_levels(info, module_id)[0]["tcb"]["isvsvn"]


def test_up_to_date(info) -> None:
    svn = _newest(info, "TDX_01")
    result = evaluate(info, _pck(info), _body(info, major=1, module_svn=svn), UP)
    assert result.status == "UpToDate" and result.module_id == "TDX_01"
    assert result.platform_level is not None
    assert result.platform_level.tcb_date == info["tcbLevels"][0]["tcbDate"]


def test_out_of_date_module_degrades_and_adds_advisories(info) -> None:
    old = _module_levels(info, "TDX_01")[1]
    body = _body(info, major=1, module_svn=old["tcb"]["isvsvn"])
    result = evaluate(info, _pck(info), body, UP)
    assert result.status == "OutOfDate"
    assert set(old["advisoryIDs"]) <= set(result.advisory_ids)


def test_td_relaunch_advised_for_tdx15_bodies(info) -> None:
    old = _module_levels(info, "TDX_01")[1]["tcb"]["isvsvn"]
    newest = _newest(info, "TDX_01")
    body = _body(info, major=1, module_svn=old, svn2=bytes([newest, 1]) + bytes(14))
    assert evaluate(info, _pck(info), body, UP).status == "TDRelaunchAdvised"
    info["tcbLevels"][0]["tcbStatus"] = "ConfigurationNeeded"
    assert evaluate(info, _pck(info), body, UP).status == "TDRelaunchAdvisedConfigurationNeeded"
    stale = _body(info, major=1, module_svn=old, svn2=bytes([old, 1]) + bytes(14))
    assert evaluate(info, _pck(info), stale, UP).status == "OutOfDateConfigurationNeeded"


@pytest.mark.parametrize(
    ("platform", "other", "expected"),
    [
        ("UpToDate", "OutOfDate", "OutOfDate"),
        ("SWHardeningNeeded", "OutOfDate", "OutOfDate"),
        ("ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("UpToDate", "Revoked", "Revoked"),
        ("OutOfDate", "UpToDate", "OutOfDate"),
    ],
)
def test_qe_status_combination(info, platform: str, other: str, expected: str) -> None:
    info["tcbLevels"][0]["tcbStatus"] = platform
    body = _body(info, major=1, module_svn=_newest(info, "TDX_01"))
    qe = Level(other, "2024-01-01T00:00:00Z", ("INTEL-SA-QE",))
    result = evaluate(info, _pck(info), body, qe)
    assert result.status == expected
    assert "INTEL-SA-QE" in result.advisory_ids


def test_no_qe_level_is_not_supported(info) -> None:
    body = _body(info, major=1, module_svn=_newest(info, "TDX_01"))
    assert evaluate(info, _pck(info), body, None).status == "TcbNotSupported"


def test_pcesvn_below_first_level_selects_the_next(info) -> None:
    body = _body(info, major=1, module_svn=_newest(info, "TDX_01"), index=1)
    result = evaluate(info, _pck(info, 1, pcesvn_delta=0), body, UP)
    assert result.platform_level is not None
    assert result.platform_level.status == info["tcbLevels"][1]["tcbStatus"]
    below_all = _pck(info, 0, pcesvn_delta=-100)
    assert evaluate(info, below_all, body, UP).status == "TcbNotSupported"


def test_tdx_components_0_and_1_skipped_only_with_module_major(info) -> None:
    for level in info["tcbLevels"]:
        level["tcb"]["tdxtcbcomponents"][0]["svn"] = 99
    newest = _newest(info, "TDX_01")
    assert evaluate(info, _pck(info), _body(info, major=1, module_svn=newest), UP).status == (
        "UpToDate"
    )
    base = _body(info, major=0, module_svn=newest)
    assert evaluate(info, _pck(info), base, UP).status == "TcbNotSupported"


@pytest.mark.parametrize(
    ("major", "module_svn", "mutate", "message"),
    [
        (2, 6, None, "no TDX module identity TDX_02"),
        (1, 1, None, "no TDX_01 TCB level"),
        (1, 6, "mrsigner", "MRSIGNERSEAM"),
        (1, 6, "attributes", "SEAMATTRIBUTES"),
    ],
)
def test_module_identity_rules(info, major, module_svn, mutate, message) -> None:
    body = _body(info, major=major, module_svn=module_svn)
    if mutate == "mrsigner":
        body = dataclasses.replace(body, mr_signer_seam=b"\x01" + bytes(47))
    if mutate == "attributes":
        body = dataclasses.replace(body, seam_attributes=b"\x01" + bytes(7))
    with pytest.raises(VerificationError, match=message) as info_:
        evaluate(info, _pck(info), body, UP)
    assert info_.value.check == "tdx_module"


def test_malformed_levels_are_tcb_info_errors(info) -> None:
    info["tcbLevels"][0]["tcbStatus"] = "Great"
    body = _body(info, major=1, module_svn=_newest(info, "TDX_01"))
    with pytest.raises(VerificationError) as info_:
        evaluate(info, _pck(info), body, UP)
    assert info_.value.check == "tcb_info"
