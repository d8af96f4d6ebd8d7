"""The JWE filter (upstream ``envoy.filters.http.jwe``, docs/compat.md#jwe-dialect).

Classifying a request body (done only for bodies that start with ``{``):

* valid JSON object (strict JSON: :mod:`trustflow_core.jose`) whose keys are all ``Jwe``
  member names (``protected``/``protected_header``, ``encrypted_key``, ``iv``, ``ciphertext``,
  ``tag``, ``aad``) with string or null values → an **envelope** (the upstream rule: protobuf
  JSON parsing with unknown keys rejected);
* valid JSON of any other shape → **plain**, forwarded unchanged (e.g. ``{"nonce": ...}``);
* invalid JSON whose first key is a ``Jwe`` member name → **rejected** (400): a truncated or
  damaged envelope is never forwarded to the app (upstream would forward it as plain text);
* other invalid JSON → plain.

Choosing the profile of an envelope, per request (one RSA operation, no trial decryption):

1. ``Content-Type: application/jose+json`` (the RFC 7516 §9 media type) → ``rfc``;
2. else a protected header whose ``enc`` is not ``A128GCM`` → ``rfc`` (the upstream gateway
   only speaks AES-128-GCM, so no upstream client sends anything else);
3. else ``upstream`` (what ``jwe_client.py`` and the Python SDK send: ``application/json``,
   ``{"alg": "RSA-OAEP-256", "enc": "A128GCM"}``, GCM AAD = decoded ``aad``).

After opening, an RFC envelope's ``iat``/``jti`` claims are checked against the listener's
replay cache (:mod:`.freshness`: replay → 409, stale → 400); upstream envelopes are untouched
unless the listener requires freshness.

Replies: ``upstream`` → the Envoy form, all six members in order, app ``Content-Type`` kept;
``rfc`` → ``alg: dir`` under the request's content key, empty members dropped,
``Content-Type: application/jose+json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from ...channel import EnvelopeChannel, Jwe
from ...errors import EnvelopeError, InvalidInput, TrustflowError
from ...jose import MalformedInput, decode_header, loads
from .config import JweFilterConfig
from .freshness import DEFAULT_FRESHNESS, FreshnessConfig, NotFresh, ReplayGuard

JOSE_JSON = "application/jose+json"
PROFILES = ("upstream", "rfc")
MEMBERS = {
    "protected": "protected",
    "protected_header": "protected",
    "encrypted_key": "encrypted_key",
    "iv": "iv",
    "ciphertext": "ciphertext",
    "tag": "tag",
    "aad": "aad",
}
_FIRST_KEY = re.compile(rb'\s*\{\s*"([a-z_]{1,20})"')


class EnvelopeRejected(TrustflowError):
    """The request carried an envelope we will not forward; ``str()`` is the client message,
    ``status`` the HTTP status, ``cause`` one of :data:`CAUSES` (the metrics label)."""

    def __init__(self, message: str, status: int = 400, cause: str = "malformed") -> None:
        super().__init__(message)
        self.status = status
        self.cause = cause


#: Why an envelope is refused: damaged JSON, both header members, not opened by the key
#: (tampered, wrong key, unsupported algorithm), a replayed ``jti``, other freshness claims.
CAUSES = ("malformed", "open_failed", "replay", "not_fresh")


@dataclass(frozen=True)
class OpenedRequest:
    profile: str
    plaintext: bytes = field(repr=False)
    cek: bytes = field(repr=False)


def classify(body: bytes) -> Jwe | None:
    """The envelope in ``body``, None for a plain body; :class:`EnvelopeRejected` for a damaged
    envelope (see the module docstring)."""
    try:
        obj = loads(body, "JWE envelope")
    except MalformedInput as exc:
        match = _FIRST_KEY.match(body)
        if match and match.group(1).decode() in MEMBERS:
            raise EnvelopeRejected(f"malformed or truncated JWE envelope: {exc.reason}") from None
        return None
    if not isinstance(obj, dict) or not set(obj) <= set(MEMBERS):
        return None
    if not all(v is None or isinstance(v, str) for v in obj.values()):
        return None
    members = {MEMBERS[k]: v or "" for k, v in obj.items()}
    if len(members) != len(obj):  # both "protected" and "protected_header"
        raise EnvelopeRejected("JWE envelope has both 'protected' and 'protected_header'")
    return Jwe.from_dict(members)


def _header_enc(protected: str) -> str | None:
    """The ``enc`` of a well-formed protected header, else None (the channel refuses it)."""
    try:
        enc = decode_header(protected, "JWE protected header").get("enc")
    except MalformedInput:
        return None
    return enc if isinstance(enc, str) else None


def choose_profile(jwe: Jwe, content_type: str) -> str:
    """``"rfc"`` or ``"upstream"`` for this request (rules in the module docstring)."""
    if content_type.lower() == JOSE_JSON:
        return "rfc"
    enc = _header_enc(jwe.protected)
    if enc is not None and enc != "A128GCM":
        return "rfc"
    return "upstream"


class JweFilter:
    """Opens request envelopes with the app private key and seals replies under the request's
    content key, through the ``jwe`` envelope channel (one instance per profile); refuses
    replayed and stale RFC envelopes through a :class:`~.freshness.ReplayGuard`."""

    def __init__(
        self,
        private_key: RSAPrivateKey,
        channels: Mapping[str, EnvelopeChannel],
        freshness: FreshnessConfig = DEFAULT_FRESHNESS,
    ):
        self._key = private_key
        self._channels = dict(channels)
        self.replay = ReplayGuard(freshness)

    def __repr__(self) -> str:
        return f"JweFilter(profiles={sorted(self._channels)})"

    @classmethod
    def load(cls, config: JweFilterConfig, channels: Mapping[str, EnvelopeChannel]) -> JweFilter:
        """Read the certificate and private key; they must be PEM and belong together."""
        try:
            cert = x509.load_pem_x509_certificate(config.cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise InvalidInput(
                f"jwe filter: cannot load cert_path {config.cert_path}: {exc}"
            ) from exc
        try:
            key = serialization.load_pem_private_key(
                config.private_key_path.read_bytes(), password=None
            )
        except (OSError, ValueError, TypeError) as exc:
            raise InvalidInput(
                f"jwe filter: cannot load private_key_path {config.private_key_path}: "
                f"{type(exc).__name__}"
            ) from None
        if not isinstance(key, RSAPrivateKey):
            raise InvalidInput("jwe filter: the private key must be an RSA key")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise InvalidInput(
                f"jwe filter: {config.private_key_path} does not belong to {config.cert_path}"
            )
        return cls(key, channels, config.freshness)

    def open(self, jwe: Jwe, content_type: str) -> OpenedRequest:
        """Decrypt and check freshness; :class:`EnvelopeRejected` says which check failed."""
        profile = choose_profile(jwe, content_type)
        try:
            opened = self._channels[profile].open(jwe, self._key)
        except EnvelopeError as exc:
            raise EnvelopeRejected(
                f"JWE envelope rejected ({profile} profile): {exc}", cause="open_failed"
            ) from None
        try:
            self.replay.check(profile, opened.header)
        except NotFresh as exc:
            cause = "replay" if exc.status == 409 else "not_fresh"
            raise EnvelopeRejected(str(exc), exc.status, cause) from None
        return OpenedRequest(profile, opened.plaintext, opened.cek)

    def seal_reply(self, request: OpenedRequest, payload: bytes) -> bytes:
        """The reply body: compact JSON of the sealed ``payload``."""
        members = self._channels[request.profile].seal_reply(payload, request.cek).to_dict()
        if request.profile == "rfc":
            members = {k: v for k, v in members.items() if v}
        return json.dumps(members, separators=(",", ":")).encode("ascii")
