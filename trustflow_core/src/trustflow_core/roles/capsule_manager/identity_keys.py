"""The CM's own key pair: loaded from PEM files, or generated once and saved (key 0600).

Several replicas can share one identity by sharing the two files, or by joining a running
replica (:mod:`.replicas`, docs/replicas.md). A generated certificate is
self-signed X.509 v3 like upstream (RSA-3072, subject C=CN, ST=HZ, L=HZ,
O=AntGroup, OU=SecretFlow, CN=CapsuleManager, CA:TRUE, 365 days) without its defects
(docs/compat.md#cm-certificate): fixed RDN order, a random positive serial, and key usages that
include the RSA encryption the key is used for.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ...errors import InvalidInput
from ...fileio import atomic_write_bytes
from ...identity import party_id_of_key

RSA_BITS = 3072
SUBJECT = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "HZ"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "HZ"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AntGroup"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "SecretFlow"),
        x509.NameAttribute(NameOID.COMMON_NAME, "CapsuleManager"),
    ]
)


@dataclass(frozen=True)
class CMIdentity:
    """The CM key pair; ``cert_pem`` is the exact text GetRaCert returns and clients hash."""

    private_key: rsa.RSAPrivateKey = field(repr=False)
    cert_pem: str

    @property
    def party_id(self) -> str:
        return party_id_of_key(self.private_key.public_key())


def generate() -> CMIdentity:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(SUBJECT)
        .issuer_name(SUBJECT)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CMIdentity(key, cert.public_bytes(serialization.Encoding.PEM).decode())


def load(key_file: Path, cert_file: Path) -> CMIdentity:
    """Load a PEM private key (PKCS#8 or PKCS#1, unencrypted) and its certificate."""
    return from_pem(key_file.read_bytes(), cert_file.read_text(), f"{key_file} / {cert_file}")


def from_pem(key_pem: bytes, cert_pem: str, what: str) -> CMIdentity:
    """The identity of a PEM private key (RSA, unencrypted) and its certificate, which must hold
    the key's public key; ``what`` names their origin in errors (:class:`InvalidInput`)."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        x509.load_pem_x509_certificate(cert_pem.encode())
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"CM key pair {what} cannot be loaded: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidInput(f"CM private key {what} is not an RSA key")
    if not same_public_key(cert_pem, key.public_key()):
        raise InvalidInput(f"CM certificate does not match the key ({what})")
    return CMIdentity(key, cert_pem)


def same_public_key(cert_pem: str, key: rsa.RSAPublicKey) -> bool:
    """Whether the certificate ``cert_pem`` certifies ``key`` (False for an unparsable one)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        return False
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_bytes(*spki)


def private_key_pem(ident: CMIdentity) -> bytes:
    """The identity's private key as unencrypted PKCS#8 PEM (a secret: never log it)."""
    return ident.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def save(ident: CMIdentity, key_file: Path, cert_file: Path) -> None:
    """Write the key (mode 0600) and the certificate (0644), each atomically."""
    key_file.parent.mkdir(parents=True, exist_ok=True)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(key_file, private_key_pem(ident), mode=0o600)
    atomic_write_bytes(cert_file, ident.cert_pem.encode(), mode=0o644)


def load_or_create(key_file: Path, cert_file: Path) -> CMIdentity:
    """Load both files; when neither exists, generate a pair and save it (key mode 0600).
    Exactly one existing file is an error (a half-configured identity)."""
    have_key, have_cert = key_file.exists(), cert_file.exists()
    if have_key and have_cert:
        return load(key_file, cert_file)
    if have_key or have_cert:
        missing = cert_file if have_key else key_file
        raise InvalidInput(f"CM key pair incomplete: {missing} is missing")
    ident = generate()
    save(ident, key_file, cert_file)
    return ident
