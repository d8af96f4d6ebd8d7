"""Upstream peers, written from docs/compat.md#jwe-dialect with raw
``cryptography`` calls, independently of the plugin code. Imported by the channel_jwe tests.
"""

from __future__ import annotations

import base64
import json
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CM_RESPONSE_HEADER = b'{"alg":"RSA-OAEP","enc":"A128GCM"}'
ENVOY_REPLY_HEADER = b'{"alg":"RSA-OAEP-256","enc":"A128GCM"}'
PAYLOAD = b'{"data_key":{"resource_uri":"u","data_key_b64":"k=="}}'


def unpadded_url_decode(value: str) -> bytes:
    """cppcodec base64_url_unpadded, roughly: url alphabet, no '=' allowed."""
    assert "=" not in value and "+" not in value and "/" not in value
    return base64.b64decode(
        value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4), validate=True
    )


def oaep(hash_alg: hashes.HashAlgorithm) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hash_alg), algorithm=hash_alg, label=None)


def cxx_proxy_open_cm_response(jwe: dict[str, str], key: RSAPrivateKey) -> bytes:
    """C++ proxy parsing a CM response: header must hold only alg/enc (values ignored),
    SHA-1 OAEP always, AES-128 (16-byte CEK), IV exactly 12 bytes, AAD = decoded aad."""
    header = json.loads(unpadded_url_decode(jwe["protected"]))
    assert set(header) == {"alg", "enc"}
    cek = key.decrypt(unpadded_url_decode(jwe["encrypted_key"]), oaep(hashes.SHA1()))
    iv = unpadded_url_decode(jwe["iv"])
    assert len(cek) == 16 and len(iv) == 12
    sealed = unpadded_url_decode(jwe["ciphertext"]) + unpadded_url_decode(jwe["tag"])
    return AESGCM(cek).decrypt(iv, sealed, unpadded_url_decode(jwe.get("aad", "")))


def sdk_open_cm_response(jwe: dict[str, str], key: RSAPrivateKey) -> bytes:
    """Python SDK: alg RSA-OAEP → SHA-1, RSA-OAEP-256 → SHA-256, enc ignored, any IV."""
    header = json.loads(base64.urlsafe_b64decode(jwe["protected"] + "=="))
    hash_alg = {"RSA-OAEP": hashes.SHA1(), "RSA-OAEP-256": hashes.SHA256()}[header["alg"]]
    pad = lambda v: v + "=" * (-len(v) % 4)  # noqa: E731
    cek = key.decrypt(base64.urlsafe_b64decode(pad(jwe["encrypted_key"])), oaep(hash_alg))
    iv = base64.urlsafe_b64decode(pad(jwe["iv"]))
    sealed = base64.urlsafe_b64decode(pad(jwe["ciphertext"])) + base64.urlsafe_b64decode(
        pad(jwe["tag"])
    )
    return AESGCM(cek).decrypt(iv, sealed, base64.urlsafe_b64decode(pad(jwe.get("aad", ""))))


def envoy_open_request(jwe: dict[str, str], key: RSAPrivateKey) -> tuple[bytes, bytes]:
    """Envoy JWE filter: protected not read, SHA-256 OAEP, 16-byte CEK, 12-byte IV."""
    cek = key.decrypt(unpadded_url_decode(jwe["encrypted_key"]), oaep(hashes.SHA256()))
    iv = unpadded_url_decode(jwe["iv"])
    assert len(cek) == 16 and len(iv) == 12
    sealed = unpadded_url_decode(jwe["ciphertext"]) + unpadded_url_decode(jwe["tag"])
    return AESGCM(cek).decrypt(iv, sealed, unpadded_url_decode(jwe.get("aad", ""))), cek


def jwe_client_open_reply(jwe: dict[str, str], cek: bytes) -> bytes:
    """jwe_client.py: ignore header and encrypted_key, AES-GCM with its own CEK."""
    iv = unpadded_url_decode(jwe["iv"])
    sealed = unpadded_url_decode(jwe["ciphertext"]) + unpadded_url_decode(jwe["tag"])
    return AESGCM(cek).decrypt(iv, sealed, unpadded_url_decode(jwe["aad"]))


def jwe_client_request(body: bytes, key: RSAPrivateKey) -> tuple[dict[str, str], bytes]:
    """What jwe_client.py posts: json.dumps header (with spaces), SHA-256 OAEP, 12-byte IV,
    all six members including an empty aad."""
    cek, iv = AESGCM.generate_key(bit_length=128), os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, body, b"")
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    header = json.dumps({"alg": "RSA-OAEP-256", "enc": "A128GCM"}).encode()
    ek = key.public_key().encrypt(cek, oaep(hashes.SHA256()))
    return {
        "protected": enc(header),
        "encrypted_key": enc(ek),
        "iv": enc(iv),
        "ciphertext": enc(sealed[:-16]),
        "tag": enc(sealed[-16:]),
        "aad": "",
    }, cek
