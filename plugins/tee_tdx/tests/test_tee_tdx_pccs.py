"""Collateral from a PCCS: a loopback aiohttp server serving the test collateral the way PCS
does (response bodies + URL-encoded issuer-chain headers); caching by FMSPC until nextUpdate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from conftest import collateral_from_files, evaluations, read, when
from tee_tdx_fakes import FakePccs, serve_pccs
from trustflow_core.attestation import Attributes, Policy
from trustflow_core.errors import VerificationError

from trustflow_tee_tdx import certs
from trustflow_tee_tdx.pccs import PccsClient, expiry
from trustflow_tee_tdx.report import make_report
from trustflow_tee_tdx.verifier import TdxVerifier

GOOD = "tdx/dcap-qvl/tdx_quote"


def _good() -> dict:
    return next(
        ev for n, _, ev in evaluations() if n == GOOD and ev["expected_status"] == "UpToDate"
    )


@pytest_asyncio.fixture
async def pccs() -> AsyncIterator[tuple[FakePccs, str]]:
    fake = FakePccs(collateral_from_files(_good()["collateral"]["files"]))
    async with serve_pccs(fake) as url:
        yield fake, url


def _der(crl: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return certs.load_crl(crl, "crl").public_bytes(Encoding.DER)


POLICY = Policy((Attributes(str_tee_platform="TDX"),))


@pytest.mark.asyncio
async def test_verifier_fetches_collateral_and_caches_it(pccs) -> None:
    fake, url = pccs
    report = make_report(read(GOOD), None)
    now = when(_good()["verify_time"])
    async with TdxVerifier.from_settings({"pccs_url": url}) as verifier:
        verified = await verifier.verify(report, POLICY, now=now)
        assert verified.details["tcb_status"] == "UpToDate"
        assert verified.details["revocation"] == "checked"
        assert len(fake.paths) == 4
        assert any(p.endswith(f"fmspc={fake.fmspc().upper()}") for p in fake.paths)
        await verifier.verify(report, POLICY, now=now + timedelta(days=1))
        assert len(fake.paths) == 4, "cached collateral was fetched again"


@pytest.mark.asyncio
async def test_cache_expires_at_next_update(pccs) -> None:
    fake, url = pccs
    client = PccsClient(url, timeout=5)
    try:
        fmspc = bytes.fromhex(fake.fmspc())
        now = when(_good()["verify_time"])
        first = await client.collateral(fmspc, "platform", now)
        ends = expiry(first)
        assert ends is not None and ends > now
        await client.collateral(fmspc, "platform", ends - timedelta(seconds=1))
        assert client.requests == 4
        await client.collateral(fmspc, "platform", ends)
        assert client.requests == 8
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_pccs_collateral_equals_the_bundle(pccs) -> None:
    fake, url = pccs
    client = PccsClient(url)
    try:
        got = await client.collateral(bytes.fromhex(fake.fmspc()), "platform", when("2025-07-01"))
    finally:
        await client.aclose()
    assert got.tcb_info == fake.c.tcb_info
    assert got.qe_identity_signature == fake.c.qe_identity_signature
    assert got.tcb_info_issuer_chain == fake.c.tcb_info_issuer_chain
    assert _der(got.pck_crl) == _der(fake.c.pck_crl)


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [404, 500, 503])
async def test_pccs_errors_reject_with_collateral_check(pccs, status: int) -> None:
    fake, url = pccs
    fake.fail_with = status
    async with TdxVerifier.from_settings({"pccs_url": url}) as verifier:
        with pytest.raises(VerificationError) as info:
            await verifier.verify(make_report(read(GOOD), None), POLICY, now=when("2025-07-01"))
    assert info.value.check == "collateral" and str(status) in info.value.detail


@pytest.mark.asyncio
async def test_pccs_timeout_rejects_quickly(pccs) -> None:
    fake, url = pccs
    fake.stall = 5
    settings = {"pccs_url": url, "pccs_timeout_seconds": 0.2}
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with TdxVerifier.from_settings(settings) as verifier:
        with pytest.raises(VerificationError) as info:
            await verifier.verify(make_report(read(GOOD), None), POLICY, now=when("2025-07-01"))
    assert info.value.check == "collateral"
    assert loop.time() - start < 3


@pytest.mark.asyncio
async def test_unknown_platform_gets_no_collateral(pccs) -> None:
    """A quote of another FMSPC: the PCCS answers 404, verification fails closed."""
    _, url = pccs
    report = make_report(read("tdx/trustee/tdx_quote_5.dat"), None)
    async with TdxVerifier.from_settings({"pccs_url": url}) as verifier:
        with pytest.raises(VerificationError) as info:
            await verifier.verify(report, POLICY, now=when("2026-03-01"))
    assert info.value.check == "collateral"


@pytest.mark.asyncio
async def test_report_collateral_wins_over_pccs(pccs) -> None:
    fake, url = pccs
    collateral = collateral_from_files(_good()["collateral"]["files"])
    report = make_report(read(GOOD), collateral)
    async with TdxVerifier.from_settings({"pccs_url": url}) as verifier:
        await verifier.verify(report, POLICY, now=when(_good()["verify_time"]))
    assert fake.paths == []


@pytest.mark.asyncio
async def test_malformed_pccs_answers_are_rejected(pccs) -> None:
    fake, url = pccs
    fake.garbage = True
    async with TdxVerifier.from_settings({"pccs_url": url}) as verifier:
        with pytest.raises(VerificationError) as info:
            await verifier.verify(make_report(read(GOOD), None), POLICY, now=when("2025-07-01"))
    assert info.value.check == "collateral"
