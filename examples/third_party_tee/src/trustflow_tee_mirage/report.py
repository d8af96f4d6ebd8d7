"""The ``MIRAGE`` report format: the ``json_report`` of a ``"MIRAGE"`` UnifiedAttestationReport.

``json_report`` is canonical JSON (sorted keys, no spaces, ASCII) of exactly three strings::

    {"claims": "<hex of the claims JSON>", "platform_key": "<hex of SPKI DER>",
     "signature": "<hex of the DER ECDSA signature>"}

The claims are canonical JSON of exactly these members:

================  ============================================================================
``format``        ``"mirage/1"``
``platform``      ``"MIRAGE"``
``report_data``   the 32 bytes an attester binds (64 lowercase hex characters)
``image``         the measured enclave image (lowercase hex of 32 bytes)
``firmware``      the measured firmware (lowercase hex of 32 bytes)
``signer``        who signed the image (lowercase hex of 32 bytes)
``debug``         ``true`` or ``false``
``issued``        generation time, seconds since the epoch (integer)
================  ============================================================================

The signature is ECDSA P-256 with SHA-256 over ``DOMAIN`` followed by the claims bytes, by the
**platform key** named in ``platform_key``; whether that key is trusted is the verifier's
decision. Every level must be byte-for-byte canonical (lowercase hex, canonical JSON), so any
changed byte of ``json_report`` is detected.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from trustflow_core.errors import VerificationError

PLATFORM = "MIRAGE"
FORMAT = "mirage/1"
DOMAIN = b"trustflow-tee-mirage report v1\0"
#: Default measurements: SHA-256 of these labels.
DEFAULT_MEASUREMENTS: dict[str, str] = {
    name: hashlib.sha256(f"mirage default {name}".encode()).hexdigest()
    for name in ("image", "firmware", "signer")
}

_HEX = re.compile(r"(?:[0-9a-f]{2})+")
_HEX32 = re.compile(r"[0-9a-f]{64}")


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def is_measurement(value: object) -> bool:
    """Whether ``value`` is a measurement: 64 lowercase hex characters."""
    return isinstance(value, str) and _HEX32.fullmatch(value) is not None


@dataclass(frozen=True)
class Claims:
    """The signed content of a Mirage report."""

    report_data: str
    image: str
    firmware: str
    signer: str
    debug: bool
    issued: int
    format: str = FORMAT
    platform: str = PLATFORM

    def to_json(self) -> str:
        return canonical_json(asdict(self))

    @classmethod
    def parse(cls, text: str) -> Claims:
        """Parse and validate the claims; :class:`VerificationError` ``"format"`` or
        ``"platform"`` naming the problem."""
        data = _canonical_object(text, "claims")
        _exact_keys(data, [f.name for f in fields(cls)], "claims")
        for name in ("report_data", "image", "firmware", "signer"):
            if not is_measurement(data[name]):
                raise VerificationError("format", f"claims {name} must be 64 lowercase hex chars")
        if not isinstance(data["debug"], bool):
            raise VerificationError("format", "claims debug must be true or false")
        if isinstance(data["issued"], bool) or not isinstance(data["issued"], int):
            raise VerificationError("format", "claims issued must be an integer")
        if data["format"] != FORMAT:
            raise VerificationError("format", f"claims format must be {FORMAT!r}")
        if data["platform"] != PLATFORM:
            raise VerificationError("platform", f"claims platform is {data['platform']!r}")
        return cls(**data)


def sign(claims: Claims, key: ec.EllipticCurvePrivateKey) -> str:
    """``json_report`` for ``claims`` signed by ``key``."""
    body = claims.to_json().encode("ascii")
    signature = key.sign(DOMAIN + body, ec.ECDSA(hashes.SHA256()))
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return canonical_json(
        {"claims": body.hex(), "platform_key": spki.hex(), "signature": signature.hex()}
    )


def open_report(json_report: str) -> tuple[Claims, bytes]:
    """Check ``json_report``'s format and signature; return the claims and the SPKI DER of the
    platform key that signed them. :class:`VerificationError` with check ``"format"``,
    ``"platform"`` or ``"signature"``."""
    outer = _canonical_object(json_report, "json_report")
    _exact_keys(outer, ["claims", "platform_key", "signature"], "json_report")
    raw = {}
    for name, value in outer.items():
        if not isinstance(value, str) or not _HEX.fullmatch(value):
            raise VerificationError("format", f"json_report {name} must be lowercase hex")
        raw[name] = bytes.fromhex(value)
    try:
        key = serialization.load_der_public_key(raw["platform_key"])
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise VerificationError("format", "platform_key is not a DER public key") from exc
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise VerificationError("format", "platform_key is not a P-256 key")
    if (
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        != raw["platform_key"]
    ):
        raise VerificationError("format", "platform_key is not canonical DER")
    try:
        claims_text = raw["claims"].decode("ascii")
    except UnicodeDecodeError as exc:
        raise VerificationError("format", "claims are not ASCII") from exc
    claims = Claims.parse(claims_text)
    try:
        key.verify(raw["signature"], DOMAIN + raw["claims"], ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise VerificationError("signature", "the claims are not signed by platform_key") from exc
    return claims, raw["platform_key"]


def _canonical_object(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise VerificationError("format", f"{what} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise VerificationError("format", f"{what} must be a JSON object")
    if canonical_json(data) != text:
        raise VerificationError("format", f"{what} is not canonical JSON")
    return data


def _exact_keys(data: dict[str, Any], names: list[str], what: str) -> None:
    missing = sorted(set(names) - set(data))
    unknown = sorted(set(data) - set(names))
    if missing or unknown:
        raise VerificationError("format", f"{what}: missing {missing}, unknown {unknown}")
