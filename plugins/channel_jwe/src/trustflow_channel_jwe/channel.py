"""The ``jwe`` envelope-channel backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from trustflow_core.channel import (
    EnvelopeChannel,
    EnvelopePrivateKey,
    EnvelopeRecipient,
    Jwe,
    Jws,
    OpenedEnvelope,
    SealedEnvelope,
    VerifiedJws,
)
from trustflow_core.errors import EnvelopeError, InvalidInput
from trustflow_core.jose import MalformedInput
from trustflow_core.settings_schema import Node

from . import jws as _jws
from .rfc import (
    DEFAULT_EPK_REUSE_ENVELOPES,
    DEFAULT_EPK_REUSE_SECONDS,
    DEFAULT_KEK_CACHE_ENTRIES,
    EphemeralKeys,
    KekCache,
    RfcDialect,
)
from .rfc import KEY_ALGS as RFC_ALGS
from .upstream import OAEP_HASHES, UpstreamDialect

if TYPE_CHECKING:
    from typing_extensions import Self

PROFILES = ("rfc", "upstream")
DEFAULT_ALGS = {"rfc": "RSA-OAEP-256", "upstream": "RSA-OAEP"}
ALLOWED_ALGS = {"rfc": tuple(RFC_ALGS), "upstream": tuple(sorted(OAEP_HASHES))}
_ECDH_SETTINGS = ("epk_reuse_seconds", "epk_reuse_envelopes", "kek_cache_entries")


def _envelope_error(exc: MalformedInput) -> EnvelopeError:
    """Core's strict-parsing refusals (:mod:`trustflow_core.jose`) are envelope errors here
    (raised ``from None`` by the caller; a plain ``try`` costs less per envelope than a
    context manager)."""
    return EnvelopeError(str(exc))


class JweChannel(EnvelopeChannel):
    """JWE/JWS message envelopes in one of two profiles.

    * ``upstream`` — wire-compatible with the upstream Capsule Manager, Python SDK, C++ proxies
      and Trustflow Envoy (docs/compat.md#jwe-dialect). The protected header is NOT authenticated
      (docs/compat.md#jwe-aad-is-the-aad-member); ``open`` accepts RSA-OAEP/RSA-OAEP-256 with
      A128GCM/A256GCM and any IV length; ``seal`` writes ``RSA-OAEP`` (SHA-1) + A128GCM as the CM
      does for responses, or ``RSA-OAEP-256`` with ``alg: RSA-OAEP-256`` (for clients of an
      Envoy-style gateway); ``seal_reply``/``open_reply`` are the Envoy response form.
    * ``rfc`` (default) — RFC 7516 via jwcrypto: RSA-OAEP-256 + A256GCM, every byte
      authenticated; requests carry ``iat`` and ``jti`` in the protected header (for replay
      checks by the receiver); replies use ``alg: dir`` under the request's content key.
      Sealed to an EC P-256 key, a request uses ``ECDH-ES+A128KW`` key agreement instead
      (docs/online.md#ecdh-profile); ``open`` accepts only the ``alg`` that fits its key.

    JWS (:meth:`sign`/:meth:`verify`) is the same in both profiles: RS256 with an ``x5c``
    chain that is checked for signatures only (see :mod:`trustflow_channel_jwe.jws`).

    Settings: ``profile`` (``"rfc"`` | ``"upstream"``), ``alg`` (the request key transport
    :meth:`seal` writes: ``"RSA-OAEP-256"`` | ``"RSA-OAEP"``; default ``RSA-OAEP-256`` for rfc,
    ``RSA-OAEP`` for upstream); for the rfc profile's ECDH requests
    (docs/online.md#ecdh-profile): ``epk_reuse_seconds`` (default 60) and
    ``epk_reuse_envelopes`` (default 10,000; 1 = a fresh ephemeral key per envelope) bound
    how long :meth:`seal` reuses one ephemeral key per recipient, ``kek_cache_entries``
    (default 1,024; 0 = off) how many key-encryption keys :meth:`open` remembers. The backend
    holds no long-term keys; an rfc channel holds the KEKs of its ephemeral keys and of the
    envelopes it opened.
    """

    name: ClassVar[str] = "jwe"

    def __init__(
        self,
        profile: str = "rfc",
        alg: str | None = None,
        *,
        epk_reuse_seconds: float = DEFAULT_EPK_REUSE_SECONDS,
        epk_reuse_envelopes: int = DEFAULT_EPK_REUSE_ENVELOPES,
        kek_cache_entries: int = DEFAULT_KEK_CACHE_ENTRIES,
    ) -> None:
        if profile not in PROFILES:
            raise InvalidInput(f"channel 'jwe': profile must be one of {PROFILES}, got {profile!r}")
        alg = DEFAULT_ALGS[profile] if alg is None else alg
        if alg not in ALLOWED_ALGS[profile]:
            raise InvalidInput(
                f"channel 'jwe': alg for profile {profile!r} must be one of "
                f"{ALLOWED_ALGS[profile]}, got {alg!r}"
            )
        self.profile = profile
        self.alg = alg
        self._dialect: UpstreamDialect | RfcDialect
        if profile == "upstream":
            self._dialect = UpstreamDialect(alg)
        else:
            self._dialect = RfcDialect(
                alg,
                ephemeral=EphemeralKeys(epk_reuse_seconds, epk_reuse_envelopes),
                keks=KekCache(kek_cache_entries),
            )

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        """Build from ``{"profile": ..., "alg": ..., "epk_reuse_seconds": ...,
        "epk_reuse_envelopes": ..., "kek_cache_entries": ...}`` (the last three: rfc profile
        only); unknown keys or bad values raise
        :class:`~trustflow_core.settings_schema.ConfigError`."""
        root = Node.settings(settings, "jwe channel settings").mapping(
            {"profile", "alg", *_ECDH_SETTINGS}
        )
        profile = root.get("profile").choice(PROFILES, "rfc")
        alg = root.get("alg").choice(ALLOWED_ALGS[profile], DEFAULT_ALGS[profile])
        if profile != "rfc":
            for name in _ECDH_SETTINGS:
                if root.get(name).present:
                    raise root.get(name).error("applies to the rfc profile only")
        return cls(
            profile,
            alg,
            epk_reuse_seconds=root.get("epk_reuse_seconds").number(DEFAULT_EPK_REUSE_SECONDS),
            epk_reuse_envelopes=root.get("epk_reuse_envelopes").integer(
                DEFAULT_EPK_REUSE_ENVELOPES, minimum=1
            ),
            kek_cache_entries=root.get("kek_cache_entries").integer(
                DEFAULT_KEK_CACHE_ENTRIES, minimum=0
            ),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(profile={self.profile!r}, alg={self.alg!r})"

    def seal(self, plaintext: bytes, recipient: EnvelopeRecipient) -> SealedEnvelope:
        return self._dialect.seal(plaintext, recipient)  # type: ignore[arg-type]

    def open(self, jwe: Jwe, private_key: EnvelopePrivateKey) -> OpenedEnvelope:
        try:
            return self._dialect.open(jwe, private_key)  # type: ignore[arg-type]
        except MalformedInput as exc:
            raise _envelope_error(exc) from None

    def seal_reply(self, plaintext: bytes, cek: bytes) -> Jwe:
        return self._dialect.seal_reply(plaintext, cek)

    def open_reply(self, jwe: Jwe, cek: bytes) -> bytes:
        try:
            return self._dialect.open_reply(jwe, cek)
        except MalformedInput as exc:
            raise _envelope_error(exc) from None

    def sign(
        self,
        payload: bytes,
        private_key: RSAPrivateKey,
        chain: Sequence[x509.Certificate] = (),
        *,
        claims: Mapping[str, Any] | None = None,
    ) -> Jws:
        return _jws.sign(payload, private_key, chain, claims=claims)

    def verify(self, jws: Jws, *, public_key: RSAPublicKey | None = None) -> VerifiedJws:
        try:
            return _jws.verify(jws, public_key)
        except MalformedInput as exc:
            raise _envelope_error(exc) from None
