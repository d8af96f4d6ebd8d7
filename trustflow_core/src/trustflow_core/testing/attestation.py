"""Conformance kits for :class:`~trustflow_core.attestation.Attester` and
:class:`~trustflow_core.attestation.Verifier` backends.

Subclass a kit in a class whose name starts with ``Test`` and override the abstract fixtures
(they raise ``NotImplementedError``). Async fixtures must use ``pytest_asyncio.fixture``
(pytest-asyncio runs in strict mode)::

    class TestSimVerifierConformance(VerifierConformance):
        @pytest.fixture
        def verifier(self):
            return SimVerifier.from_settings({})

        @pytest.fixture
        def good_report_user_data(self):
            return b"conformance"

        @pytest_asyncio.fixture
        async def good_report(self, good_report_user_data):
            return await SimAttester.from_settings({}).generate(good_report_user_data)

Optional fixtures have strict defaults; override them to describe the backend:

* ``policy_for(user_data) -> Policy`` -- a policy ``good_report`` satisfies when given its user
  data (default: platform + user data, ``allow_simulation`` = ``verifier.simulated``);
* ``verify_time`` -- the ``now`` passed to ``verify`` (default None: the current time; golden
  quotes with dated collateral set it);
* ``tamper(report) -> list[Report]`` -- tampered copies of ``good_report``, every one of which
  must be rejected (default :func:`tamper_json_report`: every byte of ``json_report`` flipped;
  hardware plugins flip every byte of the decoded quote instead, e.g. with :func:`flipped`);
* ``other_platform_report`` -- a report of another platform (default: ``good_report``
  relabelled);
* ``expected_attributes`` -- attribute values ``good_report`` must yield (default ``{}``);
* ``exposes_debug_flag`` -- whether ``bool_debug_disabled`` is always ``"true"``/``"false"``
  (default True);
* ``supported_report_types`` (attesters) -- default both ``Passport`` and ``BackgroundCheck``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import datetime

import pytest

from ..attestation import (
    BACKGROUND_CHECK,
    MAX_USER_DATA,
    PASSPORT,
    REPORT_TYPES,
    Attester,
    Attributes,
    Policy,
    Report,
    VerifiedReport,
    Verifier,
)
from ..errors import InvalidInput, VerificationError

__all__ = ["AttesterConformance", "VerifierConformance", "flipped", "tamper_json_report"]

MEASUREMENT_FIELDS = (
    "hex_platform_measurement",
    "hex_boot_measurement",
    "hex_ta_measurement",
    "hex_ta_dyn_measurement",
    "hex_signer",
    "hex_prod_id",
)


def padded(user_data: bytes) -> bytes:
    """``user_data`` as a verifier exposes it: left-aligned in 32 zero bytes."""
    return user_data.ljust(MAX_USER_DATA, b"\0")


def flipped(data: bytes, masks: tuple[int, ...] = (0x01,)) -> Iterator[bytes]:
    """Copies of ``data`` with exactly one byte XOR-ed with one of ``masks``, for every byte
    position and mask."""
    for i in range(len(data)):
        for mask in masks:
            yield data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :]


def tamper_json_report(report: Report, masks: tuple[int, ...] = (0x01, 0x20)) -> list[Report]:
    """Copies of ``report`` whose ``json_report`` differs in one byte (each position, each
    mask); copies that are not valid UTF-8 are left out."""
    result = []
    for data in flipped(report.json_report.encode(), masks):
        try:
            text = data.decode()
        except UnicodeDecodeError:
            continue
        result.append(dataclasses.replace(report, json_report=text))
    return result


async def _rejection(
    verifier: Verifier, report: Report, policy: Policy, now: datetime | None
) -> VerificationError | None:
    try:
        await verifier.verify(report, policy, now=now)
    except VerificationError as exc:
        return exc
    return None


class AttesterConformance:
    """Generic tests of an :class:`Attester`. Abstract fixture: ``attester`` (an instance)."""

    @pytest.fixture
    def attester(self) -> Attester:
        raise NotImplementedError("override the 'attester' fixture")

    @pytest.fixture
    def supported_report_types(self) -> tuple[str, ...]:
        return REPORT_TYPES

    def test_attester_declares_name_and_platform(self, attester: Attester) -> None:
        cls = type(attester)
        assert cls.kind == "attester"
        assert isinstance(cls.name, str) and cls.name
        assert isinstance(cls.platform, str) and cls.platform

    @pytest.mark.asyncio
    @pytest.mark.parametrize("report_type", REPORT_TYPES)
    async def test_report_names_platform_version_and_type(
        self, attester: Attester, supported_report_types: tuple[str, ...], report_type: str
    ) -> None:
        if report_type not in supported_report_types:
            pytest.skip(f"{type(attester).__name__} does not produce {report_type} reports")
        report = await attester.generate(b"\x01" * 32, report_type=report_type)
        assert isinstance(report, Report)
        assert report.str_tee_platform == type(attester).platform
        assert report.str_report_version == "1.0"
        assert report.str_report_type == report_type
        assert report.json_report

    @pytest.mark.asyncio
    async def test_report_round_trips_through_wire_json(self, attester: Attester) -> None:
        report = await attester.generate(b"round trip")
        assert Report.from_dict(report.to_dict()) == report
        assert report.str_report_type == PASSPORT

    @pytest.mark.asyncio
    @pytest.mark.parametrize("size", [0, 1, MAX_USER_DATA])
    async def test_accepts_user_data_up_to_32_bytes(self, attester: Attester, size: int) -> None:
        report = await attester.generate(bytes(range(1, size + 1)))
        assert report.str_tee_platform == type(attester).platform

    @pytest.mark.asyncio
    async def test_reports_for_different_user_data_differ(self, attester: Attester) -> None:
        first = await attester.generate(b"\x01" * 32)
        second = await attester.generate(b"\x02" * 32)
        assert first.json_report != second.json_report

    @pytest.mark.asyncio
    async def test_rejects_user_data_longer_than_32_bytes(self, attester: Attester) -> None:
        with pytest.raises(InvalidInput, match="user_data"):
            await attester.generate(b"\x01" * (MAX_USER_DATA + 1))

    @pytest.mark.asyncio
    @pytest.mark.parametrize("report_type", ["", "passport", "Unknown", BACKGROUND_CHECK + " "])
    async def test_rejects_unknown_report_type(self, attester: Attester, report_type: str) -> None:
        with pytest.raises(InvalidInput, match="report_type"):
            await attester.generate(b"x", report_type=report_type)


class VerifierConformance:
    """Generic tests of a :class:`Verifier`. Abstract fixtures: ``verifier`` (an instance),
    ``good_report`` (a genuine report it must accept) and ``good_report_user_data`` (the user
    data that report binds, at most 32 bytes)."""

    # ---- abstract fixtures ---------------------------------------------------------------

    @pytest.fixture
    def verifier(self) -> Verifier:
        raise NotImplementedError("override the 'verifier' fixture")

    @pytest.fixture
    def good_report(self) -> Report:
        raise NotImplementedError("override the 'good_report' fixture")

    @pytest.fixture
    def good_report_user_data(self) -> bytes:
        raise NotImplementedError("override the 'good_report_user_data' fixture")

    # ---- fixtures with strict defaults ---------------------------------------------------

    @pytest.fixture
    def policy_for(self, verifier: Verifier) -> Callable[[bytes], Policy]:
        def policy_for(user_data: bytes) -> Policy:
            entry = Attributes(str_tee_platform=type(verifier).platform)
            return Policy((entry,), type(verifier).simulated).with_user_data(padded(user_data))

        return policy_for

    @pytest.fixture
    def verify_time(self) -> datetime | None:
        return None

    @pytest.fixture
    def tamper(self) -> Callable[[Report], list[Report]]:
        return tamper_json_report

    @pytest.fixture
    def other_platform_report(self, verifier: Verifier, good_report: Report) -> Report:
        other = "NOT-" + type(verifier).platform
        return dataclasses.replace(good_report, str_tee_platform=other)

    @pytest.fixture
    def expected_attributes(self) -> Mapping[str, str]:
        return {}

    @pytest.fixture
    def exposes_debug_flag(self) -> bool:
        return True

    @pytest.fixture
    def verify_good(
        self,
        verifier: Verifier,
        good_report: Report,
        good_report_user_data: bytes,
        policy_for: Callable[[bytes], Policy],
        verify_time: datetime | None,
    ) -> Callable[[], Awaitable[VerifiedReport]]:
        """Verify ``good_report`` with its matching policy."""

        def verify_good() -> Awaitable[VerifiedReport]:
            return verifier.verify(good_report, policy_for(good_report_user_data), now=verify_time)

        return verify_good

    # ---- tests ---------------------------------------------------------------------------

    def test_verifier_declares_name_and_platform(self, verifier: Verifier) -> None:
        cls = type(verifier)
        assert cls.kind == "verifier"
        assert isinstance(cls.name, str) and cls.name
        assert isinstance(cls.platform, str) and cls.platform

    @pytest.mark.asyncio
    async def test_good_report_verifies(
        self,
        verifier: Verifier,
        verify_good: Callable[[], Awaitable[VerifiedReport]],
        good_report_user_data: bytes,
        expected_attributes: Mapping[str, str],
    ) -> None:
        verified = await verify_good()
        assert isinstance(verified, VerifiedReport)
        assert verified.simulated == type(verifier).simulated
        attributes = verified.attributes
        assert attributes.str_tee_platform == type(verifier).platform
        assert attributes.hex_user_data.lower() == padded(good_report_user_data).hex()
        assert verified.user_data == padded(good_report_user_data)
        for name, value in expected_attributes.items():
            assert getattr(attributes, name).lower() == value.lower(), name

    @pytest.mark.asyncio
    async def test_debug_flag_is_exposed(
        self,
        verify_good: Callable[[], Awaitable[VerifiedReport]],
        exposes_debug_flag: bool,
    ) -> None:
        if not exposes_debug_flag:
            pytest.skip("this platform does not report a debug flag")
        assert (await verify_good()).attributes.bool_debug_disabled in ("true", "false")

    @pytest.mark.asyncio
    async def test_wrong_user_data_is_rejected(
        self,
        verifier: Verifier,
        good_report: Report,
        good_report_user_data: bytes,
        policy_for: Callable[[bytes], Policy],
        verify_time: datetime | None,
    ) -> None:
        wrong = bytes(b ^ 0xFF for b in padded(good_report_user_data))
        with pytest.raises(VerificationError) as info:
            await verifier.verify(good_report, policy_for(wrong), now=verify_time)
        assert info.value.check == "policy"

    @pytest.mark.asyncio
    async def test_measurement_mismatch_is_rejected(
        self,
        verifier: Verifier,
        good_report: Report,
        good_report_user_data: bytes,
        policy_for: Callable[[bytes], Policy],
        verify_time: datetime | None,
        verify_good: Callable[[], Awaitable[VerifiedReport]],
    ) -> None:
        attributes = (await verify_good()).attributes
        present = [name for name in MEASUREMENT_FIELDS if getattr(attributes, name)]
        if not present:
            pytest.skip("the verifier exposes no measurement")
        base = policy_for(good_report_user_data)
        for name in present:
            value = getattr(attributes, name)
            other = "0" * len(value) if value.strip("0") else "1" * len(value)
            entries = tuple(dataclasses.replace(e, **{name: other}) for e in base.main_attributes)
            with pytest.raises(VerificationError) as info:
                await verifier.verify(
                    good_report, Policy(entries, base.allow_simulation), now=verify_time
                )
            assert info.value.check == "policy", name
            assert name in info.value.detail

    @pytest.mark.asyncio
    async def test_report_for_another_platform_is_rejected(
        self,
        verifier: Verifier,
        other_platform_report: Report,
        good_report_user_data: bytes,
        policy_for: Callable[[bytes], Policy],
        verify_time: datetime | None,
    ) -> None:
        assert other_platform_report.str_tee_platform != type(verifier).platform
        policy = policy_for(good_report_user_data)
        with pytest.raises(VerificationError) as info:
            await verifier.verify(other_platform_report, policy, now=verify_time)
        assert info.value.check == "platform"

    @pytest.mark.asyncio
    async def test_tampered_reports_are_rejected(
        self,
        verifier: Verifier,
        good_report: Report,
        good_report_user_data: bytes,
        policy_for: Callable[[bytes], Policy],
        verify_time: datetime | None,
        tamper: Callable[[Report], list[Report]],
        verify_good: Callable[[], Awaitable[VerifiedReport]],
    ) -> None:
        await verify_good()  # the untampered report passes
        tampered = tamper(good_report)
        assert tampered, "the tamper fixture produced no reports"
        policy = policy_for(good_report_user_data)
        accepted = []
        for i, report in enumerate(tampered):
            assert report != good_report
            if await _rejection(verifier, report, policy, verify_time) is None:
                accepted.append(i)
        assert not accepted, f"tampered reports accepted: {accepted[:20]} of {len(tampered)}"

    @pytest.mark.asyncio
    async def test_simulation_rule(
        self,
        verifier: Verifier,
        good_report: Report,
        good_report_user_data: bytes,
        policy_for: Callable[[bytes], Policy],
        verify_time: datetime | None,
    ) -> None:
        strict = dataclasses.replace(policy_for(good_report_user_data), allow_simulation=False)
        if type(verifier).simulated:
            with pytest.raises(VerificationError) as info:
                await verifier.verify(good_report, strict, now=verify_time)
            assert info.value.check == "simulation"
        else:
            assert not (await verifier.verify(good_report, strict, now=verify_time)).simulated

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("change", "check"),
        [
            ({"str_report_version": "2.0"}, "report_version"),
            ({"str_report_type": "Unknown"}, "report_type"),
        ],
    )
    async def test_report_envelope_is_checked(
        self,
        verifier: Verifier,
        good_report: Report,
        good_report_user_data: bytes,
        policy_for: Callable[[bytes], Policy],
        verify_time: datetime | None,
        change: dict[str, str],
        check: str,
    ) -> None:
        report = dataclasses.replace(good_report, **change)
        with pytest.raises(VerificationError) as info:
            await verifier.verify(report, policy_for(good_report_user_data), now=verify_time)
        assert info.value.check == check

    @pytest.mark.asyncio
    async def test_empty_policy_is_rejected(
        self, verifier: Verifier, good_report: Report, verify_time: datetime | None
    ) -> None:
        with pytest.raises(VerificationError) as info:
            await verifier.verify(good_report, Policy(allow_simulation=True), now=verify_time)
        assert info.value.check == "policy"

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "json_report", ["", "not json", "null", "[]", "{}", '{"b64_quote":1}', '"x"']
    )
    async def test_malformed_json_report_is_a_verification_error(
        self,
        verifier: Verifier,
        good_report: Report,
        good_report_user_data: bytes,
        policy_for: Callable[[bytes], Policy],
        verify_time: datetime | None,
        json_report: str,
    ) -> None:
        report = dataclasses.replace(good_report, json_report=json_report)
        with pytest.raises(VerificationError):
            await verifier.verify(report, policy_for(good_report_user_data), now=verify_time)
