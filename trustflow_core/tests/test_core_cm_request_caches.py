"""The caches on GetDataKeys' path (docs/replica-state.md "What a replica keeps in memory"),
through the real server on 127.0.0.1: an app certificate's key (``envelope.
recipient_from_cert_pem``) and a sim report's verified format and signature (``tee_sim``) are
kept by their full text, so a certificate or a report that differs in one byte from one the CM
has just served is read and verified again, not answered from the cache."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from trustflow_core.attestation import ra_user_data
from trustflow_core.errors import EnvelopeError
from trustflow_core.harness.cm_world import CMWorld, data_key_b64, grant_rule, new_data_uuid
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.registry import ATTESTER, backend_class
from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerError
from trustflow_core.roles.capsule_manager_protocol.reports import report_to_pb
from trustflow_core.wire import serialize_canonical

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def granted(w: CMWorld) -> cm_pb2.ResourceRequest:
    """A data key of alice's that bob's app may have; the resource request for it."""
    uuid = new_data_uuid()
    await w.client.create_data_keys(w.alice, [(uuid, data_key_b64())])
    await w.client.create_data_policy(w.alice, "default", uuid, [grant_rule(w.bob.party_id)])
    rr = cm_pb2.ResourceRequest(initiator_party_id=w.bob.party_id, scope="default", op_name="psi")
    rr.resources.add(resource_uri=uuid)
    return rr


async def report_for(w: CMWorld, cert_pem: str, rr: cm_pb2.ResourceRequest) -> Any:
    attester = backend_class(w.pm, ATTESTER, "sim").from_settings()
    digest = ra_user_data(cert_pem.encode(), serialize_canonical(rr))
    return report_to_pb(await attester.generate(digest))


async def send(w: CMWorld, cert_pem: str, rr: cm_pb2.ResourceRequest, report: Any) -> Any:
    """The raw EncryptedResponse of a GetDataKeys from bob's app with ``cert_pem``."""
    req = cm_pb2.GetDataKeysRequest(cert=cert_pem, resource_request=rr)
    req.attestation_report.CopyFrom(report)
    response, _ = await w.client._send("GetDataKeys", await w.client.envelope(req, w.app))
    return response


def with_der_byte_changed(pem: str, index: int) -> str:
    """``pem`` with the DER byte at ``index`` (negative: from the modulus' middle) XOR 1."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    if index < 0:
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        modulus = key.public_numbers().n.to_bytes(key.key_size // 8, "big")
        index = der.index(modulus) + len(modulus) // 2
    der[index] ^= 1
    body = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


async def test_a_report_one_byte_away_from_a_served_one_is_verified_again(
    cm_world: CMWorld,
) -> None:
    w = cm_world
    rr = await granted(w)
    cert = w.app.chain_pems[0]
    report = await report_for(w, cert, rr)
    for _ in range(2):  # the second time from the cache
        assert (await send(w, cert, rr, report)).status.code == 0
    text = report.json_report
    for marker in ('"hex_signature":"', '"str_timestamp\\":\\"', '"hex_ta_measurement\\":\\"'):
        at = text.index(marker) + len(marker) + 3
        changed = type(report)()
        changed.CopyFrom(report)
        changed.json_report = text[:at] + ("1" if text[at] != "1" else "2") + text[at + 1 :]
        response = await send(w, cert, rr, changed)
        assert response.status.code == 7, (marker, response.status.message)
        assert "attestation report verify failed" in response.status.message
    # the served report, bound to another request of the same app, is refused
    other = cm_pb2.ResourceRequest()
    other.CopyFrom(rr)
    other.op_name = "xgb"
    response = await send(w, cert, other, report)
    assert response.status.code == 7 and "hex_user_data" in response.status.message


async def test_a_certificate_one_byte_away_from_a_served_one_is_read_again(
    cm_world: CMWorld,
) -> None:
    w = cm_world
    rr = await granted(w)
    cert = w.app.chain_pems[0]
    report = await report_for(w, cert, rr)
    for _ in range(2):  # the second time the key comes from the cache
        response = await send(w, cert, rr, report)
        assert response.status.code == 0
        assert w.client._open(response, w.app, cm_pb2.GetDataKeysResponse).data_keys
    # one byte of the modulus changed (and a report bound to that certificate): the reply is
    # sealed to the changed key, which the app's private key cannot open
    changed = with_der_byte_changed(cert, -1)
    response = await send(w, changed, rr, await report_for(w, changed, rr))
    assert response.status.code == 0
    with pytest.raises(EnvelopeError):
        w.client._open(response, w.app, cm_pb2.GetDataKeysResponse)
    # one byte of the DER's outer tag changed: the text is refused, as it always was
    unreadable = with_der_byte_changed(cert, 0)
    response = await send(w, unreadable, rr, await report_for(w, unreadable, rr))
    assert response.status.code == 13 and "cert" in response.status.message
    with pytest.raises(CapsuleManagerError):
        await w.client.get_data_keys(w.app, rr, await report_for(w, unreadable, rr))
