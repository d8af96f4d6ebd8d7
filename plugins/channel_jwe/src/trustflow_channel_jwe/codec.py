"""Strict encodings shared by the JWE and JWS code.

* Every ``Jwe``/``Jws`` member is base64url **without padding**, decoded strictly: only the
  URL-safe alphabet, no ``=``, and canonical trailing bits (crypto-formats §1, quirk 10). The
  upstream Capsule Manager and the C++ proxies decode the same way.
* ``x5c`` entries are standard base64 **with** canonical padding (RFC 7515 §4.1.6).
* JOSE headers are UTF-8 JSON objects; duplicate member names are rejected so that two parsers
  can never read different values from the same header.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from trustflow_core.channel import Jwe
from trustflow_core.errors import EnvelopeError

_B64URL_NOPAD = re.compile(r"[A-Za-z0-9_-]*")
_B64STD_PADDED = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def b64url_encode(data: bytes) -> str:
    """base64url of ``data`` without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(value: str, what: str) -> bytes:
    """Decode canonical base64url-without-padding; raise :class:`EnvelopeError` naming ``what``
    for padding, characters outside the URL-safe alphabet, an impossible length or
    non-canonical trailing bits."""
    if not isinstance(value, str) or not _B64URL_NOPAD.fullmatch(value):
        raise EnvelopeError(f"{what} is not base64url without padding")
    if len(value) % 4 == 1:
        raise EnvelopeError(f"{what} has an impossible base64url length ({len(value)})")
    data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    if b64url_encode(data) != value:
        raise EnvelopeError(f"{what} is non-canonical base64url (stray trailing bits)")
    return data


def b64std_encode(data: bytes) -> str:
    """Standard base64 of ``data`` with padding (for ``x5c``)."""
    return base64.b64encode(data).decode("ascii")


def b64std_decode(value: str, what: str) -> bytes:
    """Decode canonical standard base64 with padding; raise :class:`EnvelopeError` naming
    ``what`` otherwise."""
    if not isinstance(value, str) or not _B64STD_PADDED.fullmatch(value):
        raise EnvelopeError(f"{what} is not standard base64 with padding")
    try:
        data = base64.b64decode(value, validate=True)
    except binascii.Error as exc:  # pragma: no cover - excluded by the pattern
        raise EnvelopeError(f"{what} is not standard base64: {exc}") from exc
    if b64std_encode(data) != value:
        raise EnvelopeError(f"{what} is non-canonical base64 (stray trailing bits)")
    return data


def compact_json(obj: Any) -> bytes:
    """Compact JSON (no spaces), as the upstream CM, C++ proxy and Envoy write headers."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parse UTF-8 JSON that must be an object without duplicate members."""
    try:
        obj = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EnvelopeError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise EnvelopeError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def header_string(header: dict[str, Any], member: str, what: str) -> str:
    """A required string member of a JOSE header."""
    value = header.get(member)
    if not isinstance(value, str):
        state = "missing" if value is None else f"not a string ({type(value).__name__})"
        raise EnvelopeError(f"{what} member {member!r} is {state}")
    return value


def reject_unsupported_members(header: dict[str, Any], what: str) -> None:
    """Refuse header members whose meaning we would otherwise silently ignore: ``crit``
    (extensions we must understand — we understand none), ``zip`` (compression)."""
    for member in ("crit", "zip"):
        if member in header:
            raise EnvelopeError(f"{what} member {member!r} is not supported")


@dataclass(frozen=True)
class DecodedJwe:
    """The six JWE members after strict base64url decoding (``protected`` kept both ways)."""

    protected_b64: str
    header_json: bytes
    encrypted_key: bytes = field(repr=False)
    iv: bytes
    ciphertext: bytes = field(repr=False)
    tag: bytes
    aad: bytes


def decode_jwe(jwe: Jwe) -> DecodedJwe:
    """Strictly decode every member of ``jwe``; the error names the first bad member."""
    return DecodedJwe(
        protected_b64=jwe.protected,
        header_json=b64url_decode(jwe.protected, "JWE member 'protected'"),
        encrypted_key=b64url_decode(jwe.encrypted_key, "JWE member 'encrypted_key'"),
        iv=b64url_decode(jwe.iv, "JWE member 'iv'"),
        ciphertext=b64url_decode(jwe.ciphertext, "JWE member 'ciphertext'"),
        tag=b64url_decode(jwe.tag, "JWE member 'tag'"),
        aad=b64url_decode(jwe.aad, "JWE member 'aad'"),
    )
