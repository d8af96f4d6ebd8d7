"""The channel conformance kit for both profiles, plus dialect-specific behaviour."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from trustflow_core.channel import EnvelopeChannel, Jwe
from trustflow_core.errors import EnvelopeError
from trustflow_core.testing.channel import (
    EnvelopeChannelConformance,
    b64url,
    handmade_jws,
    make_cert,
    rsa_test_key,
    unb64url,
    x5c_entry,
)

from trustflow_channel_jwe.channel import JweChannel


class TestJweRfcConformance(EnvelopeChannelConformance):
    @pytest.fixture
    def channel(self) -> EnvelopeChannel:
        return JweChannel.from_settings({"profile": "rfc"})


class TestJweRfcOaepSha1Conformance(EnvelopeChannelConformance):
    @pytest.fixture
    def channel(self) -> EnvelopeChannel:
        return JweChannel.from_settings({"profile": "rfc", "alg": "RSA-OAEP"})


class TestJweUpstreamConformance(EnvelopeChannelConformance):
    @pytest.fixture
    def channel(self) -> EnvelopeChannel:
        return JweChannel.from_settings({"profile": "upstream"})

    @pytest.fixture
    def authenticates_protected_header(self) -> bool:
        return False  # the GCM AAD is the `aad` member: docs/compat.md#jwe-aad-is-the-aad-member


class TestJweUpstreamOaep256Conformance(TestJweUpstreamConformance):
    @pytest.fixture
    def channel(self) -> EnvelopeChannel:
        return JweChannel.from_settings({"profile": "upstream", "alg": "RSA-OAEP-256"})


# ---- upstream: what the unauthenticated header still cannot get away with ----------------------

UPSTREAM = JweChannel.from_settings({"profile": "upstream"})
UPSTREAM_256 = JweChannel.from_settings({"profile": "upstream", "alg": "RSA-OAEP-256"})


def _alg_enc(raw: bytes) -> tuple[object, object] | None:
    """The (alg, enc) a lenient reader would see, or None when the JSON is broken."""
    try:
        header = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(header, dict):
        return None
    return header.get("alg"), header.get("enc")


def _flipped_headers(jwe: Jwe) -> list[Jwe]:
    raw = unb64url(jwe.protected)
    out = []
    for index in range(len(raw)):
        for bit in (0x01, 0x20):
            data = bytearray(raw)
            data[index] ^= bit
            out.append(dataclasses.replace(jwe, protected=b64url(bytes(data))))
    return out


@pytest.mark.parametrize("channel", [UPSTREAM, UPSTREAM_256], ids=["RSA-OAEP", "RSA-OAEP-256"])
def test_upstream_open_rejects_every_header_change_of_alg_enc_or_json(
    channel: JweChannel,
) -> None:
    key = rsa_test_key("recipient")
    sealed = channel.seal(b"header games", key.public_key())
    original = _alg_enc(unb64url(sealed.jwe.protected))
    rejected = 0
    for tampered in _flipped_headers(sealed.jwe):
        seen = _alg_enc(unb64url(tampered.protected))
        if seen == original:  # e.g. case of an unrelated letter: harmless, header unauthenticated
            assert channel.open(tampered, key).plaintext == b"header games"
            continue
        with pytest.raises(EnvelopeError):
            channel.open(tampered, key)
        rejected += 1
    assert rejected > 0


def test_upstream_open_reply_rejects_every_header_change_of_alg_enc_or_json() -> None:
    cek = AESGCM.generate_key(bit_length=128)
    reply = UPSTREAM.seal_reply(b"reply games", cek)
    original = _alg_enc(unb64url(reply.protected))
    checked = 0
    for tampered in _flipped_headers(reply):
        if _alg_enc(unb64url(tampered.protected)) == original:
            continue
        with pytest.raises(EnvelopeError):
            UPSTREAM.open_reply(tampered, cek)
        checked += 1
    assert checked > 0


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "RSA-OAEP-256", "enc": "A128GCM"},  # wrong OAEP hash for an RSA-OAEP envelope
        {"alg": "RSA-OAEP", "enc": "A256GCM"},  # CEK length does not fit
        {"alg": "RSA-OAEP", "enc": "A192GCM"},
        {"alg": "RSA1_5", "enc": "A128GCM"},
        {"alg": "RSA-OAEP", "enc": "A128GCM", "zip": "DEF"},
        {"alg": "RSA-OAEP", "enc": "A128GCM", "crit": ["exp"], "exp": 1},
    ],
)
def test_upstream_open_rejects_rewritten_header(header: dict[str, object]) -> None:
    key = rsa_test_key("recipient")
    jwe = UPSTREAM.seal(b"rewritten", key.public_key()).jwe
    forged = dataclasses.replace(jwe, protected=b64url(json.dumps(header).encode()))
    with pytest.raises(EnvelopeError):
        UPSTREAM.open(forged, key)


def test_upstream_header_is_not_authenticated_reformatting_passes() -> None:
    """docs/compat.md#jwe-aad-is-the-aad-member, reproduced: the same alg/enc in different JSON
    formatting still opens."""
    key = rsa_test_key("recipient")
    jwe = UPSTREAM.seal(b"pretty", key.public_key()).jwe
    pretty = json.dumps(json.loads(unb64url(jwe.protected)), indent=2).encode()
    opened = UPSTREAM.open(dataclasses.replace(jwe, protected=b64url(pretty)), key)
    assert opened.plaintext == b"pretty"


# ---- upstream: inputs the upstream CM accepts -------------------------------------------------


def _raw_request(
    key: RSAPrivateKey, header: bytes, oaep_hash: hashes.HashAlgorithm, cek_bits: int, iv_len: int
) -> tuple[Jwe, bytes]:
    cek = AESGCM.generate_key(bit_length=cek_bits)
    iv = os.urandom(iv_len)
    sealed = AESGCM(cek).encrypt(iv, b"plaintext", b"")
    oaep = padding.OAEP(mgf=padding.MGF1(oaep_hash), algorithm=oaep_hash, label=None)
    jwe = Jwe(
        protected=b64url(header),
        encrypted_key=b64url(key.public_key().encrypt(cek, oaep)),
        iv=b64url(iv),
        ciphertext=b64url(sealed[:-16]),
        tag=b64url(sealed[-16:]),
    )
    return jwe, cek


@pytest.mark.parametrize("iv_len", [8, 12, 16, 32, 128])
@pytest.mark.parametrize(
    ("alg", "oaep_hash"), [("RSA-OAEP", hashes.SHA1()), ("RSA-OAEP-256", hashes.SHA256())]
)
@pytest.mark.parametrize(("enc", "cek_bits"), [("A128GCM", 128), ("A256GCM", 256)])
def test_upstream_open_accepts_cm_request_variants(
    alg: str, oaep_hash: hashes.HashAlgorithm, enc: str, cek_bits: int, iv_len: int
) -> None:
    key = rsa_test_key("recipient")
    header = json.dumps({"alg": alg, "enc": enc}, indent=2).encode()
    jwe, cek = _raw_request(key, header, oaep_hash, cek_bits, iv_len)
    opened = UPSTREAM.open(jwe, key)
    assert (opened.plaintext, opened.cek) == (b"plaintext", cek)
    assert dict(opened.header) == {"alg": alg, "enc": enc}


@pytest.mark.parametrize("iv_len", [7, 129])
def test_upstream_open_rejects_iv_lengths_outside_8_to_128(iv_len: int) -> None:
    key = rsa_test_key("recipient")
    header = b'{"alg":"RSA-OAEP","enc":"A128GCM"}'
    # seal with a valid IV, then swap in one of an unusable length
    jwe, _ = _raw_request(key, header, hashes.SHA1(), 128, 12)
    with pytest.raises(EnvelopeError, match="iv"):
        UPSTREAM.open(dataclasses.replace(jwe, iv=b64url(os.urandom(iv_len))), key)


def test_upstream_open_refuses_rsa1_5_with_a_clear_message() -> None:
    key = rsa_test_key("recipient")
    cek = AESGCM.generate_key(bit_length=128)
    iv = os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, b"bleichenbacher", b"")
    jwe = Jwe(
        protected=b64url(b'{"alg":"RSA1_5","enc":"A128GCM"}'),
        encrypted_key=b64url(key.public_key().encrypt(cek, padding.PKCS1v15())),
        iv=b64url(iv),
        ciphertext=b64url(sealed[:-16]),
        tag=b64url(sealed[-16:]),
    )
    with pytest.raises(EnvelopeError, match="RSA1_5"):
        UPSTREAM.open(jwe, key)


def test_upstream_gcm_aad_is_the_aad_member() -> None:
    """docs/compat.md#jwe-aad-is-the-aad-member: AAD = decoded `aad`, so a non-empty aad must be
    honoured."""
    key = rsa_test_key("recipient")
    cek = AESGCM.generate_key(bit_length=128)
    iv = os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, b"with aad", b"extra")
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    jwe = Jwe(
        protected=b64url(b'{"alg":"RSA-OAEP","enc":"A128GCM"}'),
        encrypted_key=b64url(key.public_key().encrypt(cek, oaep)),
        iv=b64url(iv),
        ciphertext=b64url(sealed[:-16]),
        tag=b64url(sealed[-16:]),
        aad=b64url(b"extra"),
    )
    assert UPSTREAM.open(jwe, key).plaintext == b"with aad"
    with pytest.raises(EnvelopeError):
        UPSTREAM.open(dataclasses.replace(jwe, aad=""), key)


def test_upstream_reply_requires_empty_encrypted_key() -> None:
    cek = AESGCM.generate_key(bit_length=128)
    reply = UPSTREAM.seal_reply(b"x", cek)
    with pytest.raises(EnvelopeError, match="encrypted_key"):
        UPSTREAM.open_reply(dataclasses.replace(reply, encrypted_key=b64url(b"k" * 256)), cek)


@pytest.mark.parametrize("channel", [UPSTREAM, JweChannel()], ids=["upstream", "rfc"])
@pytest.mark.parametrize("size", [0, 8, 15, 17, 64])
def test_seal_reply_rejects_bad_content_key_sizes(channel: JweChannel, size: int) -> None:
    with pytest.raises(EnvelopeError, match="content key"):
        channel.seal_reply(b"x", bytes(size))


# ---- rfc: header is authenticated, sizes are RFC 7518's ---------------------------------------


def test_rfc_open_rejects_reformatted_header() -> None:
    """The opposite of docs/compat.md#jwe-aad-is-the-aad-member: the header bytes are part of the
    AAD."""
    key = rsa_test_key("recipient")
    channel = JweChannel()
    jwe = channel.seal(b"pretty", key.public_key()).jwe
    pretty = json.dumps(json.loads(unb64url(jwe.protected)), indent=2).encode()
    with pytest.raises(EnvelopeError):
        channel.open(dataclasses.replace(jwe, protected=b64url(pretty)), key)


def test_rfc_open_refuses_the_sdk_32_byte_iv() -> None:
    key = rsa_test_key("recipient")
    jwe, _ = _raw_request(key, b'{"alg":"RSA-OAEP-256","enc":"A128GCM"}', hashes.SHA256(), 128, 32)
    with pytest.raises(EnvelopeError, match="iv"):
        JweChannel().open(jwe, key)


# ---- JWS details shared by both profiles -------------------------------------------------------


def test_verify_accepts_ps256() -> None:
    key = rsa_test_key("ps-leaf")
    cert = make_cert(key, key, "ps", "ps")
    jws = handmade_jws({"alg": "PS256", "x5c": [x5c_entry(cert)]}, b"pss", None)
    signature = key.sign(
        f"{jws.protected}.{jws.payload}".encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    jws = dataclasses.replace(jws, signature=b64url(signature))
    assert JweChannel().verify(jws).payload == b"pss"
    with pytest.raises(EnvelopeError, match="does not verify"):
        JweChannel().verify(dataclasses.replace(jws, payload=b64url(b"psst")))


@pytest.mark.parametrize(
    ("alg", "message"),
    [("none", "none"), ("HS256", "shared-secret"), ("ES256", "not supported"), ("RS512", "RS512")],
)
def test_verify_names_refused_algorithms(alg: str, message: str) -> None:
    key = rsa_test_key("recipient")
    jws = handmade_jws({"alg": alg}, b"payload", key)
    with pytest.raises(EnvelopeError, match=message):
        JweChannel().verify(jws, public_key=key.public_key())


def test_verify_ignores_validity_periods_and_names() -> None:
    """docs/compat.md#x5c-chain-signature-only: only signatures are checked — an expired,
    not-name-chained chain passes."""
    root_key, leaf_key = rsa_test_key("old-root"), rsa_test_key("old-leaf")
    long_ago = datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc)
    root = make_cert(root_key, root_key, "root", "root", not_before=long_ago, days=1)
    leaf = make_cert(leaf_key, root_key, "leaf", "somebody else", not_before=long_ago, days=1)
    jws = JweChannel().sign(b"old", leaf_key, [leaf, root])
    assert JweChannel().verify(jws).payload == b"old"


@pytest.mark.parametrize("root_kind", ["ec", "ed25519"])
def test_verify_checks_links_signed_by_non_rsa_roots(root_kind: str) -> None:
    """The chain check is signature-only but works for any issuer key type (as OpenSSL's)."""
    leaf_key = rsa_test_key("non-rsa-leaf")
    if root_kind == "ec":
        root_key: Any = ec.generate_private_key(ec.SECP256R1())
        hash_alg: hashes.HashAlgorithm | None = hashes.SHA256()
    else:
        root_key, hash_alg = ed25519.Ed25519PrivateKey.generate(), None
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")])

    def cert(subject_public: Any) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(subject_public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(root_key, hash_alg)
        )

    leaf, root = cert(leaf_key.public_key()), cert(root_key.public_key())
    jws = JweChannel().sign(b"mixed", leaf_key, [leaf, root])
    assert JweChannel().verify(jws).payload == b"mixed"
    stranger = make_cert(leaf_key, rsa_test_key("stranger"), "leaf", "stranger")
    with pytest.raises(EnvelopeError, match=r"x5c\[1\] does not sign x5c\[0\]"):
        JweChannel().verify(JweChannel().sign(b"mixed", leaf_key, [stranger, root]))


def test_verify_names_the_broken_link() -> None:
    a, b, c = (rsa_test_key(n) for n in ("link-a", "link-b", "link-c"))
    root = make_cert(c, c, "c", "c")
    middle = make_cert(b, a, "b", "a")  # signed by a, not by c
    leaf = make_cert(a, b, "a", "b")
    jws = JweChannel().sign(b"chain", a, [leaf, middle, root])
    with pytest.raises(EnvelopeError, match=r"x5c\[2\] does not sign x5c\[1\]"):
        JweChannel().verify(jws)


def test_verify_with_key_requires_x5c_leaf_to_match() -> None:
    signer_key, other = rsa_test_key("match-leaf"), rsa_test_key("match-other")
    cert = make_cert(signer_key, signer_key, "leaf", "leaf")
    jws = JweChannel().sign(b"x", signer_key, [cert])
    assert JweChannel().verify(jws, public_key=signer_key.public_key()).payload == b"x"
    with pytest.raises(EnvelopeError, match="x5c"):
        JweChannel().verify(jws, public_key=other.public_key())


def test_sign_refuses_chain_of_another_key() -> None:
    key, other = rsa_test_key("match-leaf"), rsa_test_key("match-other")
    cert = make_cert(other, other, "other", "other")
    with pytest.raises(EnvelopeError, match="chain"):
        JweChannel().sign(b"x", key, [cert])


def test_sign_claims_follow_alg_and_x5c() -> None:
    """Extra header claims (the CM's ``iat``/``jti``) come after ``alg``/``x5c``; without them
    the header stays upstream's ``{"alg":"RS256","x5c":[...]}``."""
    key = rsa_test_key("claims")
    cert = make_cert(key, key, "leaf", "leaf")
    plain = JweChannel().sign(b"x", key, [cert])
    claimed = JweChannel().sign(b"x", key, [cert], claims={"iat": 1700000000, "jti": "j-1"})
    verified = JweChannel().verify(claimed)
    assert list(verified.header) == ["alg", "x5c", "iat", "jti"]
    assert verified.header["iat"] == 1700000000 and verified.header["jti"] == "j-1"
    assert list(JweChannel().verify(plain).header) == ["alg", "x5c"]
    assert list(json.loads(unb64url(plain.protected))) == ["alg", "x5c"]
    for name in ("alg", "x5c", "crit"):
        with pytest.raises(EnvelopeError, match=name):
            JweChannel().sign(b"x", key, [cert], claims={name: "none"})
