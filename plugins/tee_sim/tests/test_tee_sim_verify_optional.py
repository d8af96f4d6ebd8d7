"""``trustflow_core.attestation.verify_optional``: the upstream "no report" sim convention."""

from __future__ import annotations

import pytest
from trustflow_core.attestation import Attributes, Policy, verify_optional
from trustflow_core.errors import BackendNotFound, VerificationError
from trustflow_core.manager import get_plugin_manager
from trustflow_core.registry import verifier_for_platform

USER_DATA = b"\x07" * 32


def lookup(platform: str):
    return verifier_for_platform(get_plugin_manager(), platform).from_settings({})


def policy(allow_simulation: bool) -> Policy:
    return Policy((Attributes(),), allow_simulation).with_user_data(USER_DATA)


@pytest.mark.asyncio
async def test_absent_report_is_accepted_only_in_upstream_sim_with_allow_simulation():
    verified = await verify_optional(None, policy(True), lookup, upstream_sim=True)
    assert verified.simulated
    assert verified.attributes == Attributes()
    assert verified.user_data == b""
    assert verified.details == {"report": "absent"}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("upstream_sim", "allow_simulation", "message"),
    [(True, False, "does not allow simulation"), (False, True, "upstream sim mode is off")],
)
async def test_absent_report_is_rejected_otherwise(upstream_sim, allow_simulation, message):
    with pytest.raises(VerificationError, match=message) as info:
        await verify_optional(None, policy(allow_simulation), lookup, upstream_sim=upstream_sim)
    assert info.value.check == "missing_report"


@pytest.mark.asyncio
@pytest.mark.parametrize("upstream_sim", [True, False])
async def test_a_present_report_is_always_verified(attester, upstream_sim):
    report = await attester.generate(USER_DATA)
    verified = await verify_optional(report, policy(True), lookup, upstream_sim=upstream_sim)
    assert verified.user_data == USER_DATA
    wrong = Policy((Attributes(),), True).with_user_data(b"\x08" * 32)
    with pytest.raises(VerificationError) as info:
        await verify_optional(report, wrong, lookup, upstream_sim=upstream_sim)
    assert info.value.check == "policy"
    with pytest.raises(VerificationError) as info:
        await verify_optional(report, policy(False), lookup, upstream_sim=upstream_sim)
    assert info.value.check == "simulation"


@pytest.mark.asyncio
async def test_lookup_errors_propagate(attester):
    import dataclasses

    report = dataclasses.replace(await attester.generate(USER_DATA), str_tee_platform="NOPE")
    with pytest.raises(BackendNotFound, match="NOPE"):
        await verify_optional(report, policy(True), lookup, upstream_sim=True)
