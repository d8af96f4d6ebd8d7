"""Certificate chains as the Capsule Manager checks them (docs/compat.md#x5c-chain-signature-only).

A chain is leaf first; certificate *i* must be signed by certificate *i+1*. Only signatures
are checked (no validity period, CA flag, key usage or trust anchor), because upstream clients
use short-lived self-signed certificates. Identity = party id of the LAST certificate.
A certificate that cannot be read completely (:func:`trustflow_core.identity.load_pem_chain`)
is a Crypto error (13) naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ...errors import InvalidInput
from ...identity import load_pem_chain, party_id_of_chain, signed_by
from .errors import CMError, Kind

MAX_CHAIN = 10


def check_chain(chain: Sequence[x509.Certificate]) -> None:
    """Raise :class:`CMError` (Assert, 13) unless every certificate is signed by the next."""
    if not chain:
        raise CMError(Kind.ASSERT, "cert chain is empty")
    if len(chain) > MAX_CHAIN:
        raise CMError(Kind.ASSERT, f"cert chain longer than {MAX_CHAIN}")
    for i in range(len(chain) - 1):
        if not signed_by(chain[i], chain[i + 1]):
            raise CMError(Kind.ASSERT, f"certification-{i} verify signature failed")


def load_pem_list(pems: Sequence[str], what: str = "certs") -> list[x509.Certificate]:
    """Parse a list of PEM strings (each may hold several certificates), in order; every
    certificate must be fully readable, else Crypto error naming the entry."""
    chain: list[x509.Certificate] = []
    for i, pem in enumerate(pems):
        if not isinstance(pem, str):
            raise CMError(Kind.DECODE, f"{what}[{i}] is not a string")
        try:
            chain.extend(load_pem_chain(pem.encode(), f"{what}[{i}]"))
        except InvalidInput as exc:
            raise CMError(Kind.CRYPTO, str(exc)) from None
    return chain


def verified_chain_party(
    pems: Sequence[str], what: str = "certs"
) -> tuple[list[x509.Certificate], str]:
    """Parse and check a PEM chain; return it and its party id."""
    chain = load_pem_list(pems, what)
    check_chain(chain)
    return chain, party_id_of_chain(chain)


def spki_pem(cert: x509.Certificate) -> str:
    return (
        cert.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def rsa_public_key(cert: x509.Certificate, what: str) -> rsa.RSAPublicKey:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise CMError(Kind.CRYPTO, f"{what} does not hold an RSA public key")
    return key


def rs256_verify(key: rsa.RSAPublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def rs256_sign(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
