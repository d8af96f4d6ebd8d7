"""Attestation contract: reports, attributes, policies, attesters and verifiers.

The values mirror the upstream ``secretflowapis.v2.sdc`` UAL messages
(``UnifiedAttestationReport``, ``UnifiedAttestationAttributes``,
``UnifiedAttestationPolicy``) as plain frozen dataclasses, so plugins never
import generated protobuf code. JSON produced by :meth:`Report.to_dict` and
friends uses the wire field names.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, ClassVar

from .backend import Backend
from .errors import InvalidInput, VerificationError

REPORT_VERSION = "1.0"
PASSPORT = "Passport"
BACKGROUND_CHECK = "BackgroundCheck"
REPORT_TYPES = (PASSPORT, BACKGROUND_CHECK)
#: Largest user data an attester binds into a report (bytes 0..31 of the 64-byte report data).
MAX_USER_DATA = 32


def _strict_fields(cls: type, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{what} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInput(f"{what} has unknown field(s) {unknown}")
    return {k: v for k, v in data.items() if v is not None}


@dataclass(frozen=True)
class Report:
    """A ``UnifiedAttestationReport``: platform name plus platform-specific JSON evidence."""

    str_tee_platform: str
    json_report: str
    str_report_version: str = REPORT_VERSION
    str_report_type: str = PASSPORT
    json_nested_reports: str = ""

    def to_dict(self) -> dict[str, str]:
        """Wire JSON (protobuf field names), empty strings omitted as protobuf printers do."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """Parse wire JSON; unknown keys and non-string values raise :class:`InvalidInput`."""
        values = _strict_fields(cls, data, "attestation report")
        for key, value in values.items():
            if not isinstance(value, str):
                raise InvalidInput(f"attestation report field {key!r} must be a string")
        if not values.get("str_tee_platform"):
            raise InvalidInput("attestation report has no str_tee_platform")
        values.setdefault("json_report", "")
        return cls(**values)


@dataclass(frozen=True)
class Attributes:
    """``UnifiedAttestationAttributes``: what a verifier extracted from evidence (all strings)."""

    str_tee_platform: str = ""
    hex_platform_hw_version: str = ""
    hex_platform_sw_version: str = ""
    hex_secure_flags: str = ""
    hex_platform_measurement: str = ""
    hex_boot_measurement: str = ""
    str_tee_name: str = ""
    str_tee_identity: str = ""
    hex_ta_measurement: str = ""
    hex_ta_dyn_measurement: str = ""
    hex_signer: str = ""
    hex_prod_id: str = ""
    str_min_isvsvn: str = ""
    bool_debug_disabled: str = ""
    hex_user_data: str = ""
    hex_hash_or_pem_pubkey: str = ""
    hex_nonce: str = ""
    hex_spid: str = ""
    str_verified_time: str = ""

    def to_dict(self) -> dict[str, str]:
        """Non-empty fields by wire name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attributes:
        values = _strict_fields(cls, data, "attestation attributes")
        return cls(**{k: str(v) for k, v in values.items()})


@dataclass(frozen=True)
class Policy:
    """A ``UnifiedAttestationPolicy`` plus our explicit ``allow_simulation`` switch.

    A report is accepted iff **some** entry of ``main_attributes`` matches all of its
    non-empty fields (the intended upstream semantics, without its early-exit bug).
    Simulated evidence is rejected unless ``allow_simulation`` is true.
    """

    main_attributes: tuple[Attributes, ...] = ()
    allow_simulation: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Parse upstream policy JSON (``pem_public_key`` and ``nested_policies`` are ignored,
        as every upstream verifier ignores them) plus ``allow_simulation``."""
        if not isinstance(data, Mapping):
            raise InvalidInput("attestation policy must be a JSON object")
        unknown = sorted(
            set(data) - {"main_attributes", "allow_simulation", "pem_public_key", "nested_policies"}
        )
        if unknown:
            raise InvalidInput(f"attestation policy has unknown field(s) {unknown}")
        entries = data.get("main_attributes") or []
        if not isinstance(entries, list):
            raise InvalidInput("attestation policy main_attributes must be a list")
        allow = data.get("allow_simulation", False)
        if not isinstance(allow, bool):
            raise InvalidInput("attestation policy allow_simulation must be true or false")
        return cls(tuple(Attributes.from_dict(e) for e in entries), allow)

    def with_user_data(self, user_data: bytes) -> Policy:
        """Return a copy whose every entry also requires the report's user data to be
        ``user_data`` (zero-filled to 32 bytes, as attesters place it).

        With no entries, the result has one entry requiring only the user data.
        """
        if len(user_data) > MAX_USER_DATA:
            raise InvalidInput(f"user_data is {len(user_data)} bytes; at most {MAX_USER_DATA} fit")
        hex_data = user_data.ljust(MAX_USER_DATA, b"\0").hex()
        entries = self.main_attributes or (Attributes(),)
        return Policy(
            tuple(_replace(e, hex_user_data=hex_data) for e in entries), self.allow_simulation
        )


def _replace(attrs: Attributes, **changes: str) -> Attributes:
    return Attributes(**{**attrs.__dict__, **changes})


@dataclass(frozen=True)
class VerifiedReport:
    """What :meth:`Verifier.verify` returns: the attributes that matched the policy."""

    attributes: Attributes
    simulated: bool
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def user_data(self) -> bytes:
        """The 32 bytes of report data the attester bound (``hex_user_data``)."""
        return bytes.fromhex(self.attributes.hex_user_data)


def ra_user_data(cert_pem: bytes, suffix: bytes) -> bytes:
    """The RA binding digest: ``SHA-256(cert_pem || "." || suffix)``
    (docs/compat.md#report-binding).

    ``suffix`` is the UTF-8 nonce for GetRaCert, or the serialized ``ResourceRequest``
    for GetDataKeys / GetTlsAsset.
    """
    return hashlib.sha256(cert_pem + b"." + suffix).digest()


# ---- policy matching -------------------------------------------------------------------------

_EQUALITY_FIELDS = (
    "str_tee_platform",
    "hex_platform_hw_version",
    "hex_platform_sw_version",
    "hex_secure_flags",
    "hex_platform_measurement",
    "hex_boot_measurement",
    "hex_ta_measurement",
    "hex_ta_dyn_measurement",
    "hex_signer",
    "hex_prod_id",
    "hex_user_data",
    "hex_nonce",
)


def _entry_mismatches(actual: Attributes, expected: Attributes) -> list[str]:
    problems = []
    for name in _EQUALITY_FIELDS:
        want = getattr(expected, name)
        got = getattr(actual, name)
        if want and not hmac.compare_digest(want.lower().encode(), got.lower().encode()):
            problems.append(f"{name}: expected {want}, got {got or '(empty)'}")
    if expected.str_min_isvsvn:
        try:
            ok = int(actual.str_min_isvsvn) >= int(expected.str_min_isvsvn)
        except ValueError:
            ok = False
        if not ok:
            problems.append(
                f"str_min_isvsvn: expected >= {expected.str_min_isvsvn}, "
                f"got {actual.str_min_isvsvn or '(empty)'}"
            )
    if expected.bool_debug_disabled and _truthy(expected.bool_debug_disabled) != _truthy(
        actual.bool_debug_disabled
    ):
        problems.append(
            f"bool_debug_disabled: expected {expected.bool_debug_disabled}, "
            f"got {actual.bool_debug_disabled or '(empty)'}"
        )
    if expected.hex_hash_or_pem_pubkey:
        got = actual.hex_hash_or_pem_pubkey.lower().encode()
        if not any(
            hmac.compare_digest(want.hex().encode(), got)
            for want in policy_key_digests(expected.hex_hash_or_pem_pubkey)
        ):
            problems.append("hex_hash_or_pem_pubkey: report is not bound to the policy's key")
    return problems


def public_key_digest(pem: str | bytes) -> bytes:
    """The public-key binding attesters put in report-data bytes 32..63 (the attribute
    ``hex_hash_or_pem_pubkey``): SHA-256 of the key's canonical PEM, i.e. its
    SubjectPublicKeyInfo as ``openssl pkey -pubout`` prints it (64-column base64 lines, one
    trailing newline). ``pem`` must hold exactly one PEM public key; a private key or anything
    else raises :class:`InvalidInput` (a report must never be bound to a secret)."""
    from cryptography.hazmat.primitives import serialization

    data = pem.encode() if isinstance(pem, str) else pem
    if b"PRIVATE KEY" in data:
        raise InvalidInput("the key to bind must be a PEM public key, not a private key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"the key to bind is not a PEM public key: {exc}") from exc
    canonical = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(canonical).digest()


def public_key_binding(value: Any, what: str) -> bytes:
    """The 32 bytes an attester puts in report-data bytes 32..63 for its ``public_key_file``
    setting ``value``: zeros when unset (None), else :func:`public_key_digest` of the file."""
    if value is None:
        return bytes(32)
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise InvalidInput(f"{what} setting 'public_key_file' must be a path")
    try:
        with open(value, "rb") as handle:
            pem = handle.read(64 * 1024)
    except OSError as exc:
        raise InvalidInput(f"{what}: cannot read public_key_file {value}: {exc}") from exc
    try:
        return public_key_digest(pem)
    except InvalidInput as exc:
        raise InvalidInput(f"{what}: public_key_file {value}: {exc}") from exc


def policy_key_digests(value: str) -> tuple[bytes, ...]:
    """The report-data digests a policy's ``hex_hash_or_pem_pubkey`` accepts.

    * 64 hex characters: that SHA-256 itself;
    * a PEM public key: SHA-256 of the text exactly as written (upstream's rule) and of the
      key's canonical PEM (:func:`public_key_digest`), so a re-wrapped or CRLF copy of the key
      still matches reports bound to it;
    * anything else: SHA-256 of the text (upstream's rule).
    """
    text = value.strip()
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return (bytes.fromhex(text),)
    digests = [hashlib.sha256(value.encode()).digest()]
    if "-----BEGIN" in value:
        with contextlib.suppress(InvalidInput):
            digests.append(public_key_digest(value))
    return tuple(digests)


def _truthy(value: str) -> bool:
    return value.lower() in ("true", "1")


def match_policy(actual: Attributes, policy: Policy) -> None:
    """Raise :class:`VerificationError` (check ``"policy"``) unless some entry of ``policy``
    matches ``actual``. The message lists, per entry, every field that differed."""
    if not policy.main_attributes:
        raise VerificationError("policy", "the policy has no main_attributes entry")
    reports = []
    for i, expected in enumerate(policy.main_attributes):
        problems = _entry_mismatches(actual, expected)
        if not problems:
            return
        reports.append(f"#{i}: " + "; ".join(problems))
    raise VerificationError("policy", "no policy entry matches: " + " | ".join(reports))


# ---- backends --------------------------------------------------------------------------------


class Attester(Backend, abc.ABC):
    """Produces attestation reports on one TEE platform.

    A simulated attester (``simulated = True``) follows the upstream simulation conventions
    where a role offers them (e.g. the RA proxy's ``--upstream-sim``: no report at all).
    ``development_default = True`` makes it the attester roles use when none is named; at most
    one installed attester may say so, and only a simulated one (tee_sim's does).
    """

    kind: ClassVar[str] = "attester"
    #: ``str_tee_platform`` of the reports this attester produces (e.g. ``"TDX"``).
    platform: ClassVar[str]
    #: Whether roles use this backend when configuration names none (simulated backends only).
    development_default: ClassVar[bool] = False

    @abc.abstractmethod
    async def generate(self, user_data: bytes, *, report_type: str = PASSPORT) -> Report:
        """Return a fresh report binding ``user_data``.

        ``user_data`` (at most :data:`MAX_USER_DATA` bytes) is placed left-aligned and
        zero-filled in bytes 0..31 of the platform's 64-byte report data, so a verifier
        exposes it as the 64-hex-char ``hex_user_data``. Bytes 32..63 are zero, or the
        :func:`public_key_digest` of a public key the attester is configured to bind
        (``hex_hash_or_pem_pubkey``). Longer input or an unknown
        ``report_type`` raises :class:`InvalidInput`; platform failures raise
        :class:`BackendUnavailable`.
        """

    def generation_detail(self) -> str:
        """How the last :meth:`generate` got its evidence (e.g. which kernel interface, and
        why others were skipped), for ``trustflow attest doctor``; "" = nothing to add."""
        return ""

    @classmethod
    def diagnose(cls, settings: Mapping[str, Any] | None = None) -> list[Diagnostic]:
        """What ``trustflow attest doctor`` reports before it tries to generate: whether this
        host is a guest of the platform and, for every way the backend could produce
        evidence with ``settings``, whether it can work here and why (kernel, device nodes,
        services, endorsement sources). Probes only: nothing is generated, nothing is
        written. Host problems are results (status ``"fail"``), never exceptions; unusable
        ``settings`` may raise :class:`InvalidInput`. A ``"fail"`` means generation cannot
        work, so the doctor does not try. The default reports :meth:`unviable_reason`."""
        reason = cls.unviable_reason()
        if reason is None:
            return [Diagnostic("guest", "ok", f"the {cls.name} backend can run here")]
        return [Diagnostic("guest", "fail", reason)]


@dataclass(frozen=True)
class Diagnostic:
    """One line of ``trustflow attest doctor``: ``status`` is ``"ok"``, ``"warn"`` (works,
    but not the way it should or not for every report type), ``"unusable"`` (one of several
    ways that cannot work here; others may), ``"fail"`` (generation cannot work: the doctor
    does not try) or ``"info"``."""

    name: str
    status: str
    detail: str


def check_generate_args(user_data: bytes, report_type: str) -> bytes:
    """Validate :meth:`Attester.generate` arguments; return the 32-byte padded user data."""
    if report_type not in REPORT_TYPES:
        raise InvalidInput(f"report_type must be one of {REPORT_TYPES}, got {report_type!r}")
    if len(user_data) > MAX_USER_DATA:
        raise InvalidInput(f"user_data is {len(user_data)} bytes; at most {MAX_USER_DATA} fit")
    return user_data.ljust(MAX_USER_DATA, b"\0")


@dataclass(frozen=True)
class Evidence:
    """What a verifier's platform check established: the attributes and extra details."""

    attributes: Attributes
    details: Mapping[str, Any] = field(default_factory=dict)


class Verifier(Backend, abc.ABC):
    """Checks reports of one TEE platform and matches them against a policy.

    Besides checking evidence, a verifier class declares what the roles need to know about its
    platform, so that no role names a platform:

    * ``tee_name`` and ``identity_fields`` -- the identity the Capsule Manager exposes to data
      owners' policies after verifying an app report: ``r.env.tee.platform == tee_name`` and
      ``r.env.tee.<tee_name>.<field>`` = the lowercase hex of the attribute ``identity_fields``
      maps ``field`` to (see :meth:`policy_identity`). An empty ``tee_name`` (the default)
      means the platform exposes no policy identity: the CM refuses its apps with
      "unsupported platform", as upstream does for platforms it does not know.
    * ``constraint_fields`` -- the names of the owner CLI's ``tee_constraints`` (checked against
      the Capsule Manager's own report) and the attributes they pin; None (the default) means
      the same as ``identity_fields``.
    * ``debug_flag`` -- whether the platform reports a debug flag; then every default
      acceptance entry requires ``bool_debug_disabled = "true"`` (:meth:`acceptance_entry`).
    * ``simulated`` -- simulated evidence; rejected unless a policy sets ``allow_simulation``,
      and a client whose CM platform is simulated follows the upstream simulation convention
      (the CM's report is not checked).
    * ``development_default`` -- as for :class:`Attester`.
    """

    kind: ClassVar[str] = "verifier"
    #: ``str_tee_platform`` this verifier accepts (exact, case-sensitive).
    platform: ClassVar[str]
    #: The platform's name in policies' ``env.tee`` (``r.env.tee.platform``); "" = none.
    tee_name: ClassVar[str] = ""
    #: Policy identity field (``r.env.tee.<tee_name>.<field>``) -> attribute name.
    identity_fields: ClassVar[Mapping[str, str]] = {}
    #: ``tee_constraints`` name -> attribute name; None = ``identity_fields``.
    constraint_fields: ClassVar[Mapping[str, str] | None] = None
    #: Whether reports carry ``bool_debug_disabled`` (then acceptance requires ``"true"``).
    debug_flag: ClassVar[bool] = False
    #: Whether roles use this backend when configuration names none (simulated backends only).
    development_default: ClassVar[bool] = False

    @classmethod
    def acceptance_entry(cls, **pinned: str) -> Attributes:
        """A policy entry accepting this platform's reports: ``str_tee_platform``, debug
        disabled when the platform has a debug flag, plus the ``pinned`` attribute values
        (empty values pin nothing). The Capsule Manager's default policy is one such entry per
        installed verifier; the CM client pins the owner's ``tee_constraints`` this way."""
        values = {"str_tee_platform": cls.platform}
        if cls.debug_flag:
            values["bool_debug_disabled"] = "true"
        return Attributes(**{**values, **{k: v for k, v in pinned.items() if v}})

    @classmethod
    def constraints_entry(cls, constraints: Mapping[str, str | None]) -> Attributes:
        """:meth:`acceptance_entry` pinning the named ``constraints`` (names per
        ``constraint_fields``; names this platform does not have are ignored, as upstream)."""
        names = cls.identity_fields if cls.constraint_fields is None else cls.constraint_fields
        return cls.acceptance_entry(
            **{attr: constraints.get(name) or "" for name, attr in names.items()}
        )

    @classmethod
    def policy_identity(cls, attributes: Attributes) -> dict[str, Any] | None:
        """``env.tee`` for a verified report: ``{"platform": tee_name, tee_name: {field:
        lowercase value}}``; None when the platform declares no ``tee_name``."""
        if not cls.tee_name:
            return None
        identity = {f: getattr(attributes, a).lower() for f, a in cls.identity_fields.items()}
        return {"platform": cls.tee_name, cls.tee_name: identity}

    @classmethod
    def recognizes_evidence(cls, evidence: bytes) -> bool:
        """Whether ``evidence`` (the bytes of a file that is not a report JSON) looks like raw
        evidence of this platform that :meth:`report_from_evidence` takes: a cheap structural
        check (magic numbers, sizes), never a verification. Tools use it to name the platform
        of a raw evidence file given where a report was expected. The default: False."""
        return False

    @classmethod
    def report_from_evidence(cls, evidence: bytes, *, endorsements: bytes | None = None) -> Report:
        """Wrap raw platform evidence (a TDX quote, a CSV attestation report, ...) and optional
        endorsements (collateral, a certificate chain) into a :class:`Report` in the upstream
        layout, so tools can verify evidence produced outside Trustflow. Raise
        :class:`InvalidInput` for unusable input. The default raises
        :class:`~trustflow_core.errors.UnsupportedOperation`."""
        from .errors import UnsupportedOperation

        raise UnsupportedOperation(f"the {cls.name!r} verifier cannot wrap raw evidence files")

    @abc.abstractmethod
    async def check_evidence(self, report: Report, *, now: datetime) -> Evidence:
        """Verify the platform evidence in ``report`` (signatures, chains, collateral valid at
        ``now``) and return the attributes it proves. Raise :class:`VerificationError` naming the
        failed check; never return unverified attributes."""

    async def verify(
        self, report: Report, policy: Policy, *, now: datetime | None = None
    ) -> VerifiedReport:
        """Verify ``report`` completely and return what it proves, or raise
        :class:`VerificationError`. Not to be overridden: it enforces the report envelope,
        the simulation rule and policy matching for every platform."""
        if report.str_report_version != REPORT_VERSION:
            raise VerificationError(
                "report_version",
                f"expected {REPORT_VERSION!r}, got {report.str_report_version!r}",
            )
        if report.str_report_type not in REPORT_TYPES:
            raise VerificationError(
                "report_type", f"expected one of {REPORT_TYPES}, got {report.str_report_type!r}"
            )
        if report.str_tee_platform != self.platform:
            raise VerificationError(
                "platform",
                f"{type(self).__name__} verifies {self.platform!r} reports, "
                f"got {report.str_tee_platform!r}",
            )
        if self.simulated and not policy.allow_simulation:
            raise VerificationError(
                "simulation",
                f"{self.platform!r} evidence is simulated and the policy does not allow simulation",
            )
        evidence = await self.check_evidence(report, now=now or datetime.now(timezone.utc))
        match_policy(evidence.attributes, policy)
        return VerifiedReport(evidence.attributes, self.simulated, evidence.details)


# ---- absent reports (the upstream "sim" convention) ------------------------------------------


async def verify_optional(
    report: Report | None,
    policy: Policy,
    verifier_for: Callable[[str], Verifier],
    *,
    upstream_sim: bool,
    now: datetime | None = None,
) -> VerifiedReport:
    """Verify a report that a peer may have omitted (docs/compat.md#sim-report-omitted).

    Upstream "sim" peers send **no** ``attestation_report``. With a report present, this is
    ``await verifier_for(report.str_tee_platform).verify(report, policy, now=now)``: a present
    report is always verified, in simulation too. ``verifier_for`` maps a platform string to a
    ready verifier instance (the caller owns its lifetime); its errors (e.g.
    :class:`~trustflow_core.errors.BackendNotFound`) propagate unchanged.

    With ``report`` None, the result is ``VerifiedReport(Attributes(), simulated=True,
    details={"report": "absent"})`` only when the caller accepts the upstream sim convention
    (``upstream_sim``) **and** the policy sets ``allow_simulation``; otherwise
    :class:`VerificationError` with check ``"missing_report"``. Such a result proves nothing:
    its attributes are empty, so :attr:`VerifiedReport.user_data` is ``b""``.
    """
    if report is not None:
        return await verifier_for(report.str_tee_platform).verify(report, policy, now=now)
    if not upstream_sim:
        raise VerificationError(
            "missing_report", "no attestation report was sent and upstream sim mode is off"
        )
    if not policy.allow_simulation:
        raise VerificationError(
            "missing_report",
            "no attestation report was sent (upstream sim) and the policy does not allow "
            "simulation",
        )
    return VerifiedReport(Attributes(), simulated=True, details={"report": "absent"})
