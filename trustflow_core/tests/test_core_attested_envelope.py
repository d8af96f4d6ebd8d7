"""tee_sim + channel_jwe, assembled only through the registry: the online-service handshake.

The app attests with a report bound to SHA-256(cert || "." || nonce); the client verifies it
against its policy, takes the app key from the attested certificate, seals a request with the
JWE channel; the app opens it and seals the reply under the request's content key.
"""

from __future__ import annotations

import datetime
import secrets

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from trustflow_core.attestation import Policy, Report, ra_user_data
from trustflow_core.errors import VerificationError
from trustflow_core.identity import self_signed_cert
from trustflow_core.registry import ATTESTER, ENVELOPE_CHANNEL, backend_class, verifier_for_platform

pytestmark = [pytest.mark.asyncio, pytest.mark.plugins()]


@pytest.fixture(scope="module")
def app_identity():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed_cert(
        key, "teeapp", backdate=datetime.timedelta(days=1), lifetime=datetime.timedelta(days=30)
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


async def _app_side_get_ra_cert(pm, cert_pem: bytes, nonce: str) -> dict:
    attester = backend_class(pm, ATTESTER, "sim").from_settings({})
    async with attester:
        report = await attester.generate(ra_user_data(cert_pem, nonce.encode()))
    return {"cert": cert_pem.decode(), "attestation_report": report.to_dict()}


@pytest.mark.parametrize("profile", ["rfc", "upstream"])
async def test_client_verifies_app_then_exchanges_sealed_messages(pm, app_identity, profile):
    app_key, cert_pem = app_identity
    nonce = secrets.token_hex(16)
    reply = await _app_side_get_ra_cert(pm, cert_pem, nonce)

    report = Report.from_dict(reply["attestation_report"])
    verifier = verifier_for_platform(pm, report.str_tee_platform).from_settings({})
    policy = Policy(allow_simulation=True).with_user_data(
        ra_user_data(reply["cert"].encode(), nonce.encode())
    )
    async with verifier:
        verified = await verifier.verify(report, policy)
    assert verified.simulated

    app_public_key = x509.load_pem_x509_certificate(reply["cert"].encode()).public_key()
    channel = backend_class(pm, ENVELOPE_CHANNEL, "jwe").from_settings({"profile": profile})
    sealed = channel.seal(b'{"message": "hello"}', app_public_key)
    opened = channel.open(sealed.jwe, app_key)
    assert opened.plaintext == b'{"message": "hello"}'
    answer = channel.seal_reply(b"I got your message: " + opened.plaintext, opened.cek)
    assert channel.open_reply(answer, sealed.cek) == b'I got your message: {"message": "hello"}'


async def test_report_for_another_nonce_is_refused(pm, app_identity):
    _, cert_pem = app_identity
    reply = await _app_side_get_ra_cert(pm, cert_pem, "nonce-the-app-saw")
    report = Report.from_dict(reply["attestation_report"])
    verifier = verifier_for_platform(pm, report.str_tee_platform).from_settings({})
    policy = Policy(allow_simulation=True).with_user_data(
        ra_user_data(cert_pem, b"nonce-the-client-sent")
    )
    with pytest.raises(VerificationError) as info:
        await verifier.verify(report, policy)
    assert info.value.check == "policy"
    assert "hex_user_data" in str(info.value)


async def test_sim_report_is_refused_when_the_policy_wants_hardware(pm, app_identity):
    _, cert_pem = app_identity
    reply = await _app_side_get_ra_cert(pm, cert_pem, "n")
    report = Report.from_dict(reply["attestation_report"])
    verifier = verifier_for_platform(pm, report.str_tee_platform).from_settings({})
    with pytest.raises(VerificationError) as info:
        await verifier.verify(report, Policy().with_user_data(ra_user_data(cert_pem, b"n")))
    assert info.value.check == "simulation"
