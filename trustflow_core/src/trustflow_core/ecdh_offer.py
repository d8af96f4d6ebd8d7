"""The app's ECDH offer: a P-256 key-agreement certificate served after the RSA certificate.

An online app that can open ``ECDH-ES+A128KW`` envelopes (the ``jwe`` channel's ``rfc``
profile) offers its P-256 public key by having the RA Proxy serve a second certificate after
its RSA certificate in ``GetRaCert``'s ``cert``. The report binds
``SHA-256(cert || "." || nonce)`` over the whole ``cert`` text, so the offer is bound exactly
as the RSA key is (docs/compat.md#report-binding) and no byte of it can be added, changed or
removed without the client refusing the report. Upstream clients read the first certificate
only and keep using RSA.

A certificate is an offer when it is not the first one, its key is EC P-256 and it carries a
critical ``keyUsage`` extension with ``keyAgreement`` and neither ``keyCertSign`` nor
``digitalSignature``: so a CA certificate of a chain is never mistaken for one. More than one
offer is refused as ambiguous (docs/online.md#ecdh-profile).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import VerificationError
from .identity import self_signed_cert

OFFER_COMMON_NAME = "trustflow-ecdh"
KEY_AGREEMENT_ONLY = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=True,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def offer_certificate(
    key: ec.EllipticCurvePrivateKey,
    *,
    backdate: datetime.timedelta = datetime.timedelta(days=1),
    lifetime: datetime.timedelta = datetime.timedelta(days=365),
) -> x509.Certificate:
    """A self-signed certificate for the P-256 ``key`` marked as a key-agreement offer
    (``CN=trustflow-ecdh``, critical ``keyUsage = keyAgreement``)."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"the ECDH key must be on P-256, got {key.curve.name}")
    return self_signed_cert(
        key,
        OFFER_COMMON_NAME,
        backdate=backdate,
        lifetime=lifetime,
        critical_extensions=(KEY_AGREEMENT_ONLY,),
    )


def is_offer(cert: x509.Certificate) -> bool:
    """Whether ``cert`` is marked as an ECDH offer (module docstring)."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return False
    try:
        ext = cert.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        return False
    usage = ext.value
    return (
        ext.critical
        and usage.key_agreement
        and not usage.key_cert_sign
        and not usage.digital_signature
    )


def find_offer(certs: Sequence[x509.Certificate]) -> ec.EllipticCurvePublicKey | None:
    """The offered P-256 key among ``certs[1:]`` (the first certificate is the RSA one), None
    when there is none; two offers raise :class:`VerificationError` (check ``cert``)."""
    offers = [c for c in certs[1:] if is_offer(c)]
    if len(offers) > 1:
        raise VerificationError("cert", f"GetRaCert cert holds {len(offers)} ECDH offers, not 1")
    if not offers:
        return None
    key = offers[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # is_offer checked it
    return key
