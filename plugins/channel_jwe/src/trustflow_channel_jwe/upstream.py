"""The upstream JWE dialect ("digital envelope", docs/compat.md#jwe-dialect).

What makes it a dialect rather than RFC 7516:

* the AES-GCM AAD is the decoded ``aad`` member (empty in practice), not ``ASCII(protected)``,
  so the protected header is **not** authenticated (docs/compat.md#jwe-aad-is-the-aad-member). To
  limit what an attacker can do with that, :meth:`UpstreamDialect.open` parses the header strictly
  and lets ``alg``/``enc`` pick the algorithms, so any change to them makes decryption fail;
* any GCM IV length is accepted on input (the Python SDK sends 32-byte IVs,
  docs/compat.md#jwe-any-iv-length); the ``cryptography`` library bounds it to 8..128 bytes;
* ``RSA-OAEP`` means SHA-1 OAEP (docs/compat.md#jwe-rsa-oaep-is-sha1); ``RSA1_5`` is refused (the
  upstream CM accepts it, docs/compat.md#jwe-rsa1-5-refused — refusing is the safer choice and no
  upstream client sends it);
* replies in the Envoy form reuse the request's CEK and carry ``encrypted_key = ""`` under a
  header that still says ``RSA-OAEP-256`` (docs/compat.md#jwe-reply-alg).
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from trustflow_core.channel import Jwe, OpenedEnvelope, SealedEnvelope
from trustflow_core.errors import EnvelopeError
from trustflow_core.jose import b64url_encode, compact_json, header_string

from .codec import decode_jwe, decode_protected, reject_unsupported_members

#: ``alg`` → OAEP hash (MGF1 uses the same hash, empty label).
OAEP_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "RSA-OAEP": hashes.SHA1,
    "RSA-OAEP-256": hashes.SHA256,
}
#: ``enc`` → CEK length in bytes.
GCM_KEY_BYTES: dict[str, int] = {"A128GCM": 16, "A256GCM": 32}
#: The ``alg`` the Envoy filter writes on replies, although no key is transported
#: (docs/compat.md#jwe-reply-alg).
REPLY_ALG = "RSA-OAEP-256"
SEAL_ENC = "A128GCM"
#: The protected header of an Envoy-form reply for each ``enc`` (always the same text).
_REPLY_PROTECTED = {
    enc: b64url_encode(compact_json({"alg": REPLY_ALG, "enc": enc})) for enc in GCM_KEY_BYTES
}
SEAL_IV_BYTES = 12
TAG_BYTES = 16
IV_BYTES_RANGE = (8, 128)


def _make_oaep(alg: str) -> padding.OAEP:
    hash_cls = OAEP_HASHES[alg]
    return padding.OAEP(mgf=padding.MGF1(hash_cls()), algorithm=hash_cls(), label=None)


#: The padding objects are immutable descriptions: built once, shared by every call.
_OAEP = {alg: _make_oaep(alg) for alg in OAEP_HASHES}


def oaep(alg: str) -> padding.OAEP:
    """OAEP padding for a key-transport ``alg`` name (``RSA-OAEP`` = SHA-1; MGF1 with the
    same hash, empty label)."""
    return _OAEP[alg]


def enc_for_key(cek: bytes) -> str:
    """The ``enc`` name for a CEK of this length."""
    for enc, size in GCM_KEY_BYTES.items():
        if len(cek) == size:
            return enc
    raise EnvelopeError(f"content key must be 16 or 32 bytes, got {len(cek)}")


def gcm_seal(
    cek: bytes, plaintext: bytes, iv_bytes: int = SEAL_IV_BYTES
) -> tuple[bytes, bytes, bytes]:
    """AES-GCM with a fresh IV and empty AAD; returns ``(iv, ciphertext, tag)``."""
    iv = os.urandom(iv_bytes)
    sealed = AESGCM(cek).encrypt(iv, plaintext, b"")
    return iv, sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]


def gcm_open(cek: bytes, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes) -> bytes:
    """AES-GCM decryption with a 16-byte tag and an IV of 8..128 bytes."""
    low, high = IV_BYTES_RANGE
    if not low <= len(iv) <= high:
        raise EnvelopeError(f"JWE iv must be {low}..{high} bytes, got {len(iv)}")
    if len(tag) != TAG_BYTES:
        raise EnvelopeError(f"JWE tag must be {TAG_BYTES} bytes, got {len(tag)}")
    try:
        return AESGCM(cek).decrypt(iv, ciphertext + tag, aad)
    except InvalidTag:
        raise EnvelopeError(
            "JWE does not authenticate: wrong content key, or iv/ciphertext/tag/aad altered"
        ) from None


def _request_header(jwe: Jwe) -> tuple[dict[str, Any], str, str]:
    header = decode_protected(jwe)
    reject_unsupported_members(header, "JWE protected header")
    alg = header_string(header, "alg", "JWE protected header")
    enc = header_string(header, "enc", "JWE protected header")
    if alg == "RSA1_5":
        raise EnvelopeError(
            "JWE alg 'RSA1_5' (RSAES-PKCS1-v1_5) is refused: it is open to padding-oracle "
            "attacks; use RSA-OAEP or RSA-OAEP-256"
        )
    if alg not in OAEP_HASHES:
        raise EnvelopeError(f"JWE alg {alg!r} is not supported; use one of {sorted(OAEP_HASHES)}")
    if enc not in GCM_KEY_BYTES:
        raise EnvelopeError(f"JWE enc {enc!r} is not supported; use one of {sorted(GCM_KEY_BYTES)}")
    return header, alg, enc


class UpstreamDialect:
    """JWE exactly as the upstream Capsule Manager, SDK, C++ proxies and Envoy filter speak it.

    ``alg`` is the key transport :meth:`seal` writes: ``RSA-OAEP`` (SHA-1; what the CM answers
    with and the only thing the C++ proxy can decrypt) or ``RSA-OAEP-256`` (what the SDK and
    ``jwe_client.py`` send, and the only thing an Envoy-style gateway accepts).
    """

    def __init__(self, alg: str = "RSA-OAEP") -> None:
        if alg not in OAEP_HASHES:
            raise ValueError(f"alg must be one of {sorted(OAEP_HASHES)}, got {alg!r}")
        self.alg = alg

    def seal(self, plaintext: bytes, recipient: RSAPublicKey) -> SealedEnvelope:
        """``{"alg":<alg>,"enc":"A128GCM"}`` compact, 16-byte CEK, 12-byte IV, empty aad."""
        if not isinstance(recipient, RSAPublicKey):
            raise EnvelopeError(f"recipient must be an RSA public key, got {type(recipient)}")
        cek = AESGCM.generate_key(bit_length=128)
        header = compact_json({"alg": self.alg, "enc": SEAL_ENC})
        iv, ciphertext, tag = gcm_seal(cek, plaintext)
        jwe = Jwe(
            protected=b64url_encode(header),
            encrypted_key=b64url_encode(recipient.encrypt(cek, oaep(self.alg))),
            iv=b64url_encode(iv),
            ciphertext=b64url_encode(ciphertext),
            tag=b64url_encode(tag),
            aad="",
        )
        return SealedEnvelope(jwe, cek)

    def open(self, jwe: Jwe, private_key: RSAPrivateKey) -> OpenedEnvelope:
        """Accept ``RSA-OAEP``/``RSA-OAEP-256`` with ``A128GCM``/``A256GCM`` (CEK length must
        match ``enc``), any header formatting, IV length 8..128, GCM AAD = decoded ``aad``."""
        if not isinstance(private_key, RSAPrivateKey):
            raise EnvelopeError(f"private key must be an RSA key, got {type(private_key)}")
        parts = decode_jwe(jwe)
        header, alg, enc = _request_header(jwe)
        try:
            cek = private_key.decrypt(parts.encrypted_key, oaep(alg))
        except ValueError:
            raise EnvelopeError(
                f"cannot decrypt JWE encrypted_key with {alg}: not for this key, or altered"
            ) from None
        if len(cek) != GCM_KEY_BYTES[enc]:
            raise EnvelopeError(
                f"JWE content key is {len(cek)} bytes but enc {enc!r} needs {GCM_KEY_BYTES[enc]}"
            )
        plaintext = gcm_open(cek, parts.iv, parts.ciphertext, parts.tag, parts.aad)
        return OpenedEnvelope(plaintext, MappingProxyType(header), cek)

    def seal_reply(self, plaintext: bytes, cek: bytes) -> Jwe:
        """The Envoy response form: compact ``{"alg":"RSA-OAEP-256","enc":<by CEK size>}``,
        ``encrypted_key = ""``, fresh 12-byte IV, empty aad, all six members."""
        protected = _REPLY_PROTECTED[enc_for_key(cek)]  # refuses a CEK of another size
        iv, ciphertext, tag = gcm_seal(cek, plaintext)
        return Jwe(
            protected=protected,
            encrypted_key="",
            iv=b64url_encode(iv),
            ciphertext=b64url_encode(ciphertext),
            tag=b64url_encode(tag),
            aad="",
        )

    def open_reply(self, jwe: Jwe, cek: bytes) -> bytes:
        """Decrypt an Envoy-form reply. Stricter than the upstream client (which ignores the
        header): ``alg`` must be ``RSA-OAEP-256``, ``enc`` must fit the CEK and
        ``encrypted_key`` must be empty."""
        parts = decode_jwe(jwe)
        header = decode_protected(jwe)
        reject_unsupported_members(header, "JWE protected header")
        alg = header_string(header, "alg", "JWE protected header")
        enc = header_string(header, "enc", "JWE protected header")
        if alg != REPLY_ALG:
            raise EnvelopeError(f"reply JWE alg must be {REPLY_ALG!r}, got {alg!r}")
        if enc != enc_for_key(cek):
            raise EnvelopeError(f"reply JWE enc {enc!r} does not fit a {len(cek)}-byte content key")
        if parts.encrypted_key:
            raise EnvelopeError("reply JWE must have an empty encrypted_key (it reuses the CEK)")
        return gcm_open(cek, parts.iv, parts.ciphertext, parts.tag, parts.aad)
