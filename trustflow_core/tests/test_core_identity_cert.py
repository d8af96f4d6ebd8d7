"""identity.self_signed_cert: the one self-signed certificate builder of the project."""

from __future__ import annotations

import datetime

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from trustflow_core.identity import party_id_of_chain, party_id_of_key, self_signed_cert


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_self_signed_cert_names_signs_and_dates(kind: str) -> None:
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    before = datetime.datetime.now(datetime.timezone.utc)
    cert = self_signed_cert(
        key, "alice", backdate=datetime.timedelta(hours=2), lifetime=datetime.timedelta(days=3)
    )
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "alice" and cert.issuer == cert.subject
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    data, signature = cert.tbs_certificate_bytes, cert.signature
    if isinstance(key, rsa.RSAPrivateKey):
        key.public_key().verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        key.public_key().verify(signature, data, ec.ECDSA(hashes.SHA256()))
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert before - datetime.timedelta(hours=2, seconds=2) <= start <= before
    assert end - start == datetime.timedelta(days=3, hours=2)
    assert party_id_of_chain([cert]) == party_id_of_key(key.public_key())


def test_every_certificate_gets_its_own_serial() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert self_signed_cert(key, "a").serial_number != self_signed_cert(key, "a").serial_number
