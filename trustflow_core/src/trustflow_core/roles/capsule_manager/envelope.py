"""Opening ``EncryptedRequest``s, authenticating their JWS and sealing responses
(docs/compat.md#jwe-dialect, docs/compat.md#jws-dialect), on top of the ``jwe`` channel's upstream
profile.

Status codes follow upstream where the wire shows them: a known RFC 7518 ``alg`` we do not
transport keys with -> 2, ``A192GCM``/CBC ``enc`` -> 12, JWS ``HS256`` -> 3, ``ES*``/other
``HS*`` -> 12, ``none`` -> 2, everything else that fails to decode or decrypt -> 13.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from google.protobuf.message import Message

from ...channel import EnvelopeChannel, Jwe, Jws, VerifiedJws
from ...errors import EnvelopeError, InvalidInput
from ...identity import load_pem_chain, party_id_of_chain
from ...jose import MalformedInput, b64url_decode, parse_object
from ...proto.secretflowapis.v2 import status_pb2
from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2
from ...wire import parse_json, to_json
from .. import _metrics
from ..capsule_manager_protocol.errors import CMError, Kind
from ..capsule_manager_protocol.freshness import (
    DEFAULT_WINDOW,
    FreshnessWindow,
    check_claims,
    request_digest,
)
from ..capsule_manager_protocol.messages import jwe_message

KEY_ALGS = {"RSA-OAEP", "RSA-OAEP-256"}
OTHER_RFC_ALGS = {
    "dir",
    "A128KW",
    "A192KW",
    "A256KW",
    "A128GCMKW",
    "A192GCMKW",
    "A256GCMKW",
    "ECDH-ES",
    "ECDH-ES+A128KW",
    "ECDH-ES+A192KW",
    "ECDH-ES+A256KW",
    "PBES2-HS256+A128KW",
    "PBES2-HS384+A192KW",
    "PBES2-HS512+A256KW",
}
ENCS = {"A128GCM", "A256GCM"}
UNSUPPORTED_ENCS = {"A192GCM", "A128CBC-HS256", "A192CBC-HS384", "A256CBC-HS512"}
JWS_ALGS = {"RS256", "PS256"}
ROLE = "capsule-manager"
MAX_INNER_BYTES = 8 << 20


def _b64url(value: str, what: str) -> bytes:
    """Strict base64url (:mod:`trustflow_core.jose`); a Decode error (13) otherwise."""
    try:
        return b64url_decode(value, what)
    except MalformedInput as exc:
        raise CMError(Kind.DECODE, str(exc)) from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    """A strict JSON object (:mod:`trustflow_core.jose`; any whitespace, as the SDK
    pretty-prints); a Decode error (13) ``<what> is not JSON`` otherwise."""
    try:
        return parse_object(raw, what)
    except MalformedInput as exc:
        shape = "a JSON object" if exc.problem == "object" else "JSON"
        raise CMError(Kind.DECODE, f"{what} is not {shape}") from None


def _check_jwe_header(protected: str) -> None:
    header = _json_object(_b64url(protected, "JWE protected header"), "JWE protected header")
    alg, enc = header.get("alg"), header.get("enc")
    if not isinstance(alg, str) or not isinstance(enc, str):
        raise CMError(Kind.DECODE, "JWE protected header needs string alg and enc")
    if alg in OTHER_RFC_ALGS:
        raise CMError(Kind.UNKNOWN, f"unknown sign algorithm: {alg}")
    if alg == "RSA1_5":
        raise CMError(Kind.UNSUPPORTED, "RSA1_5 key transport is refused; use RSA-OAEP")
    if alg not in KEY_ALGS:
        raise CMError(Kind.DECODE, f"unknown JWE alg {alg!r}")
    if enc in UNSUPPORTED_ENCS:
        raise CMError(Kind.UNSUPPORTED, f"Unsupported encryption method: {enc}")
    if enc not in ENCS:
        raise CMError(Kind.DECODE, f"unknown JWE enc {enc!r}")


def _check_jws_header(header: dict[str, Any]) -> None:
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise CMError(Kind.DECODE, "JWS header has no alg")
    if alg in JWS_ALGS:
        return
    if alg == "HS256":
        raise CMError(Kind.INVALID_ARGUMENT, "Invalid secret type. A Bytes is required")
    if alg.startswith("HS"):
        raise CMError(Kind.UNSUPPORTED, "unsupport hmac now")
    if alg.startswith("ES"):
        raise CMError(Kind.UNSUPPORTED, "unsupport ecdsa now")
    if alg.lower() == "none":
        raise CMError(Kind.UNKNOWN, "JWS alg none is not accepted")
    raise CMError(Kind.UNSUPPORTED, f"JWS alg {alg} is not supported")


@dataclass(frozen=True)
class OpenedRequest:
    """A decrypted request: the inner request JSON, the JWS it came in (if any) and the
    envelope's ``iv``, ``tag`` and ``ciphertext`` (base64url, as sent) for :attr:`digest`."""

    inner: bytes
    jws: Jws | None
    jws_header: dict[str, Any] | None
    sealed: tuple[str, str, str]

    @property
    def digest(self) -> str:
        """The envelope's :func:`~.freshness.request_digest` (computed when asked: only owner
        requests are remembered by it)."""
        iv, tag, ciphertext = self.sealed
        return request_digest(
            _b64url(iv, "JWE iv"), _b64url(tag, "JWE tag"), _b64url(ciphertext, "JWE ciphertext")
        )

    def parse(self, message_cls: type[Any]) -> Any:
        """The inner request (proto field names; unknown keys ignored, as the Rust CM)."""
        try:
            return parse_json(self.inner, message_cls, ignore_unknown=True)
        except InvalidInput as exc:
            raise CMError(Kind.DECODE, str(exc)) from None


class Envelopes:
    """Opens requests addressed to the CM key and seals responses (RSA-OAEP SHA-1, A128GCM,
    12-byte IV, empty AAD -- the only form the C++ proxies can read). ``freshness`` bounds
    the ``iat`` claim of signed requests that carry one."""

    def __init__(
        self,
        channel: EnvelopeChannel,
        private_key: RSAPrivateKey,
        freshness: FreshnessWindow = DEFAULT_WINDOW,
    ) -> None:
        self._channel = channel
        self._key = private_key
        self._freshness = freshness

    def open(self, request: cm_pb2.EncryptedRequest) -> OpenedRequest:
        """Open ``request`` (and split its JWS, when signed); a refusal is a :class:`CMError`,
        counted in ``trustflow_jwe_failures_total`` by its kind."""
        try:
            return self._open(request)
        except CMError as err:
            _metrics.jwe_failure(ROLE, err.kind.name.lower())
            raise

    def _open(self, request: cm_pb2.EncryptedRequest) -> OpenedRequest:
        if not request.HasField("message"):
            raise CMError(Kind.NOT_FOUND, "Request content")
        m = request.message
        _check_jwe_header(m.protected_header)
        jwe = Jwe(m.protected_header, m.encrypted_key, m.iv, m.ciphertext, m.tag, m.aad)
        try:
            plaintext = self._channel.open(jwe, self._key).plaintext
        except EnvelopeError as exc:
            raise CMError(Kind.CRYPTO, str(exc)) from None
        if len(plaintext) > MAX_INNER_BYTES:
            raise CMError(Kind.DECODE, "request too large")
        sealed = (m.iv, m.tag, m.ciphertext)  # the channel decoded them strictly
        if not request.has_signature:
            return OpenedRequest(plaintext, None, None, sealed)
        obj = _json_object(plaintext, "JWS")
        members = {}
        for name in ("protected", "payload", "signature"):
            value = obj.get(name)
            if not isinstance(value, str):
                raise CMError(Kind.DECODE, f"JWS member {name} is missing")
            members[name] = value
        jws = Jws(**members)
        header = _json_object(_b64url(jws.protected, "JWS protected header"), "JWS header")
        payload = _b64url(jws.payload, "JWS payload")
        return OpenedRequest(payload, jws, header, sealed)

    def authenticate(self, opened: OpenedRequest, party_id: str, *, missing: Kind) -> VerifiedJws:
        """Verify the JWS (x5c chain, signature by x5c[0]), that ``party_id`` is the party
        id of the chain's last certificate and the freshness claims ``iat``/``jti`` when
        present (:func:`~.freshness.check_claims`). ``missing`` is the kind for an unsigned
        request."""
        if opened.jws is None or opened.jws_header is None:
            raise CMError(missing, "Missing signature")
        if "x5c" not in opened.jws_header:
            raise CMError(Kind.NOT_FOUND, f"party {party_id} public key is empty")
        _check_jws_header(opened.jws_header)
        try:
            verified = self._channel.verify(opened.jws)
        except EnvelopeError as exc:
            text = str(exc)
            kind = Kind.ASSERT if "does not sign" in text else Kind.CRYPTO
            raise CMError(kind, f"Signature verify failed. ({text})") from None
        if party_id_of_chain(verified.chain) != party_id:
            raise CMError(Kind.ASSERT, f"party_id {party_id} is wrong derived from public key")
        check_claims(verified.header, self._freshness)
        return verified

    def seal(self, inner: Message, recipient: RSAPublicKey) -> cm_pb2.EncryptedResponse:
        plaintext = to_json(inner, style="serde").encode("utf-8")
        jwe = self._channel.seal(plaintext, recipient).jwe
        return cm_pb2.EncryptedResponse(
            status=ok_status(),
            message=jwe_message(jwe),
        )


def ok_status() -> status_pb2.Status:
    return status_pb2.Status(code=0, message="success")


def error_status(err: CMError) -> status_pb2.Status:
    return status_pb2.Status(code=err.code, message=err.message)


@functools.lru_cache(maxsize=256)
def recipient_from_cert_pem(pem: str, what: str = "cert") -> RSAPublicKey:
    """The RSA key of the first certificate in ``pem`` (every certificate there must be
    readable); Crypto error (13) otherwise.

    Cached by the full PEM text (an app sends the same certificate with every request): the
    same text always holds the same key, and a text that is refused raises and is not kept."""
    try:
        key = load_pem_chain(pem.encode(), what)[0].public_key()
    except InvalidInput as exc:
        raise CMError(Kind.CRYPTO, str(exc)) from None
    if not isinstance(key, RSAPublicKey):
        raise CMError(Kind.CRYPTO, f"{what} does not hold an RSA public key")
    return key
