"""The ``SIM`` report format: the ``json_report`` of a ``"SIM"`` UnifiedAttestationReport.

``json_report`` is canonical JSON (sorted keys, no spaces, ASCII) of exactly three strings::

    {"hex_signature": "<r || s, 2 x 32 bytes, lowercase hex>",
     "hex_user_data": "<the body's hex_user_data>", "json_body": "<body>"}

``hex_user_data`` sits at the top as well, where a generic client looks for the report's
binding (docs/compat.md#sim-report-omitted); it must equal the signed body's, so it is covered
by the signature. Reports made before it was added (only
``hex_signature`` and ``json_body``) are still accepted.

``json_body`` is canonical JSON of an object whose values are all strings, named after the
attributes they become:

==========================  ====================================================================
``str_format``              ``"trustflow-sim/1"``
``str_tee_platform``        ``"SIM"`` (upstream never emits it, docs/compat.md#sim-report-omitted)
``hex_user_data``           report data bytes 0..31 (64 lowercase hex chars)
``hex_hash_or_pem_pubkey``  report data bytes 32..63 (zero from :class:`SimAttester`)
``hex_platform_measurement`` / ``hex_boot_measurement`` / ``hex_ta_measurement``
                            lowercase hex, 1..64 bytes (see :data:`DEFAULT_MEASUREMENTS`)
``bool_debug_disabled``     ``"true"`` or ``"false"``
``str_timestamp``           generation time, ``YYYY-MM-DDTHH:MM:SSZ`` (UTC)
``pem_platform_public_key`` SubjectPublicKeyInfo PEM of the simulated platform key
==========================  ====================================================================

The signature is ECDSA P-256 with SHA-256 over the UTF-8 bytes of ``json_body``. Both JSON
levels must be byte-for-byte canonical, so every changed byte of ``json_report`` is detected.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from trustflow_core.errors import VerificationError

PLATFORM = "SIM"
FORMAT = "trustflow-sim/1"
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_COORDINATE = 32  # bytes of r and of s for P-256

#: Well-known default measurements: SHA-384 (platform, boot) or SHA-256 (TA) of these labels.
MEASUREMENT_LABELS: dict[str, tuple[str, bytes]] = {
    "hex_platform_measurement": ("sha384", b"trustflow-sim platform measurement v1"),
    "hex_boot_measurement": ("sha384", b"trustflow-sim boot measurement v1"),
    "hex_ta_measurement": ("sha256", b"trustflow-sim ta measurement v1"),
}
DEFAULT_MEASUREMENTS: dict[str, str] = {
    name: hashlib.new(algorithm, label).hexdigest()
    for name, (algorithm, label) in MEASUREMENT_LABELS.items()
}

_HEX32 = re.compile(r"[0-9a-f]{64}")
_MEASUREMENT = re.compile(r"(?:[0-9a-f]{2}){1,64}")
_SIGNATURE = re.compile(r"[0-9a-f]{128}")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def is_measurement(value: object) -> bool:
    """Whether ``value`` is a valid measurement: lowercase hex of 1..64 bytes."""
    return isinstance(value, str) and _MEASUREMENT.fullmatch(value) is not None


@dataclass(frozen=True)
class SimBody:
    """The signed content of a SIM report."""

    hex_user_data: str
    hex_hash_or_pem_pubkey: str
    hex_platform_measurement: str
    hex_boot_measurement: str
    hex_ta_measurement: str
    bool_debug_disabled: str
    str_timestamp: str
    pem_platform_public_key: str
    str_tee_platform: str = PLATFORM
    str_format: str = FORMAT

    def to_json(self) -> str:
        """The canonical encoding that is signed."""
        return canonical_json(asdict(self))

    @property
    def timestamp(self) -> datetime:
        return _parse_timestamp(self.str_timestamp)

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The platform key the body names (VerificationError "format" unless P-256)."""
        return _platform_key(self.pem_platform_public_key)

    @classmethod
    def parse(cls, text: str) -> SimBody:
        """Parse and validate ``json_body``; raise :class:`VerificationError` (check
        ``"format"`` naming the field, or ``"platform"``)."""
        data = _canonical_object(text, "json_body")
        names = [f.name for f in fields(cls)]
        _exact_keys(data, names, "json_body")
        for name in names:
            if not isinstance(data[name], str):
                raise VerificationError("format", f"json_body field {name!r} must be a string")
        body = cls(**data)
        if body.str_format != FORMAT:
            raise VerificationError(
                "format", f"str_format: expected {FORMAT!r}, got {body.str_format!r}"
            )
        if body.str_tee_platform != PLATFORM:
            raise VerificationError(
                "platform", f"json_body str_tee_platform is {body.str_tee_platform!r}, not SIM"
            )
        for name in ("hex_user_data", "hex_hash_or_pem_pubkey"):
            if not _HEX32.fullmatch(getattr(body, name)):
                raise VerificationError("format", f"{name} must be 64 lowercase hex characters")
        for name in MEASUREMENT_LABELS:
            if not is_measurement(getattr(body, name)):
                raise VerificationError("format", f"{name} must be lowercase hex of 1 to 64 bytes")
        if body.bool_debug_disabled not in ("true", "false"):
            raise VerificationError("format", "bool_debug_disabled must be 'true' or 'false'")
        if not _TIMESTAMP.fullmatch(body.str_timestamp):
            raise VerificationError("format", f"str_timestamp must look like {TIMESTAMP_FORMAT}")
        try:
            body.timestamp  # noqa: B018 -- validates the calendar date
        except ValueError as exc:
            raise VerificationError("format", "str_timestamp is not a valid date") from exc
        body.public_key  # noqa: B018 -- validates the key
        return body


@functools.lru_cache(maxsize=1024)
def _parse_timestamp(text: str) -> datetime:
    return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=timezone.utc)


@functools.lru_cache(maxsize=64)
def _platform_key(pem: str) -> ec.EllipticCurvePublicKey:
    """Parsed once per PEM text: a host signs all its reports with one platform key."""
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise VerificationError(
            "format", "pem_platform_public_key is not a PEM public key"
        ) from exc
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise VerificationError("format", "pem_platform_public_key is not a P-256 EC key")
    return key


def sign(body: SimBody, key: ec.EllipticCurvePrivateKey) -> str:
    """Return ``json_report`` for ``body`` signed with ``key``."""
    body_json = body.to_json()
    r, s = decode_dss_signature(key.sign(body_json.encode("ascii"), ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(_COORDINATE, "big") + s.to_bytes(_COORDINATE, "big")
    return canonical_json(
        {
            "hex_signature": signature.hex(),
            "hex_user_data": body.hex_user_data,
            "json_body": body_json,
        }
    )


def open_report(json_report: str) -> SimBody:
    """Check ``json_report``'s format and its signature by the key it names; return the body.

    Whether that key is trusted is the caller's decision. Raises :class:`VerificationError`
    with check ``"format"``, ``"platform"`` or ``"signature"``."""
    outer = _canonical_object(json_report, "json_report")
    layout = ["hex_signature", "hex_user_data", "json_body"]
    if "hex_user_data" not in outer:  # a report made before the field was added
        layout.remove("hex_user_data")
    _exact_keys(outer, layout, "json_report")
    body_json, signature = outer["json_body"], outer["hex_signature"]
    if not isinstance(body_json, str):
        raise VerificationError("format", "json_report field 'json_body' must be a string")
    if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
        raise VerificationError("format", "hex_signature must be 128 lowercase hex characters")
    body = SimBody.parse(body_json)
    raw = bytes.fromhex(signature)
    der = encode_dss_signature(
        int.from_bytes(raw[:_COORDINATE], "big"), int.from_bytes(raw[_COORDINATE:], "big")
    )
    try:
        body.public_key.verify(der, body_json.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise VerificationError(
            "signature", "the report body is not signed by its platform key"
        ) from exc
    if "hex_user_data" in outer and outer["hex_user_data"] != body.hex_user_data:
        raise VerificationError(
            "format", "json_report hex_user_data is not the signed body's hex_user_data"
        )
    return body


def _canonical_object(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise VerificationError("format", f"{what} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise VerificationError("format", f"{what} must be a JSON object")
    if canonical_json(data) != text:
        raise VerificationError("format", f"{what} is not canonical JSON")
    return data


def _exact_keys(data: dict[str, Any], names: list[str], what: str) -> None:
    missing = sorted(set(names) - set(data))
    if missing:
        raise VerificationError("format", f"{what} lacks field(s) {missing}")
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise VerificationError("format", f"{what} has unknown field(s) {unknown}")
