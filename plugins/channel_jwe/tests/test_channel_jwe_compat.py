"""The upstream profile against vectors recorded from the real upstream SDK (testdata/compat).

Every expected value comes from ``manifest.json`` and the vector files.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
from typing import Any

import pytest
from channel_jwe_peers import cxx_proxy_open_cm_response, sdk_open_cm_response
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from trustflow_core.channel import Jwe, Jws
from trustflow_core.errors import EnvelopeError
from trustflow_core.identity import party_id_of_chain, party_id_of_key
from trustflow_core.testing.channel import (
    b64url,
    noncanonical_variants,
    tamper_member,
    tamper_positions,
    unb64url,
)
from trustflow_core.testing.fixtures import compat_vectors_dir

from trustflow_channel_jwe.channel import JweChannel

COMPAT = compat_vectors_dir()
RPC = COMPAT / "rpc"
MANIFEST: dict[str, Any] = json.loads((COMPAT / "manifest.json").read_text())

FLOW: list[dict[str, Any]] = MANIFEST.get("rpc_flow", [])
RESPONSES = [e for e in FLOW if e.get("response_recipient")]
UPSTREAM = JweChannel.from_settings({"profile": "upstream"})
MUTABLE_MEMBERS = ("encrypted_key", "iv", "ciphertext", "tag", "aad")


def _label(entry: dict[str, Any]) -> str:
    return str(entry["label"])


@functools.cache
def party_key(party: str) -> RSAPrivateKey:
    pem = (COMPAT / MANIFEST["parties"][party]["key"]).read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, RSAPrivateKey)
    return key


@functools.cache
def party_cert(party: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        (COMPAT / MANIFEST["parties"][party]["cert"]).read_bytes()
    )


@functools.cache
def cm_key() -> RSAPrivateKey:
    key = serialization.load_pem_private_key((COMPAT / "keys/cm.key").read_bytes(), password=None)
    assert isinstance(key, RSAPrivateKey)
    return key


def request_jwe(label: str) -> Jwe:
    wire = json.loads((RPC / f"{label}.encrypted_request.json").read_bytes())
    assert wire.get("has_signature") is True
    return Jwe.from_dict(wire["message"])


def response_jwe(label: str) -> Jwe:
    wire = json.loads((RPC / f"{label}.encrypted_response.json").read_bytes())
    return Jwe.from_dict(wire["message"])


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_vectors_match_manifest_hashes() -> None:
    used = [p for p in MANIFEST["sha256"] if p.startswith(("rpc/", "keys/"))]
    assert used
    for path in used:
        digest = hashlib.sha256((COMPAT / path).read_bytes()).hexdigest()
        assert digest == MANIFEST["sha256"][path], path


def test_manifest_party_ids_derive_from_their_certificates() -> None:
    for party, info in MANIFEST["parties"].items():
        assert party_id_of_key(party_cert(party).public_key()) == info["party_id"], party


# ---- SDK requests → CM ------------------------------------------------------------------------


@pytest.mark.parametrize("entry", FLOW, ids=_label)
def test_open_and_verify_sdk_request(entry: dict[str, Any]) -> None:
    label = entry["label"]
    opened = UPSTREAM.open(request_jwe(label), cm_key())
    assert json.loads(opened.plaintext) == json.loads((RPC / f"{label}.jws.json").read_bytes())

    jws = Jws.from_dict(json.loads(opened.plaintext))
    signer = MANIFEST["parties"][entry["signed_by"]]
    if entry["x5c"] is None:
        with pytest.raises(EnvelopeError, match="x5c"):
            UPSTREAM.verify(jws)
        verified = UPSTREAM.verify(jws, public_key=party_cert(entry["signed_by"]).public_key())
        assert verified.chain == ()
    else:
        verified = UPSTREAM.verify(jws)
        assert [_der(c) for c in verified.chain] == [_der(party_cert(entry["x5c"]))]
        assert party_id_of_key(verified.chain[0].public_key()) == signer["party_id"]
        assert party_id_of_chain(verified.chain) == MANIFEST["parties"][entry["x5c"]]["party_id"]
    assert verified.header["alg"] == "RS256"
    assert verified.payload == (RPC / f"{label}.request.json").read_bytes()


@pytest.mark.parametrize("entry", FLOW, ids=_label)
def test_sdk_request_is_not_for_other_keys(entry: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeError, match="encrypted_key"):
        UPSTREAM.open(request_jwe(entry["label"]), party_key(entry["signed_by"]))


@pytest.mark.parametrize("entry", FLOW, ids=_label)
def test_rfc_profile_refuses_sdk_requests(entry: dict[str, Any]) -> None:
    """The SDK dialect is not RFC 7516 (32-byte IV, header outside the AAD)."""
    with pytest.raises(EnvelopeError):
        JweChannel().open(request_jwe(entry["label"]), cm_key())


@pytest.mark.parametrize("member", MUTABLE_MEMBERS)
@pytest.mark.parametrize("entry", FLOW, ids=_label)
def test_tampered_sdk_request_is_rejected(entry: dict[str, Any], member: str) -> None:
    jwe = request_jwe(entry["label"])
    for index in tamper_positions(getattr(jwe, member)):
        with pytest.raises(EnvelopeError):
            UPSTREAM.open(tamper_member(jwe, member, index), cm_key())
    for variant in noncanonical_variants(getattr(jwe, member)):
        with pytest.raises(EnvelopeError):
            UPSTREAM.open(dataclasses.replace(jwe, **{member: variant}), cm_key())


@pytest.mark.parametrize("entry", FLOW, ids=_label)
def test_sdk_request_header_changes_are_rejected(entry: dict[str, Any]) -> None:
    jwe = request_jwe(entry["label"])
    header = json.loads(unb64url(jwe.protected))
    other = {
        "alg": {"RSA-OAEP": "RSA-OAEP-256", "RSA-OAEP-256": "RSA-OAEP"}[header["alg"]],
        "enc": {"A128GCM": "A256GCM", "A256GCM": "A128GCM"}[header["enc"]],
    }
    for name, value in [*other.items(), ("alg", "RSA1_5"), ("enc", "A192GCM")]:
        forged = json.dumps(header | {name: value}, indent=2).encode()
        with pytest.raises(EnvelopeError):
            UPSTREAM.open(dataclasses.replace(jwe, protected=b64url(forged)), cm_key())
    for variant in noncanonical_variants(jwe.protected):
        with pytest.raises(EnvelopeError):
            UPSTREAM.open(dataclasses.replace(jwe, protected=variant), cm_key())


@pytest.mark.parametrize("entry", FLOW, ids=_label)
def test_tampered_sdk_jws_is_rejected(entry: dict[str, Any]) -> None:
    jws = Jws.from_dict(json.loads((RPC / f"{entry['label']}.jws.json").read_bytes()))
    key = None if entry["x5c"] else party_cert(entry["signed_by"]).public_key()
    for member in ("protected", "payload", "signature"):
        for index in tamper_positions(getattr(jws, member)):
            with pytest.raises(EnvelopeError):
                UPSTREAM.verify(tamper_member(jws, member, index), public_key=key)
    others = [p for p in MANIFEST["parties"] if p != entry["signed_by"]]
    for party in others:
        with pytest.raises(EnvelopeError):
            UPSTREAM.verify(jws, public_key=party_cert(party).public_key())


@pytest.mark.parametrize("entry", [e for e in FLOW if e["x5c"]], ids=_label)
def test_sdk_jws_with_swapped_x5c_is_rejected(entry: dict[str, Any]) -> None:
    jws = Jws.from_dict(json.loads((RPC / f"{entry['label']}.jws.json").read_bytes()))
    header = json.loads(unb64url(jws.protected))
    for party in MANIFEST["parties"]:
        if party == entry["x5c"]:
            continue
        entry_b64 = base64.b64encode(_der(party_cert(party))).decode()
        forged = dataclasses.replace(
            jws, protected=b64url(json.dumps(header | {"x5c": [entry_b64]}).encode())
        )
        with pytest.raises(EnvelopeError, match="signature"):
            UPSTREAM.verify(forged)


# ---- CM responses → SDK -----------------------------------------------------------------------


def test_every_encrypted_response_with_a_message_has_a_recipient() -> None:
    with_message = {
        path.name.removesuffix(".encrypted_response.json")
        for path in RPC.glob("*.encrypted_response.json")
        if "message" in json.loads(path.read_bytes())
    }
    assert with_message
    assert with_message == {e["label"] for e in RESPONSES}


@pytest.mark.parametrize("entry", RESPONSES, ids=_label)
def test_open_cm_response(entry: dict[str, Any]) -> None:
    label, recipient = entry["label"], entry["response_recipient"]
    expected = (RPC / f"{label}.response.json").read_bytes()
    assert UPSTREAM.open(response_jwe(label), party_key(recipient)).plaintext == expected
    for party in MANIFEST["parties"]:
        if party != recipient:
            with pytest.raises(EnvelopeError):
                UPSTREAM.open(response_jwe(label), party_key(party))


@pytest.mark.parametrize("member", MUTABLE_MEMBERS)
@pytest.mark.parametrize("entry", RESPONSES, ids=_label)
def test_tampered_cm_response_is_rejected(entry: dict[str, Any], member: str) -> None:
    jwe, key = response_jwe(entry["label"]), party_key(entry["response_recipient"])
    for index in tamper_positions(getattr(jwe, member)):
        with pytest.raises(EnvelopeError):
            UPSTREAM.open(tamper_member(jwe, member, index), key)
    for variant in noncanonical_variants(getattr(jwe, member)):
        with pytest.raises(EnvelopeError):
            UPSTREAM.open(dataclasses.replace(jwe, **{member: variant}), key)


@pytest.mark.parametrize("entry", RESPONSES, ids=_label)
def test_our_cm_response_is_read_by_upstream_clients(entry: dict[str, Any]) -> None:
    """Seal the recorded response plaintext as our CM would and decrypt it like the C++ proxy
    and the SDK do (independent code in channel_jwe_peers)."""
    label, recipient = entry["label"], entry["response_recipient"]
    plaintext = (RPC / f"{label}.response.json").read_bytes()
    jwe = UPSTREAM.seal(plaintext, party_cert(recipient).public_key()).jwe
    wire = json.loads(json.dumps(jwe.to_dict()))
    assert cxx_proxy_open_cm_response(wire, party_key(recipient)) == plaintext
    assert sdk_open_cm_response(wire, party_key(recipient)) == plaintext
