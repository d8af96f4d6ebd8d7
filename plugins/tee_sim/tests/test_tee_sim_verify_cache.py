"""The sim verifier keeps reports whose format and signature verified, by their full text
(``verifier._verified_report``): what it must still check on every use, and that a report
differing in one byte from a cached one is verified again (and refused)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from trustflow_core.attestation import Attributes, Policy, Report
from trustflow_core.errors import VerificationError
from trustflow_core.testing.attestation import tamper_json_report

from trustflow_tee_sim import verifier as sim_verifier
from trustflow_tee_sim.attester import SimAttester
from trustflow_tee_sim.verifier import SimVerifier

USER_DATA = b"sim verifier cache test".ljust(32, b"\0")


def policy(user_data: bytes = USER_DATA) -> Policy:
    return Policy((Attributes(),), allow_simulation=True).with_user_data(user_data)


async def refused(verifier: SimVerifier, report: Report, pol: Policy | None = None, **kw) -> str:
    with pytest.raises(VerificationError) as info:
        await verifier.verify(report, pol or policy(), **kw)
    return info.value.check


@pytest.mark.asyncio
async def test_a_cached_report_with_one_byte_changed_is_verified_again_and_refused(
    attester: SimAttester, verifier: SimVerifier
) -> None:
    report = await attester.generate(USER_DATA)
    await verifier.verify(report, policy())
    hits = sim_verifier._verified_report.cache_info().hits
    await verifier.verify(report, policy())
    assert sim_verifier._verified_report.cache_info().hits == hits + 1  # served from the cache
    tampered = tamper_json_report(report)
    assert len(tampered) > 1000
    for copy in tampered:
        with pytest.raises(VerificationError):
            await verifier.verify(copy, policy())
    await verifier.verify(report, policy())  # the original still verifies


@pytest.mark.asyncio
async def test_trust_time_and_binding_are_checked_on_every_use(
    attester: SimAttester, verifier: SimVerifier
) -> None:
    report = await attester.generate(USER_DATA)
    await verifier.verify(report, policy())  # cached now
    other = ec.generate_private_key(ec.SECP256R1())
    pem = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    distrusting = SimVerifier.from_settings({"trusted_platform_keys": [pem.decode()]})
    assert await refused(distrusting, report) == "platform_key"
    short = SimVerifier.from_settings({"max_age_seconds": 60})
    later = datetime.now(timezone.utc) + timedelta(seconds=120)
    assert await refused(short, report, now=later) == "timestamp"
    earlier = datetime.now(timezone.utc) - timedelta(hours=1)
    assert await refused(verifier, report, now=earlier) == "timestamp"
    assert await refused(verifier, report, policy(b"another request".ljust(32, b"\0")))


@pytest.mark.asyncio
async def test_the_trusted_keys_der_follows_a_changed_key_list(
    attester: SimAttester, verifier: SimVerifier
) -> None:
    """The verifier keeps the DER of its trusted keys only for the same key objects: a
    verifier whose trusted keys are replaced refuses a report of the key it trusted before,
    and accepts it again once that key is trusted again."""
    report = await attester.generate(USER_DATA)
    trusted = verifier._trusted()
    trusting = SimVerifier(list(trusted))
    await trusting.verify(report, policy())  # the DER of the trusted key is kept now
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    trusting.trusted_keys = [other]
    assert await refused(trusting, report) == "platform_key"
    trusting.trusted_keys = [other, *trusted]
    await trusting.verify(report, policy())
