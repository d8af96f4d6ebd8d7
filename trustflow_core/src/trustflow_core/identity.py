"""Party identities: ``party_id = BASE32(SHA-256(DER SubjectPublicKeyInfo))`` without padding.

The party id of a certificate chain is that of its LAST certificate (crypto-formats §5).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from .errors import InvalidInput


def party_id_of_key(public_key: PublicKeyTypes) -> str:
    """The 52-character party id of a public key."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b32encode(hashlib.sha256(spki).digest()).decode().rstrip("=")


def party_id_of_chain(chain: Sequence[x509.Certificate]) -> str:
    """The party id of a chain: that of its last certificate."""
    if not chain:
        raise InvalidInput("a certificate chain needs at least one certificate")
    return party_id_of_key(chain[-1].public_key())


def load_pem_chain(pem: bytes) -> list[x509.Certificate]:
    """Parse every certificate in a PEM bundle, in file order."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise InvalidInput(f"not a PEM certificate bundle: {exc}") from exc
    return certs


def self_signed_cert(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    backdate: datetime.timedelta = datetime.timedelta(0),
    lifetime: datetime.timedelta = datetime.timedelta(days=365),
) -> x509.Certificate:
    """A self-signed certificate (SHA-256, random serial, no extensions) for ``key``: subject
    and issuer ``CN=common_name``, valid from now minus ``backdate`` until now plus
    ``lifetime``. The form of upstream's ``generate-rsa-keypair`` (crypto-formats §7)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(now + lifetime)
        .sign(key, hashes.SHA256())
    )
