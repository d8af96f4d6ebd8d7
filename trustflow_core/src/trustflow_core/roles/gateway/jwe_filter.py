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
2. else a protected header whose ``enc`` is not ``A128GCM``, or whose ``alg`` is
   ``ECDH-ES+A128KW`` → ``rfc`` (the upstream gateway only speaks RSA-OAEP-256 with
   AES-128-GCM, so no upstream client sends anything else);
3. else ``upstream`` (what ``jwe_client.py`` and the Python SDK send: ``application/json``,
   ``{"alg": "RSA-OAEP-256", "enc": "A128GCM"}``, GCM AAD = decoded ``aad``).

The key: an RFC envelope with ``alg: ECDH-ES+A128KW`` is opened with the listener's P-256 key
agreement key (``ecdh_private_key_path``; without one it is refused), everything else with the
RSA key; the channel accepts only the ``alg`` that fits the key it is given, and checks the
``epk`` point before any key agreement (docs/online.md#ecdh-profile).

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
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from ...channel import EnvelopeChannel, Jwe
from ...errors import EnvelopeError, InvalidInput, TrustflowError
from ...jose import MalformedInput, decode_header, loads
from .config import JweFilterConfig
from .freshness import DEFAULT_FRESHNESS, FreshnessConfig, NotFresh
from .replay import ReplayGuard, ReplayTable

JOSE_JSON: Final = "application/jose+json"
PROFILES = ("upstream", "rfc")
MEMBERS: Final = {
    "protected": "protected",
    "protected_header": "protected",
    "encrypted_key": "encrypted_key",
    "iv": "iv",
    "ciphertext": "ciphertext",
    "tag": "tag",
    "aad": "aad",
}
#: The key-agreement ``alg`` of RFC-profile envelopes sealed to the app's P-256 key.
ECDH_ALG: Final = "ECDH-ES+A128KW"
_MEMBER_NAMES: Final = frozenset(MEMBERS)
#: ``"name":`` of each ``Jwe`` member in :meth:`Jwe.to_dict` order, for building reply JSON.
_REPLY_NAMES: Final = tuple(
    f"{json.dumps(name)}:"
    for name in ("protected", "encrypted_key", "iv", "ciphertext", "tag", "aad")
)
_FIRST_KEY: Final = re.compile(rb'\s*\{\s*"([a-z_]{1,20})"')
#: The envelope class and the C string encoder under final names (no globals lookup per
#: envelope in the compiled build).
_Jwe: Final = Jwe
_json_string: Final = encode_basestring_ascii


class EnvelopeRejected(TrustflowError):
    """The request carried an envelope we will not forward; ``str()`` is the client message,
    ``status`` the HTTP status, ``cause`` one of :data:`CAUSES` (the metrics label)."""

    def __init__(self, message: str, status: int = 400, cause: str = "malformed") -> None:
        super().__init__(message)
        self.status = status
        self.cause = cause


#: Why an envelope is refused: damaged JSON, both header members, not opened by the key
#: (tampered, wrong key, unsupported algorithm), a replayed ``jti``, an ``iat`` at or below
#: the floor of a full replay cache (raise ``cache_size`` when it counts honest clients), other
#: freshness claims, the replay cache shared by the workers not answering (503).
CAUSES = (
    "malformed",
    "open_failed",
    "replay",
    "replay_cache_full",
    "not_fresh",
    "replay_cache_unavailable",
)


class OpenedRequest:
    """An opened request envelope: its ``profile``, the ``plaintext`` for the app and the
    content key ``cek`` its reply is sealed under (neither shown by ``repr``). A plain slotted
    class: built once per request, read-only by convention."""

    __slots__ = ("cek", "plaintext", "profile")

    def __init__(self, profile: str, plaintext: bytes, cek: bytes) -> None:
        self.profile = profile
        self.plaintext = plaintext
        self.cek = cek

    def __repr__(self) -> str:
        return f"OpenedRequest(profile={self.profile!r})"


def reply_json(jwe: Jwe, drop_empty: bool) -> bytes:
    """The compact ASCII JSON object of ``jwe``'s members in :meth:`Jwe.to_dict` order (empty
    ones left out when ``drop_empty``): byte for byte what
    ``json.dumps(members, separators=(",", ":"))`` writes, built from the C string encoder
    without a dict or an encoder object per reply."""
    values = (jwe.protected, jwe.encrypted_key, jwe.iv, jwe.ciphertext, jwe.tag, jwe.aad)
    return (
        "{"
        + ",".join(
            [
                name + _json_string(value)
                for name, value in zip(_REPLY_NAMES, values, strict=True)
                if value or not drop_empty
            ]
        )
        + "}"
    ).encode("ascii")


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
    if not isinstance(obj, dict) or not obj.keys() <= _MEMBER_NAMES:
        return None
    for value in obj.values():
        if value is not None and not isinstance(value, str):
            return None
    if "protected_header" in obj:
        if "protected" in obj:
            raise EnvelopeRejected("JWE envelope has both 'protected' and 'protected_header'")
        protected = obj.get("protected_header")
    else:
        protected = obj.get("protected")
    return _Jwe(
        protected or "",
        obj.get("encrypted_key") or "",
        obj.get("iv") or "",
        obj.get("ciphertext") or "",
        obj.get("tag") or "",
        obj.get("aad") or "",
    )


def _header_alg_enc(protected: str) -> tuple[str | None, str | None]:
    """``alg`` and ``enc`` of a well-formed protected header, else None (the channel refuses
    it)."""
    try:
        header = decode_header(protected, "JWE protected header")
    except MalformedInput:
        return None, None
    alg, enc = header.get("alg"), header.get("enc")
    return (alg if isinstance(alg, str) else None), (enc if isinstance(enc, str) else None)


def choose_profile(jwe: Jwe, content_type: str) -> str:
    """``"rfc"`` or ``"upstream"`` for this request (rules in the module docstring)."""
    return _profile(content_type, *_header_alg_enc(jwe.protected))


def _profile(content_type: str, alg: str | None, enc: str | None) -> str:
    if content_type.lower() == JOSE_JSON:
        return "rfc"
    if (enc is not None and enc != "A128GCM") or alg == ECDH_ALG:
        return "rfc"
    return "upstream"


def _load_private_key(path: Path, what: str) -> object:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(f"jwe filter: cannot load {what} {path}: {type(exc).__name__}") from None


def _load_cert(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"jwe filter: cannot load {what} {path}: {exc}") from exc


def load_ecdh_key(cert_path: Path, key_path: Path) -> ec.EllipticCurvePrivateKey:
    """The app's key agreement key: a P-256 private key belonging to the certificate (the one
    the RA Proxy serves after the RSA certificate, docs/online.md#ecdh-profile)."""
    cert = _load_cert(cert_path, "ecdh_cert_path")
    key = _load_private_key(key_path, "ecdh_private_key_path")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InvalidInput("jwe filter: the ECDH private key must be an EC P-256 key")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or (
        key.public_key().public_numbers() != public.public_numbers()
    ):
        raise InvalidInput(f"jwe filter: {key_path} does not belong to {cert_path}")
    return key


class JweFilter:
    """Opens request envelopes with the app private key and seals replies under the request's
    content key, through the ``jwe`` envelope channel (one instance per profile); refuses
    replayed and stale RFC envelopes through a :class:`~.replay.ReplayGuard`."""

    def __init__(
        self,
        private_key: RSAPrivateKey,
        channels: Mapping[str, EnvelopeChannel],
        freshness: FreshnessConfig = DEFAULT_FRESHNESS,
        ecdh_key: ec.EllipticCurvePrivateKey | None = None,
        replay_table: ReplayTable | None = None,
    ):
        self._key = private_key
        self._ecdh_key = ecdh_key
        self._channels = dict(channels)
        self.replay = ReplayGuard(freshness, replay_table)

    def __repr__(self) -> str:
        return f"JweFilter(profiles={sorted(self._channels)})"

    @classmethod
    def load(
        cls,
        config: JweFilterConfig,
        channels: Mapping[str, EnvelopeChannel],
        replay_table: ReplayTable | None = None,
    ) -> JweFilter:
        """Read the certificate and private key (and the optional ECDH pair); they must be
        PEM and belong together. ``replay_table``: where the replay guard keeps the ids of
        accepted envelopes (default: a table of this process)."""
        cert = _load_cert(config.cert_path, "cert_path")
        key = _load_private_key(config.private_key_path, "private_key_path")
        if not isinstance(key, RSAPrivateKey):
            raise InvalidInput("jwe filter: the private key must be an RSA key")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise InvalidInput(
                f"jwe filter: {config.private_key_path} does not belong to {config.cert_path}"
            )
        ecdh_key = None
        if config.ecdh_cert_path is not None and config.ecdh_private_key_path is not None:
            ecdh_key = load_ecdh_key(config.ecdh_cert_path, config.ecdh_private_key_path)
        return cls(key, channels, config.freshness, ecdh_key, replay_table)

    def open(self, jwe: Jwe, content_type: str) -> OpenedRequest:
        """Decrypt and check freshness; :class:`EnvelopeRejected` says which check failed."""
        alg, enc = _header_alg_enc(jwe.protected)
        profile = _profile(content_type, alg, enc)
        key: RSAPrivateKey | ec.EllipticCurvePrivateKey = self._key
        if profile == "rfc" and alg == ECDH_ALG and self._ecdh_key is not None:
            key = self._ecdh_key
        try:
            opened = self._channels[profile].open(jwe, key)
        except EnvelopeError as exc:
            raise EnvelopeRejected(
                f"JWE envelope rejected ({profile} profile): {exc}", cause="open_failed"
            ) from None
        try:
            self.replay.check(profile, opened.header)
        except NotFresh as exc:
            raise EnvelopeRejected(str(exc), exc.status, exc.cause) from None
        return OpenedRequest(profile, opened.plaintext, opened.cek)

    def seal_reply(self, request: OpenedRequest, payload: bytes) -> bytes:
        """The reply body: compact JSON of the sealed ``payload`` (:func:`reply_json`; the rfc
        profile leaves empty members out)."""
        profile = request.profile
        return reply_json(
            self._channels[profile].seal_reply(payload, request.cek), profile == "rfc"
        )
