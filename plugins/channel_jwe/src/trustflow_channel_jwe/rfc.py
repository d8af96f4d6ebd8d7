"""The RFC 7516 profile: flattened JSON JWE with the same six member names, built with jwcrypto.

Unlike the upstream dialect, the GCM AAD is ``ASCII(protected)`` (plus ``"." + aad`` when the
``aad`` member is present), so every byte of every member is authenticated. Requests use
``RSA-OAEP-256`` (or ``RSA-OAEP``) key transport; replies use ``alg: "dir"`` under the
request's content key. IVs must be 96 bits and tags 128 bits (RFC 7518 §5.3). As in the
``Jwe`` dataclass, an empty member means an absent one (``aad``; ``encrypted_key`` with
``dir``): drop empty members before handing the JSON to another RFC 7516 library.

Every request :meth:`RfcDialect.seal` writes carries ``iat`` (seconds since the epoch) and
``jti`` (128 random bits, base64url) in its protected header, so a receiver can refuse a
replayed or stale envelope (the gateway does: ``roles/gateway/freshness.py``); the header is
authenticated, so neither can be changed without breaking the envelope. ``open`` returns
them with the rest of the header and checks nothing about them itself.

Sealing uses :class:`jwcrypto.jwe.JWE`. Opening uses jwcrypto's JWA algorithm objects on
strictly decoded members: ``JWE.decrypt`` cannot return an empty plaintext (it treats ``b""``
as failure), and its base64url decoder is lenient.
"""

from __future__ import annotations

import json
import secrets
import time
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwcrypto.common import JWException
from jwcrypto.jwa import JWA
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK
from trustflow_core.channel import Jwe, OpenedEnvelope, SealedEnvelope
from trustflow_core.errors import EnvelopeError
from trustflow_core.jose import b64url_encode, compact_json, header_string, parse_object

from .codec import DecodedJwe, decode_jwe, reject_unsupported_members

KEY_ALGS = ("RSA-OAEP-256", "RSA-OAEP")
GCM_KEY_BYTES: dict[str, int] = {"A128GCM": 16, "A192GCM": 24, "A256GCM": 32}
DEFAULT_ENC = "A256GCM"
IV_BYTES = 12
TAG_BYTES = 16


def _enc_for_key(cek: bytes) -> str:
    for enc, size in GCM_KEY_BYTES.items():
        if len(cek) == size:
            return enc
    raise EnvelopeError(f"content key must be 16, 24 or 32 bytes, got {len(cek)}")


def _header(parts: DecodedJwe, algs: tuple[str, ...]) -> tuple[dict[str, Any], str, str]:
    header = parse_object(parts.header_json, "JWE protected header")
    reject_unsupported_members(header, "JWE protected header")
    alg = header_string(header, "alg", "JWE protected header")
    enc = header_string(header, "enc", "JWE protected header")
    if alg not in algs:
        raise EnvelopeError(f"JWE alg {alg!r} is not accepted here; expected one of {list(algs)}")
    if enc not in GCM_KEY_BYTES:
        raise EnvelopeError(f"JWE enc {enc!r} is not supported; use one of {sorted(GCM_KEY_BYTES)}")
    if len(parts.iv) != IV_BYTES:
        raise EnvelopeError(f"JWE iv must be {IV_BYTES} bytes, got {len(parts.iv)}")
    if len(parts.tag) != TAG_BYTES:
        raise EnvelopeError(f"JWE tag must be {TAG_BYTES} bytes, got {len(parts.tag)}")
    return header, alg, enc


def _decrypt_content(jwe: Jwe, parts: DecodedJwe, enc: str, cek: bytes) -> bytes:
    aad = jwe.protected.encode("ascii")
    if jwe.aad:
        aad += b"." + jwe.aad.encode("ascii")
    try:
        plaintext: bytes = JWA.encryption_alg(enc).decrypt(
            cek, aad, parts.iv, parts.ciphertext, parts.tag
        )
        return plaintext
    except InvalidTag:
        raise EnvelopeError(
            "JWE does not authenticate: wrong content key, or a member was altered"
        ) from None


def _to_jwe(token: JWE) -> Jwe:
    return Jwe.from_dict(json.loads(token.serialize()))


class RfcDialect:
    """RFC 7516 JWE (flattened JSON members) with ``alg`` key transport and ``enc`` content
    encryption for requests, ``dir`` for replies."""

    def __init__(self, alg: str = "RSA-OAEP-256", enc: str = DEFAULT_ENC) -> None:
        if alg not in KEY_ALGS:
            raise ValueError(f"alg must be one of {list(KEY_ALGS)}, got {alg!r}")
        if enc not in GCM_KEY_BYTES:
            raise ValueError(f"enc must be one of {sorted(GCM_KEY_BYTES)}, got {enc!r}")
        self.alg = alg
        self.enc = enc

    def seal(self, plaintext: bytes, recipient: RSAPublicKey) -> SealedEnvelope:
        if not isinstance(recipient, RSAPublicKey):
            raise EnvelopeError(f"recipient must be an RSA public key, got {type(recipient)}")
        header = {
            "alg": self.alg,
            "enc": self.enc,
            "iat": int(time.time()),
            "jti": secrets.token_urlsafe(16),
        }
        protected = compact_json(header).decode("ascii")
        token = JWE(plaintext, protected=protected, algs=[self.alg, self.enc])
        token.add_recipient(JWK.from_pyca(recipient))
        return SealedEnvelope(_to_jwe(token), token.cek)

    def open(self, jwe: Jwe, private_key: RSAPrivateKey) -> OpenedEnvelope:
        if not isinstance(private_key, RSAPrivateKey):
            raise EnvelopeError(f"private key must be an RSA key, got {type(private_key)}")
        parts = decode_jwe(jwe)
        header, alg, enc = _header(parts, KEY_ALGS)
        content = JWA.encryption_alg(enc)
        try:
            cek = JWA.keymgmt_alg(alg).unwrap(
                JWK.from_pyca(private_key), content.wrap_key_size, parts.encrypted_key, header
            )
        except (ValueError, JWException):
            raise EnvelopeError(
                f"cannot decrypt JWE encrypted_key with {alg}: not for this key, or altered"
            ) from None
        plaintext = _decrypt_content(jwe, parts, enc, cek)
        return OpenedEnvelope(plaintext, MappingProxyType(header), cek)

    def seal_reply(self, plaintext: bytes, cek: bytes) -> Jwe:
        protected = compact_json({"alg": "dir", "enc": _enc_for_key(cek)}).decode("ascii")
        token = JWE(plaintext, protected=protected, algs=["dir", _enc_for_key(cek)])
        token.add_recipient(JWK(kty="oct", k=b64url_encode(cek)))
        return _to_jwe(token)

    def open_reply(self, jwe: Jwe, cek: bytes) -> bytes:
        parts = decode_jwe(jwe)
        _, _, enc = _header(parts, ("dir",))
        if enc != _enc_for_key(cek):
            raise EnvelopeError(f"reply JWE enc {enc!r} does not fit a {len(cek)}-byte content key")
        if parts.encrypted_key:
            raise EnvelopeError("reply JWE with alg 'dir' must have an empty encrypted_key")
        return _decrypt_content(jwe, parts, enc, cek)
