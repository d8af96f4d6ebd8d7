"""TCB appraisal following Intel QVL: QE identity matching,
TDX TCB level selection with the module-identity rules, and status combination.

Inputs are the *already signature-checked* inner JSON objects. Structural problems raise
:class:`VerificationError` with check ``"tcb_info"`` or ``"qe_identity"``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from trustflow_core.errors import VerificationError

from .certs import PckInfo
from .quote import QeReport, TdBody

UP_TO_DATE = "UpToDate"
OUT_OF_DATE = "OutOfDate"
REVOKED = "Revoked"
NOT_SUPPORTED = "TcbNotSupported"
STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
    "TDRelaunchAdvised",
    "TDRelaunchAdvisedConfigurationNeeded",
    "TcbNotSupported",
)
_CONFIG = ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded")


def load_json(raw: bytes, check: str) -> dict[str, Any]:
    """Parse a JSON object (cached by exact bytes: callers must not modify the result)."""
    return _load_json(bytes(raw), check)


@lru_cache(maxsize=32)
def _load_json(raw: bytes, check: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise VerificationError(check, f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise VerificationError(check, "not a JSON object")
    return data


def _hex(value: Any, size: int, what: str, check: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != size:
        raise VerificationError(check, f"{what} must be {size} bytes of hex")
    return raw


def _int(value: Any, what: str, check: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise VerificationError(check, f"{what} must be a non-negative integer")
    return value


def _masked_equal(actual: bytes, expected: bytes, mask: bytes) -> bool:
    got = bytes(a & m for a, m in zip(actual, mask, strict=True))
    want = bytes(e & m for e, m in zip(expected, mask, strict=True))
    return hmac.compare_digest(got, want)


@dataclass(frozen=True)
class Level:
    """A matched TCB level: status, date and advisory ids."""

    status: str
    tcb_date: str
    advisory_ids: tuple[str, ...]

    @classmethod
    def parse(cls, level: Mapping[str, Any], check: str) -> Level:
        status = level.get("tcbStatus")
        if status not in STATUSES:
            raise VerificationError(check, f"unknown tcbStatus {status!r}")
        ids = level.get("advisoryIDs") or []
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise VerificationError(check, "advisoryIDs must be a list of strings")
        return cls(status, str(level.get("tcbDate", "")), tuple(ids))


def _levels(data: Mapping[str, Any], check: str) -> Sequence[Mapping[str, Any]]:
    levels = data.get("tcbLevels")
    if not isinstance(levels, list) or not all(isinstance(x, dict) for x in levels):
        raise VerificationError(check, "tcbLevels must be a list of objects")
    return levels


def _isvsvn_level(levels: Sequence[Mapping[str, Any]], isvsvn: int, check: str) -> Level | None:
    """The first level whose ``tcb.isvsvn`` is at most ``isvsvn``."""
    for level in levels:
        tcb = level.get("tcb")
        if not isinstance(tcb, dict):
            raise VerificationError(check, "tcbLevels[].tcb must be an object")
        if _int(tcb.get("isvsvn"), "tcb.isvsvn", check) <= isvsvn:
            return Level.parse(level, check)
    return None


# ---- QE identity ------------------------------------------------------------------------------


def qe_identity_level(identity: Mapping[str, Any], qe: QeReport) -> tuple[Level | None, int]:
    """Check the QE report against a TD_QE identity; return the QE's level (None: no level
    for its ISVSVN) and the identity's ``tcbEvaluationDataNumber``."""
    check = "qe_identity"
    if identity.get("id") != "TD_QE" or identity.get("version") != 2:
        raise VerificationError(check, "not a TDX QE identity (id TD_QE, version 2)")
    mrsigner = _hex(identity.get("mrsigner"), 32, "mrsigner", check)
    if not hmac.compare_digest(mrsigner, qe.mr_signer):
        raise VerificationError(check, "QE MRSIGNER is not Intel's TD_QE signer")
    if _int(identity.get("isvprodid"), "isvprodid", check) != qe.isv_prod_id:
        raise VerificationError(check, f"QE ISVPRODID {qe.isv_prod_id} is not the TD_QE's")
    misc = _hex(identity.get("miscselect"), 4, "miscselect", check)
    misc_mask = _hex(identity.get("miscselectMask"), 4, "miscselectMask", check)
    if not _masked_equal(qe.misc_select.to_bytes(4, "big"), misc, misc_mask):
        raise VerificationError(check, "QE MISCSELECT does not match the QE identity")
    attributes = _hex(identity.get("attributes"), 16, "attributes", check)
    mask = _hex(identity.get("attributesMask"), 16, "attributesMask", check)
    if not _masked_equal(qe.attributes, attributes, mask):
        raise VerificationError(check, "QE ATTRIBUTES do not match the QE identity")
    evaluation = _int(identity.get("tcbEvaluationDataNumber"), "tcbEvaluationDataNumber", check)
    return _isvsvn_level(_levels(identity, check), qe.isv_svn, check), evaluation


# ---- TDX TCB info -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TcbResult:
    """Outcome of the TCB appraisal."""

    status: str
    advisory_ids: tuple[str, ...]
    tcb_date: str
    platform_level: Level | None
    module_id: str
    module_level: Level | None
    qe_level: Level | None


def check_tcb_info_identity(info: Mapping[str, Any], pck: PckInfo) -> None:
    """id/version, and FMSPC and PCE-ID equal to the PCK certificate's (compared as bytes)."""
    check = "tcb_info"
    if info.get("id") != "TDX" or info.get("version") != 3:
        raise VerificationError(check, "not a TDX TCB info v3 (id TDX, version 3)")
    if not hmac.compare_digest(_hex(info.get("fmspc"), 6, "fmspc", check), pck.fmspc):
        raise VerificationError(
            check, f"TCB info FMSPC {info.get('fmspc')} is not the PCK's {pck.fmspc.hex()}"
        )
    if not hmac.compare_digest(_hex(info.get("pceId"), 2, "pceId", check), pck.pce_id):
        raise VerificationError(check, "TCB info PCE-ID is not the PCK certificate's")


def _components(tcb: Mapping[str, Any], key: str) -> list[int]:
    comps = tcb.get(key)
    if not isinstance(comps, list) or len(comps) != 16:
        raise VerificationError("tcb_info", f"{key} must list 16 components")
    return [
        _int(c.get("svn") if isinstance(c, dict) else None, f"{key}.svn", "tcb_info") for c in comps
    ]


def _module(info: Mapping[str, Any], body: TdBody, svn: bytes) -> tuple[str, Level | None]:
    """Check MRSIGNERSEAM / SEAMATTRIBUTES against the TDX module identity for ``svn`` and
    return its id and (for module major versions > 0) its level."""
    check = "tcb_info"
    major = svn[1]
    if major == 0:
        module_id, identity = "tdxModule(base)", info.get("tdxModule")
    else:
        module_id = f"TDX_{major:02X}"
        identities = info.get("tdxModuleIdentities") or []
        matches = [i for i in identities if isinstance(i, dict) and i.get("id") == module_id]
        if not matches:
            raise VerificationError("tdx_module", f"no TDX module identity {module_id}")
        identity = matches[0]
    if not isinstance(identity, dict):
        raise VerificationError(check, f"{module_id} is missing or not an object")
    mrsigner = _hex(identity.get("mrsigner"), 48, "tdxModule mrsigner", check)
    if not hmac.compare_digest(mrsigner, body.mr_signer_seam):
        raise VerificationError("tdx_module", f"MRSIGNERSEAM does not match {module_id}")
    attributes = _hex(identity.get("attributes"), 8, "tdxModule attributes", check)
    mask = _hex(identity.get("attributesMask"), 8, "tdxModule attributesMask", check)
    if not _masked_equal(body.seam_attributes, attributes, mask):
        raise VerificationError("tdx_module", f"SEAMATTRIBUTES do not match {module_id}")
    if major == 0:
        return module_id, None
    level = _isvsvn_level(_levels(identity, check), svn[0], check)
    if level is None:
        raise VerificationError(
            "tdx_module", f"no {module_id} TCB level for TDX module SVN {svn[0]}"
        )
    return module_id, level


def _degrade(status: str, other: str) -> str:
    """Apply a module or QE status to the platform status (QVL's order of precedence)."""
    if other == REVOKED:
        return REVOKED
    if other == OUT_OF_DATE:
        if status in (UP_TO_DATE, "SWHardeningNeeded"):
            return OUT_OF_DATE
        if status in _CONFIG:
            return "OutOfDateConfigurationNeeded"
    return status


def _platform_level(info: Mapping[str, Any], pck: PckInfo, svn: bytes) -> Level | None:
    start = 2 if svn[1] > 0 else 0
    for level in _levels(info, "tcb_info"):
        tcb = level.get("tcb")
        if not isinstance(tcb, dict):
            raise VerificationError("tcb_info", "tcbLevels[].tcb must be an object")
        sgx = _components(tcb, "sgxtcbcomponents")
        pcesvn = _int(tcb.get("pcesvn"), "pcesvn", "tcb_info")
        if (
            any(p < s for p, s in zip(pck.sgx_tcb_components, sgx, strict=True))
            or pck.pce_svn < pcesvn
        ):
            continue
        tdx = _components(tcb, "tdxtcbcomponents")
        if all(tdx[i] <= svn[i] for i in range(start, 16)):
            return Level.parse(level, "tcb_info")
    return None


def _relaunch(info: Mapping[str, Any], body: TdBody, status: str) -> str:
    """TDX 1.5 bodies: OutOfDate only because of the module, yet the module the TD would run
    after a relaunch (TEE_TCB_SVN2) meets the newest level -> TDRelaunchAdvised[...]."""
    svn2 = body.tee_tcb_svn2
    if svn2 is None or svn2[1] == 0:
        return status
    identities = info.get("tdxModuleIdentities") or []
    ident = [i for i in identities if isinstance(i, dict) and i.get("id") == f"TDX_{svn2[1]:02X}"]
    levels = ident[0].get("tcbLevels") if ident else None
    if not levels or not isinstance(levels[0], dict):
        return status
    newest = levels[0].get("tcb", {}).get("isvsvn")
    if isinstance(newest, int) and svn2[0] >= newest:
        return (
            "TDRelaunchAdvised"
            if status == OUT_OF_DATE
            else ("TDRelaunchAdvisedConfigurationNeeded")
        )
    return status


def evaluate(
    info: Mapping[str, Any], pck: PckInfo, body: TdBody, qe_level: Level | None
) -> TcbResult:
    """The combined TCB status of a TD whose PCK is ``pck`` and body ``body`` under TCB info
    ``info`` (identity already checked with :func:`check_tcb_info_identity`)."""
    svn = body.tee_tcb_svn
    module_id, module_level = _module(info, body, svn)
    platform = _platform_level(info, pck, svn)
    if platform is None:
        return TcbResult(NOT_SUPPORTED, (), "", None, module_id, module_level, qe_level)
    status, advisories, date = platform.status, list(platform.advisory_ids), platform.tcb_date
    if module_level is not None:
        platform_status = status
        status = _degrade(status, module_level.status)
        advisories += module_level.advisory_ids
        if module_level.status == OUT_OF_DATE and platform_status in (
            UP_TO_DATE,
            "SWHardeningNeeded",
            *_CONFIG,
        ):
            status = _relaunch(info, body, status)
    if qe_level is None:
        status = NOT_SUPPORTED
    else:
        status = _degrade(status, qe_level.status)
        advisories += qe_level.advisory_ids
    unique = tuple(dict.fromkeys(advisories))
    return TcbResult(status, unique, date, platform, module_id, module_level, qe_level)


def clear_caches() -> None:
    _load_json.cache_clear()
