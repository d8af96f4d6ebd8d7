"""Our envelopes as upstream peers (and a plain RFC library) read them."""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

import pytest
from channel_jwe_peers import (
    CM_RESPONSE_HEADER,
    ENVOY_REPLY_HEADER,
    PAYLOAD,
    cxx_proxy_open_cm_response,
    envoy_open_request,
    jwe_client_open_reply,
    jwe_client_request,
    sdk_open_cm_response,
    unpadded_url_decode,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK
from trustflow_core.channel import Jwe
from trustflow_core.errors import EnvelopeError
from trustflow_core.testing.channel import rsa_test_key

from trustflow_channel_jwe.channel import JweChannel


@pytest.mark.parametrize("plaintext", [b"", PAYLOAD, os.urandom(70_000)])
def test_upstream_seal_is_a_cm_response_the_proxy_and_sdk_decrypt(plaintext: bytes) -> None:
    key = rsa_test_key("recipient")
    jwe = JweChannel.from_settings({"profile": "upstream"}).seal(plaintext, key.public_key()).jwe
    wire: dict[str, Any] = json.loads(json.dumps(jwe.to_dict()))
    assert unpadded_url_decode(wire["protected"]) == CM_RESPONSE_HEADER
    assert wire["aad"] == ""
    assert cxx_proxy_open_cm_response(wire, key) == plaintext
    assert sdk_open_cm_response(wire, key) == plaintext


def test_upstream_rsa_oaep_256_seal_is_an_envoy_request() -> None:
    key = rsa_test_key("recipient")
    channel = JweChannel.from_settings({"profile": "upstream", "alg": "RSA-OAEP-256"})
    sealed = channel.seal(PAYLOAD, key.public_key())
    wire = sealed.jwe.to_dict()
    assert unpadded_url_decode(wire["protected"]) == ENVOY_REPLY_HEADER
    plaintext, cek = envoy_open_request(wire, key)
    assert (plaintext, cek) == (PAYLOAD, sealed.cek)


@pytest.mark.parametrize("reply", [b"", b"plain text body", os.urandom(70_000)])
def test_upstream_seal_reply_is_the_envoy_response_form(reply: bytes) -> None:
    cek = AESGCM.generate_key(bit_length=128)
    jwe = JweChannel.from_settings({"profile": "upstream"}).seal_reply(reply, cek)
    wire = json.loads(json.dumps(jwe.to_dict(), separators=(",", ":")))
    assert list(wire) == ["protected", "encrypted_key", "iv", "ciphertext", "tag", "aad"]
    assert wire["protected"] == base64.urlsafe_b64encode(ENVOY_REPLY_HEADER).decode().rstrip("=")
    assert wire["encrypted_key"] == "" and wire["aad"] == ""
    assert len(unpadded_url_decode(wire["iv"])) == 12
    assert jwe_client_open_reply(wire, cek) == reply


def test_upstream_gateway_round_trip_with_a_jwe_client_request() -> None:
    key = rsa_test_key("recipient")
    gateway = JweChannel.from_settings({"profile": "upstream"})
    request, cek = jwe_client_request(b'{"nonce":"abc"}', key)
    opened = gateway.open(Jwe.from_dict(request), key)
    assert opened.plaintext == b'{"nonce":"abc"}'
    reply = gateway.seal_reply(b'{"ok":true}', opened.cek)
    assert jwe_client_open_reply(reply.to_dict(), cek) == b'{"ok":true}'


# ---- rfc profile against jwcrypto's own JWE object and against the RFC AAD rule -----------------


def test_rfc_seal_is_read_by_a_plain_rfc_library() -> None:
    key = rsa_test_key("recipient")
    sealed = JweChannel().seal(PAYLOAD, key.public_key())
    flattened = {k: v for k, v in sealed.jwe.to_dict().items() if v}  # RFC: omit empty members
    token = JWE()
    token.deserialize(json.dumps(flattened), key=JWK.from_pyca(key))
    assert token.plaintext == PAYLOAD


def test_rfc_requests_carry_authenticated_freshness_claims() -> None:
    """iat and jti (for the gateway's replay check) are in the protected header, new for every
    seal, and authenticated: a header with another jti does not open."""
    key = rsa_test_key("recipient")
    before = int(time.time())
    first, second = (JweChannel().seal(PAYLOAD, key.public_key()) for _ in range(2))
    headers = [json.loads(unpadded_url_decode(s.jwe.protected)) for s in (first, second)]
    for header in headers:
        assert set(header) == {"alg", "enc", "iat", "jti"}
        assert before <= header["iat"] <= int(time.time())
        assert len(header["jti"]) == 22  # 128 random bits, base64url
    assert headers[0]["jti"] != headers[1]["jti"]
    assert JweChannel().open(first.jwe, key).header["jti"] == headers[0]["jti"]
    altered = {**headers[0], "jti": headers[1]["jti"]}
    members = {k: v for k, v in first.jwe.to_dict().items() if v}
    members["protected"] = (
        base64.urlsafe_b64encode(json.dumps(altered).encode()).decode().rstrip("=")
    )
    with pytest.raises(EnvelopeError, match="does not authenticate"):
        JweChannel().open(Jwe.from_dict(members), key)


@pytest.mark.parametrize(
    ("alg", "enc"),
    [("RSA-OAEP-256", "A128GCM"), ("RSA-OAEP", "A256GCM"), ("RSA-OAEP-256", "A192GCM")],
)
def test_rfc_open_reads_what_a_plain_rfc_library_writes(alg: str, enc: str) -> None:
    """RSA-OAEP is SHA-1 OAEP, RSA-OAEP-256 SHA-256 (RFC 7518 §4.3), each CEK size."""
    key = rsa_test_key("recipient")
    token = JWE(PAYLOAD, protected={"alg": alg, "enc": enc, "kid": "cm"})
    token.add_recipient(JWK.from_pyca(key.public_key()))
    opened = JweChannel().open(Jwe.from_dict(json.loads(token.serialize())), key)
    assert opened.plaintext == PAYLOAD
    assert opened.header["kid"] == "cm"


def test_rfc_reply_is_dir_and_authenticates_the_header() -> None:
    cek = AESGCM.generate_key(bit_length=256)
    jwe = JweChannel().seal_reply(PAYLOAD, cek)
    assert json.loads(unpadded_url_decode(jwe.protected)) == {"alg": "dir", "enc": "A256GCM"}
    assert jwe.encrypted_key == ""
    iv = unpadded_url_decode(jwe.iv)
    sealed = unpadded_url_decode(jwe.ciphertext) + unpadded_url_decode(jwe.tag)
    # RFC 7516 §5.1 step 14: AAD = ASCII(BASE64URL(UTF8(protected)))
    assert AESGCM(cek).decrypt(iv, sealed, jwe.protected.encode("ascii")) == PAYLOAD
