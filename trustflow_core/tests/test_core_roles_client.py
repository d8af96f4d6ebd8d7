"""Online client: policy building and each verification failure against a real loopback stack
(app + RA proxy + gateway from trustflow_core.demo.online)."""

from __future__ import annotations

import pytest

from trustflow_core.attestation import Attributes, Policy
from trustflow_core.demo.online import online_stack, write_app_identity
from trustflow_core.errors import InvalidInput, VerificationError
from trustflow_core.roles.client.online import OnlineClient, OnlineError
from trustflow_core.roles.client.policy import build_policy

pytestmark = pytest.mark.plugins("tee_sim", "channel_jwe")


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    return write_app_identity(tmp_path_factory.mktemp("deploy"))


def test_build_policy_adds_options_to_every_entry():
    policy = build_policy(
        {"main_attributes": [{"hex_boot_measurement": "aa"}, {"hex_boot_measurement": "bb"}]},
        platform="TDX",
        measurements=("hex_ta_measurement=0011",),
    )
    assert [e.hex_boot_measurement for e in policy.main_attributes] == ["aa", "bb"]
    assert {e.str_tee_platform for e in policy.main_attributes} == {"TDX"}
    assert {e.hex_ta_measurement for e in policy.main_attributes} == {"0011"}
    assert not policy.allow_simulation
    assert build_policy(None, allow_simulation=True) == Policy((Attributes(),), True)
    for bad in ("hex_ta_measurement", "nosuch=00", "hex_ta_measurement="):
        with pytest.raises(InvalidInput, match="--measurement must be NAME=VALUE"):
            build_policy(None, measurements=(bad,))


def test_unknown_profile_is_refused(pm):
    with pytest.raises(InvalidInput, match="profile must be one of"):
        OnlineClient("http://127.0.0.1:1", policy=Policy(), pm=pm, profile="jws")


@pytest.mark.asyncio
async def test_unreachable_gateway_is_an_online_error(pm):
    async with OnlineClient("http://127.0.0.1:9", policy=Policy(), pm=pm, timeout=5) as client:
        with pytest.raises(
            OnlineError,
            match=r"^gateway http://127\.0\.0\.1:9 is unreachable: connection refused "
            r"\(POST /RaProxy/GetRaCert\)$",
        ):
            await client.attest()


async def _attest(stack, pm, policy, **options):
    async with OnlineClient(
        stack.gateway_url,
        policy=policy,
        pm=pm,
        verifier_settings=stack.verifier_settings,
        **options,
    ) as client:
        return await client.attest()


@pytest.mark.asyncio
async def test_policy_failures_name_the_check(pm, identity, tmp_path):
    async with online_stack(tmp_path, *identity, pm=pm) as stack:
        with pytest.raises(VerificationError) as info:
            await _attest(stack, pm, Policy())
        assert info.value.check == "simulation"
        with pytest.raises(VerificationError) as info:
            await _attest(stack, pm, build_policy(None, platform="TDX", allow_simulation=True))
        assert info.value.check == "policy"
        assert "str_tee_platform: expected TDX, got SIM" in str(info.value)
        policy = build_policy(
            None, measurements=("hex_ta_measurement=00ff",), allow_simulation=True
        )
        with pytest.raises(VerificationError, match="hex_ta_measurement: expected 00ff, got "):
            await _attest(stack, pm, policy)
        attested = await _attest(
            stack, pm, build_policy(None, platform="SIM", allow_simulation=True)
        )
        assert attested.cert_pem == identity[0].read_bytes()
        assert attested.verified.attributes.str_tee_platform == "SIM"


@pytest.mark.asyncio
async def test_absent_report_needs_upstream_sim_and_allow_simulation(pm, identity, tmp_path):
    async with online_stack(tmp_path, *identity, pm=pm, upstream_sim=True) as stack:
        with pytest.raises(VerificationError, match="upstream sim mode is off") as info:
            await _attest(stack, pm, Policy(allow_simulation=True))
        assert info.value.check == "missing_report"
        with pytest.raises(VerificationError, match="does not allow simulation"):
            await _attest(stack, pm, Policy(), upstream_sim=True)
        async with OnlineClient(
            stack.gateway_url, policy=Policy(allow_simulation=True), pm=pm, upstream_sim=True
        ) as client:
            reply = await client.request("/teeapp", b"hello")
        assert reply.plaintext == b"I got your message: hello\n"
        assert client.app.verified.details == {"report": "absent"}
