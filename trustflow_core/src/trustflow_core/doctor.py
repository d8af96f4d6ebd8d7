"""``trustflow attest doctor``: can this host produce evidence a verifier accepts?

:func:`run_doctor` takes the attester's own diagnosis (:meth:`Attester.diagnose`), then, unless
it found a blocker, generates a report binding fresh user data with the attester built from the
operator's settings, verifies it locally with the platform's verifier (collateral or
certificate chain from the report or fetched as the verifier settings say) and states a
verdict. Every step is a :class:`~trustflow_core.attestation.Diagnostic`; nothing raises for
host problems.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .attestation import PASSPORT, Attester, Diagnostic, Policy, Report, Verifier
from .errors import TrustflowError, VerificationError

READY = "ready"
NOT_READY = "not ready"


@dataclass
class DoctorResult:
    """The checks in order, the generated report (if any) and the verdict."""

    platform: str
    checks: list[Diagnostic] = field(default_factory=list)
    report: Report | None = None
    verdict: str = NOT_READY
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for ``--json``."""
        return {
            "platform": self.platform,
            "verdict": self.verdict,
            "checks": [
                {"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks
            ],
            "report_type": self.report.str_report_type if self.report is not None else None,
            "details": dict(self.details),
        }


async def run_doctor(
    attester_cls: type[Attester],
    verifier_cls: type[Verifier],
    *,
    settings: Mapping[str, Any],
    verifier_settings: Mapping[str, Any],
    report_type: str = PASSPORT,
    user_data: bytes | None = None,
    now: datetime | None = None,
    make_attester: Callable[[Mapping[str, Any]], Attester] | None = None,
    checks: list[Diagnostic] | None = None,
) -> DoctorResult:
    """Diagnose, generate, verify; see the module docstring.

    ``user_data`` (default 32 random bytes) is what the report must bind; ``now`` the
    verification time (default the current time). ``make_attester`` (default
    ``attester_cls.from_settings``) and ``checks`` (default ``attester_cls.diagnose(settings)``)
    are seams for tests running against faked kernel interfaces.
    """
    result = DoctorResult(platform=attester_cls.platform)
    result.checks.extend(checks if checks is not None else attester_cls.diagnose(settings))
    blockers = [c for c in result.checks if c.status == "fail"]
    if blockers:
        result.checks.append(
            Diagnostic("generate", "fail", f"not tried: {blockers[0].name}: {blockers[0].detail}")
        )
        return result
    binding = os.urandom(32) if user_data is None else user_data
    build = make_attester or attester_cls.from_settings
    try:
        async with build(settings) as attester:
            report = await attester.generate(binding, report_type=report_type)
            how = attester.generation_detail()
    except TrustflowError as exc:
        result.checks.append(Diagnostic("generate", "fail", str(exc)))
        return result
    result.report = report
    note = "" if report.str_report_type == report_type else " (fallback: no endorsements)"
    how = f" {how}" if how else ""
    result.checks.append(
        Diagnostic("generate", "ok", f"{report.str_report_type} report{note}{how}")
    )
    policy = Policy((verifier_cls.acceptance_entry(),)).with_user_data(binding)
    if attester_cls.simulated:  # say so, but let the doctor check the plumbing
        policy = Policy(policy.main_attributes, allow_simulation=True)
        result.checks.append(
            Diagnostic("simulated", "warn", "simulated evidence: it proves nothing about a TEE")
        )
    try:
        async with verifier_cls.from_settings(verifier_settings) as verifier:
            verified = await verifier.verify(report, policy, now=now)
    except VerificationError as exc:
        result.checks.append(Diagnostic("verify", "fail", f"check {exc.check!r}: {exc.detail}"))
        return result
    except TrustflowError as exc:
        result.checks.append(Diagnostic("verify", "fail", str(exc)))
        return result
    result.details = dict(verified.details)
    result.checks.append(Diagnostic("verify", "ok", "the local verifier accepts the report"))
    result.verdict = READY
    return result
