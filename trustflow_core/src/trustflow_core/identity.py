"""Party identities: ``party_id = BASE32(SHA-256(DER SubjectPublicKeyInfo))`` without padding.

The party id of a certificate chain is that of its LAST certificate
(docs/compat.md#party-id-last-cert).

Certificates from the outside (``x5c``, PEM chains in requests and files) are loaded with
:func:`load_der_certificate` / :func:`load_pem_chain`: ``cryptography`` decodes the public key
and the signature algorithm only when they are first used, so these read both at once and turn
every way a certificate can be unreadable (bad DER or version, unknown key or signature
algorithm, invalid key) into :class:`~trustflow_core.errors.InvalidInput` with a one-line
reason, before any caller relies on the certificate.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
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


#: What ``cryptography`` raises for a certificate it cannot read.
_CERT_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def checked_certificate(cert: x509.Certificate, what: str) -> x509.Certificate:
    """``cert`` after decoding its public key and signature algorithm (the parts every
    certificate check reads); :class:`InvalidInput` ``"<what>: <reason>"`` if either is
    unreadable."""
    try:
        cert.public_key()
        _ = cert.signature_hash_algorithm, cert.signature_algorithm_parameters
    except _CERT_ERRORS as exc:
        raise InvalidInput(f"{what}: {_one_line(exc)}") from None
    return cert


def load_der_certificate(der: bytes, what: str = "certificate") -> x509.Certificate:
    """One DER X.509 certificate, fully readable (:func:`checked_certificate`), else
    :class:`InvalidInput` naming ``what``."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except _CERT_ERRORS as exc:
        raise InvalidInput(f"{what}: not a DER X.509 certificate ({_one_line(exc)})") from None
    return checked_certificate(cert, what)


def load_pem_chain(pem: bytes, what: str = "certificate bundle") -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in file order, each fully readable
    (:func:`checked_certificate`), else :class:`InvalidInput` naming ``what``."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except _CERT_ERRORS as exc:
        raise InvalidInput(f"{what}: unreadable PEM certificate ({_one_line(exc)})") from None
    return [checked_certificate(c, f"{what}, certificate {i}") for i, c in enumerate(certs)]


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key verifies ``cert``'s signature (RSA PKCS#1 v1.5 / PSS, ECDSA,
    Ed25519, Ed448). Nothing else is checked: no names, validity, CA flag or key usage."""
    data, signature = cert.tbs_certificate_bytes, cert.signature
    try:
        key = issuer.public_key()
        params = cert.signature_algorithm_parameters
        hash_alg = cert.signature_hash_algorithm
        if isinstance(key, rsa.RSAPublicKey) and isinstance(params, padding.AsymmetricPadding):
            if hash_alg is None:
                return False
            key.verify(signature, data, params, hash_alg)
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
            key.verify(signature, data, params)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, *_CERT_ERRORS):
        return False
    return True


def self_signed_cert(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    backdate: datetime.timedelta = datetime.timedelta(0),
    lifetime: datetime.timedelta = datetime.timedelta(days=365),
    critical_extensions: tuple[x509.ExtensionType, ...] = (),
) -> x509.Certificate:
    """A self-signed certificate (SHA-256, random serial) for ``key``: subject and issuer
    ``CN=common_name``, valid from now minus ``backdate`` until now plus ``lifetime``, with
    ``critical_extensions`` only (none: the form of upstream's ``generate-rsa-keypair``,
    docs/compat.md#cm-certificate)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(now + lifetime)
    )
    for extension in critical_extensions:
        builder = builder.add_extension(extension, critical=True)
    return builder.sign(key, hashes.SHA256())
