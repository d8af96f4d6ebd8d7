"""Replay protection of signed owner requests (docs/capsule-manager.md, "Replay protection").

Two layers:

* **Request digests** — every accepted mutating owner request is remembered by
  :func:`request_digest`: SHA-256 over the length-prefixed *decoded* JWE ``iv``, ``tag`` and
  ``ciphertext``. Any change to those fails decryption, and nothing else of the envelope
  (protected-header spacing, base64 or protobuf re-encoding, ``encrypted_key``) changes them,
  so a captured request cannot be re-encoded into a "new" one. Upstream's SDK seals every
  request under a fresh CEK and IV, so honest requests never repeat.
* **Freshness claims** — our own clients put ``iat`` (NumericDate) and ``jti`` into the JWS
  protected header; :func:`check_claims` checks them when present (upstream requests carry
  neither and are protected by the digests alone).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import CMError, Kind

#: The longest ``jti`` accepted (the width of the stored column, db_models.JTI_LEN).
MAX_JTI_CHARS = 128


@dataclass(frozen=True)
class FreshnessWindow:
    """How far ``iat`` may lie in the future and in the past (seconds)."""

    max_future: int = 300
    max_age: int = 600


DEFAULT_WINDOW = FreshnessWindow()


@dataclass(frozen=True)
class RequestMark:
    """What the store records of an accepted mutating owner request: the envelope digest
    (hex), the signing party and the request's ``jti`` (None when it carried none)."""

    digest: str
    party_id: str
    jti: str | None


def request_digest(iv: bytes, tag: bytes, ciphertext: bytes) -> str:
    """Hex SHA-256 of the length-prefixed decoded ``iv``, ``tag`` and ``ciphertext``."""
    h = hashlib.sha256(b"trustflow-cm request v1\0")
    for part in (iv, tag, ciphertext):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def new_claims() -> dict[str, Any]:
    """Fresh ``iat``/``jti`` for a request (what our CLI and SDK send)."""
    return {"iat": int(time.time()), "jti": secrets.token_urlsafe(16)}


def _refuse(claim: str, problem: str) -> CMError:
    return CMError(Kind.INVALID_ARGUMENT, f"JWS header {claim} {problem}")


def check_claims(
    header: Mapping[str, Any], window: FreshnessWindow, now: float | None = None
) -> str | None:
    """Check ``iat``/``jti`` of a verified JWS header when present; return the ``jti``.

    ``iat`` must be a NumericDate no more than ``window.max_future`` seconds ahead and no more
    than ``window.max_age`` seconds old; ``jti`` a non-empty string of at most
    :data:`MAX_JTI_CHARS` characters, and only together with ``iat`` (a ``jti`` could
    otherwise never be forgotten). Refusals name the claim (Invalid Argument, 3)."""
    now = time.time() if now is None else now
    if "iat" in header:
        iat = header["iat"]
        if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
            raise _refuse("iat", "must be a NumericDate (seconds since the epoch)")
        if iat > now + window.max_future:
            raise _refuse("iat", f"lies more than {window.max_future} s in the future")
        if iat < now - window.max_age:
            raise _refuse("iat", f"is older than {window.max_age} s")
    if "jti" not in header:
        return None
    jti = header["jti"]
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
        raise _refuse("jti", f"must be a non-empty string of at most {MAX_JTI_CHARS} characters")
    if "iat" not in header:
        raise _refuse("jti", "needs an iat claim beside it")
    return jti
