"""Certificates broken in one way each, for testing every place that reads certificates from
the outside (``x5c`` entries, PEM chains in requests).

:func:`malformed_certificates` edits the DER of a valid certificate so that exactly one part
is unreadable: ``cryptography`` parses some of these parts lazily, so each kind fails at a
different moment (load, ``public_key()``, ``signature_hash_algorithm``) unless the reader
checks them up front. :func:`malformed_x5c_entries` adds the base64 mistakes of an ``x5c``
entry. :func:`write_app_identity` writes a well-formed app identity to files.
"""

from __future__ import annotations

import base64
import datetime
import os
import textwrap
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ..identity import self_signed_cert

_RSA_ENCRYPTION = bytes.fromhex("06092a864886f70d010101")  # OID 1.2.840.113549.1.1.1
_SHA256_WITH_RSA = bytes.fromhex("06092a864886f70d01010b")  # OID 1.2.840.113549.1.1.11
_UNKNOWN_OID_9 = bytes.fromhex("06092a864886f70d010163")  # OID 1.2.840.113549.1.1.99
_P256 = bytes.fromhex("06082a8648ce3d030107")  # OID 1.2.840.10045.3.1.7
_UNKNOWN_CURVE = bytes.fromhex("06082a8648ce3d030163")  # OID 1.2.840.10045.3.1.99
_VERSION_V3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2
_EXPONENT_65537 = bytes.fromhex("0203010001")


def _replace(der: bytes, old: bytes, new: bytes, count: int) -> bytes:
    if der.count(old) != count:
        raise ValueError(f"expected {count} occurrence(s) of {old.hex()} in the certificate")
    return der.replace(old, new)


def malformed_certificates(cert: x509.Certificate | None = None) -> dict[str, bytes]:
    """DER certificates, each unreadable in one way, made from ``cert`` (an RSA key and a
    SHA256-RSA signature, as upstream's self-signed certificates; a fresh one by default):

    ``unknown key algorithm``, ``unsupported curve`` (EC key on an unknown named curve),
    ``invalid RSA key`` (even public exponent), ``bad version`` (X.509 v6),
    ``unknown signature algorithm``, ``garbage DER``, ``truncated DER``."""
    if cert is None:
        cert = self_signed_cert(rsa.generate_private_key(65537, 2048), "malformed")
    der = cert.public_bytes(serialization.Encoding.DER)
    ec_der = self_signed_cert(ec.generate_private_key(ec.SECP256R1()), "malformed").public_bytes(
        serialization.Encoding.DER
    )
    return {
        "unknown key algorithm": _replace(der, _RSA_ENCRYPTION, _UNKNOWN_OID_9, 1),
        "unsupported curve": _replace(ec_der, _P256, _UNKNOWN_CURVE, 1),
        "invalid RSA key": _replace(der, _EXPONENT_65537, bytes.fromhex("0203010000"), 1),
        "bad version": _replace(der, _VERSION_V3, bytes.fromhex("a003020105"), 1),
        "unknown signature algorithm": _replace(der, _SHA256_WITH_RSA, _UNKNOWN_OID_9, 2),
        "garbage DER": b"\x30\x82\x01\x00" + bytes(range(256)),
        "truncated DER": der[: len(der) // 2],
    }


def malformed_x5c_entries(cert: x509.Certificate | None = None) -> dict[str, str]:
    """``x5c`` entries (standard base64 with padding of DER) that must all be refused: those
    of :func:`malformed_certificates`, plus a valid certificate in the wrong base64 (URL-safe
    alphabet, padding dropped, a stray character)."""
    entries = {k: base64.b64encode(v).decode() for k, v in malformed_certificates(cert).items()}
    good = base64.b64encode(
        (cert or self_signed_cert(rsa.generate_private_key(65537, 2048), "malformed")).public_bytes(
            serialization.Encoding.DER
        )
    ).decode()
    entries["base64url alphabet"] = good.replace("+", "-").replace("/", "_") + "-_"
    entries["padding dropped"] = good.rstrip("=") if good.endswith("=") else good[:-1]
    entries["stray character"] = good[:10] + "!" + good[10:]
    return entries


def to_pem(der: bytes) -> str:
    """``der`` in a ``CERTIFICATE`` PEM block (whether or not it is a valid certificate)."""
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


def write_app_identity(
    directory: Path, common_name: str = "carol", *, days: int = 30
) -> tuple[Path, Path]:
    """A fresh P-256 key (``app.key``, mode 0600) and a self-signed certificate (``app.crt``,
    valid from a day ago for ``days``) in ``directory``, as a TEE app's identity for the Data
    Capsule Proxy in tests and benchmarks; returns (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_cert(
        key,
        common_name,
        backdate=datetime.timedelta(days=1),
        lifetime=datetime.timedelta(days=days),
    )
    cert_path, key_path = directory / "app.crt", directory / "app.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    return cert_path, key_path
