"""The RFC profile's ECDH-ES+A128KW (P-256) requests: round trip, what ``open`` refuses
(invalid-curve ``epk``, other curves, ``alg``/``enc`` outside the allowlist, the wrong key
type), and that the upstream dialect stays RSA-only."""

from __future__ import annotations

import json
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK
from trustflow_core.channel import Jwe
from trustflow_core.errors import EnvelopeError
from trustflow_core.testing.channel import b64url, rsa_test_key, unb64url

from trustflow_channel_jwe.channel import JweChannel

P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def rfc() -> JweChannel:
    return JweChannel.from_settings({"profile": "rfc"})


def header_of(jwe: Jwe) -> dict:
    return json.loads(unb64url(jwe.protected))


def forged(header: dict, encrypted_key: bytes = b"\0" * 40) -> Jwe:
    """An attacker-made envelope: any header, a plausible encrypted key, random content."""
    protected = b64url(json.dumps(header, separators=(",", ":")).encode())
    iv, cek = os.urandom(12), os.urandom(32)
    sealed = AESGCM(cek).encrypt(iv, b"x", protected.encode())
    return Jwe(
        protected, b64url(encrypted_key), b64url(iv), b64url(sealed[:-16]), b64url(sealed[-16:])
    )


def test_round_trip_and_reply(rfc, ec_key):
    sealed = rfc.seal(b"hello", ec_key.public_key())
    header = header_of(sealed.jwe)
    assert header["alg"] == "ECDH-ES+A128KW" and header["enc"] == "A256GCM"
    assert set(header["epk"]) == {"kty", "crv", "x", "y"} and header["epk"]["crv"] == "P-256"
    assert {"iat", "jti"} <= set(header) and sealed.jwe.aad == ""
    assert len(sealed.cek) == 32 and len(unb64url(sealed.jwe.encrypted_key)) == 40
    opened = rfc.open(sealed.jwe, ec_key)
    assert opened.plaintext == b"hello" and opened.cek == sealed.cek
    reply = rfc.seal_reply(b"answer", opened.cek)
    assert header_of(reply) == {"alg": "dir", "enc": "A256GCM"}
    assert rfc.open_reply(reply, sealed.cek) == b"answer"


def test_interoperates_with_plain_jwcrypto(rfc, ec_key):
    """A generic RFC 7516 library opens what we seal (compact form) and we open its output."""
    sealed = rfc.seal(b"to jwcrypto", ec_key.public_key())
    j = sealed.jwe
    token = JWE()
    token.deserialize(".".join([j.protected, j.encrypted_key, j.iv, j.ciphertext, j.tag]))
    token.decrypt(JWK.from_pyca(ec_key))
    assert token.payload == b"to jwcrypto"
    theirs = JWE(b"from jwcrypto", protected={"alg": "ECDH-ES+A128KW", "enc": "A128GCM"})
    theirs.add_recipient(JWK.from_pyca(ec_key.public_key()))
    parts = theirs.serialize(compact=True).split(".")
    assert rfc.open(Jwe(*parts[:5]), ec_key).plaintext == b"from jwcrypto"


def test_tampered_epk_or_key_fails(rfc, ec_key):
    sealed = rfc.seal(b"hello", ec_key.public_key())
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(EnvelopeError, match="cannot decrypt JWE encrypted_key"):
        rfc.open(sealed.jwe, other)
    header = header_of(sealed.jwe)
    header["epk"] = json.loads(JWK.from_pyca(other.public_key()).export_public())
    header["epk"] = {k: header["epk"][k] for k in ("kty", "crv", "x", "y")}
    swapped = Jwe(
        b64url(json.dumps(header).encode()),
        sealed.jwe.encrypted_key,
        sealed.jwe.iv,
        sealed.jwe.ciphertext,
        sealed.jwe.tag,
    )
    with pytest.raises(EnvelopeError, match="cannot decrypt JWE encrypted_key"):
        rfc.open(swapped, ec_key)


def valid_epk(ec_key) -> dict:
    numbers = ec_key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def test_invalid_curve_point_refused_before_key_agreement(rfc, ec_key):
    """The classic invalid-curve attack sends a point of a weak curve; P-256's equation fails
    for it. Refused with the epk message, not later as a generic decryption failure."""
    epk = valid_epk(ec_key)
    y = int.from_bytes(unb64url(epk["y"]), "big")
    epk["y"] = b64url(((y + 1) % P256_P).to_bytes(32, "big"))
    with pytest.raises(EnvelopeError, match="epk is not a point on P-256"):
        rfc.open(forged({"alg": "ECDH-ES+A128KW", "enc": "A256GCM", "epk": epk}), ec_key)
    epk["x"], epk["y"] = b64url(b"\0" * 32), b64url(b"\0" * 32)  # the point at infinity's stand-in
    with pytest.raises(EnvelopeError, match="epk is not a point on P-256"):
        rfc.open(forged({"alg": "ECDH-ES+A128KW", "enc": "A256GCM", "epk": epk}), ec_key)


def test_coordinate_outside_the_field_refused(rfc, ec_key):
    """A coordinate >= p (here x = p, y of a real point) is no field element: refused as not
    a point, whatever it is congruent to."""
    epk = valid_epk(ec_key)
    epk["x"] = b64url(P256_P.to_bytes(32, "big"))
    with pytest.raises(EnvelopeError, match="epk is not a point on P-256"):
        rfc.open(forged({"alg": "ECDH-ES+A128KW", "enc": "A256GCM", "epk": epk}), ec_key)


@pytest.mark.parametrize("member", ["tag", "ciphertext", "iv", "encrypted_key", "protected"])
def test_tampered_member_of_an_ecdh_envelope_fails(rfc, ec_key, member):
    """One flipped bit in any member of a real ECDH envelope: the key unwrap or the GCM tag
    refuses it (the protected header, epk included, is the GCM AAD)."""
    jwe = rfc.seal(b"hello", ec_key.public_key()).jwe
    value = bytearray(unb64url(getattr(jwe, member)))
    value[len(value) // 2] ^= 0x01
    tampered = Jwe(**(jwe.to_dict() | {member: b64url(bytes(value))}))
    with pytest.raises(EnvelopeError):
        rfc.open(tampered, ec_key)
    assert rfc.open(jwe, ec_key).plaintext == b"hello"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"crv": "P-384"}, "crv 'P-256'"),
        ({"kty": "OKP", "crv": "X25519"}, "kty 'EC'"),
        ({"d": "AAAA"}, "exactly the members"),
        ({"x": "AAAA"}, "must be 32 bytes"),
        ({"y": 7}, "must be a string"),
    ],
)
def test_malformed_epk_refused(rfc, ec_key, change, message):
    epk = valid_epk(ec_key) | change
    with pytest.raises(EnvelopeError, match=message):
        rfc.open(forged({"alg": "ECDH-ES+A128KW", "enc": "A256GCM", "epk": epk}), ec_key)


def test_missing_epk_refused(rfc, ec_key):
    with pytest.raises(EnvelopeError, match="needs an 'epk'"):
        rfc.open(forged({"alg": "ECDH-ES+A128KW", "enc": "A256GCM"}), ec_key)


@pytest.mark.parametrize(
    ("alg", "enc", "message"),
    [
        ("ECDH-ES", "A256GCM", "alg 'ECDH-ES' is not accepted"),
        ("ECDH-ES+A256KW", "A256GCM", "alg 'ECDH-ES\\+A256KW' is not accepted"),
        ("RSA-OAEP-256", "A256GCM", "alg 'RSA-OAEP-256' is not accepted"),
        ("dir", "A256GCM", "alg 'dir' is not accepted"),
        ("ECDH-ES+A128KW", "A128CBC-HS256", "enc 'A128CBC-HS256' is not supported"),
    ],
)
def test_alg_enc_outside_the_allowlist_refused(rfc, ec_key, alg, enc, message):
    header = {"alg": alg, "enc": enc, "epk": valid_epk(ec_key)}
    with pytest.raises(EnvelopeError, match=message):
        rfc.open(forged(header), ec_key)


def test_key_type_selects_the_allowlist(rfc, ec_key):
    """An ECDH envelope never opens with the RSA key and vice versa."""
    rsa_key = rsa_test_key("ecdh-allowlist")
    with pytest.raises(EnvelopeError, match="'ECDH-ES\\+A128KW' is not accepted"):
        rfc.open(rfc.seal(b"x", ec_key.public_key()).jwe, rsa_key)
    with pytest.raises(EnvelopeError, match="'RSA-OAEP-256' is not accepted"):
        rfc.open(rfc.seal(b"x", rsa_key.public_key()).jwe, ec_key)


def test_other_curves_and_the_upstream_dialect_refuse_ec(rfc):
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(EnvelopeError, match="must be on P-256"):
        rfc.seal(b"x", p384.public_key())
    upstream = JweChannel.from_settings({"profile": "upstream", "alg": "RSA-OAEP-256"})
    p256 = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(EnvelopeError, match="must be an RSA public key"):
        upstream.seal(b"x", p256.public_key())


def test_apu_apv_enter_the_kdf_like_jwcrypto(rfc, ec_key):
    """PartyUInfo/PartyVInfo from the header feed the Concat KDF exactly as in jwcrypto."""
    header = {
        "alg": "ECDH-ES+A128KW",
        "enc": "A256GCM",
        "apu": b64url(b"alice"),
        "apv": b64url(b"bob"),
    }
    theirs = JWE(b"with party info", protected=header)
    theirs.add_recipient(JWK.from_pyca(ec_key.public_key()))
    parts = theirs.serialize(compact=True).split(".")
    assert rfc.open(Jwe(*parts[:5]), ec_key).plaintext == b"with party info"
    bad = {"alg": "ECDH-ES+A128KW", "enc": "A256GCM", "epk": valid_epk(ec_key), "apu": 1}
    with pytest.raises(EnvelopeError, match="'apu' must be a string"):
        rfc.open(forged(bad), ec_key)
