"""The RFC profile's ECDH-ES+A128KW (P-256) requests: round trip, what ``open`` refuses
(invalid-curve ``epk``, other curves, ``alg``/``enc`` outside the allowlist, the wrong key
type), that the upstream dialect stays RSA-only, and key-agreement reuse: the sealer's
ephemeral key window, and the opener's KEK cache (never across keys or party info, never for
a tampered envelope or an invalid point, bounded)."""

from __future__ import annotations

import json
import os
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK
from trustflow_core.channel import Jwe
from trustflow_core.errors import EnvelopeError, InvalidInput
from trustflow_core.testing.channel import b64url, rsa_test_key, unb64url

from trustflow_channel_jwe.channel import JweChannel
from trustflow_channel_jwe.rfc import EphemeralKeys, RfcDialect

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


# ---- key-agreement reuse: the sealing side's ephemeral keys, the opening side's KEK cache ----


class Clock:
    """A clock the test moves by hand (no sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reusing(seconds: float = 60.0, envelopes: int = 10_000, clock=None) -> RfcDialect:
    return RfcDialect(ephemeral=EphemeralKeys(seconds, envelopes, clock or Clock()))


def test_seal_reuses_the_ephemeral_key_within_the_window_and_rotates_after(ec_key):
    """Up to ``envelopes`` envelopes and ``seconds`` per ephemeral key and recipient, then a
    new key; every envelope keeps its own CEK, IV, jti; another recipient gets its own key."""
    clock = Clock()
    dialect = reusing(seconds=60, envelopes=3, clock=clock)
    recipient = ec_key.public_key()
    sealed = [dialect.seal(b"m", recipient) for _ in range(4)]
    epks = [json.dumps(header_of(s.jwe)["epk"]) for s in sealed]
    assert epks[0] == epks[1] == epks[2] != epks[3]
    assert len({s.cek for s in sealed}) == 4 and len({s.jwe.iv for s in sealed}) == 4
    assert len({header_of(s.jwe)["jti"] for s in sealed}) == 4
    assert len({s.jwe.encrypted_key for s in sealed}) == 4
    other = dialect.seal(b"m", ec.generate_private_key(ec.SECP256R1()).public_key())
    assert header_of(other.jwe)["epk"] != header_of(sealed[3].jwe)["epk"]
    clock.now += 59.9
    assert header_of(dialect.seal(b"m", recipient).jwe)["epk"] == header_of(sealed[3].jwe)["epk"]
    clock.now += 0.1  # 60 s after the key was made: a new one
    rotated = header_of(dialect.seal(b"m", recipient).jwe)["epk"]
    assert rotated != header_of(sealed[3].jwe)["epk"]
    clock.now -= 5  # a clock that went back: never extends a key's life, a new key
    assert header_of(dialect.seal(b"m", recipient).jwe)["epk"] != rotated
    for s in sealed:
        assert dialect.open(s.jwe, ec_key).plaintext == b"m"


def test_one_envelope_per_key_means_a_fresh_key_each_time(ec_key):
    channel = JweChannel.from_settings({"profile": "rfc", "epk_reuse_envelopes": 1})
    epks = {
        json.dumps(header_of(channel.seal(b"m", ec_key.public_key()).jwe)["epk"]) for _ in range(3)
    }
    assert len(epks) == 3


def test_envelopes_with_a_reused_key_open_with_plain_jwcrypto(rfc, ec_key):
    """What the reusing sealer writes is plain RFC 7516/7518: jwcrypto opens every envelope."""
    sealed = [rfc.seal(f"to jwcrypto {i}".encode(), ec_key.public_key()) for i in range(3)]
    assert len({json.dumps(header_of(s.jwe)["epk"]) for s in sealed}) == 1
    for i, s in enumerate(sealed):
        j = s.jwe
        token = JWE()
        token.deserialize(".".join([j.protected, j.encrypted_key, j.iv, j.ciphertext, j.tag]))
        token.decrypt(JWK.from_pyca(ec_key))
        assert token.payload == f"to jwcrypto {i}".encode()


def seal_with_epk(
    ephemeral: ec.EllipticCurvePrivateKey,
    recipient: ec.EllipticCurvePublicKey,
    plaintext: bytes,
    apu: bytes | None = None,
) -> Jwe:
    """An ECDH-ES+A128KW envelope with a chosen ephemeral key, built from the RFC 7518 4.6
    steps with ``cryptography`` alone (independent of the channel's code)."""
    alg = b"ECDH-ES+A128KW"
    party_u = apu or b""
    otherinfo = b"".join(
        (
            struct.pack(">I", len(alg)),
            alg,
            struct.pack(">I", len(party_u)),
            party_u,
            struct.pack(">I", 0),
            struct.pack(">I", 128),
        )
    )
    kek = ConcatKDFHash(hashes.SHA256(), 16, otherinfo).derive(
        ephemeral.exchange(ec.ECDH(), recipient)
    )
    header = {"alg": "ECDH-ES+A128KW", "enc": "A256GCM", "epk": valid_epk(ephemeral)}
    if apu is not None:
        header["apu"] = b64url(apu)
    protected = b64url(json.dumps(header).encode())
    cek, iv = os.urandom(32), os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode())
    return Jwe(
        protected,
        b64url(aes_key_wrap(kek, cek)),
        b64url(iv),
        b64url(sealed[:-16]),
        b64url(sealed[-16:]),
    )


def test_cached_kek_is_never_used_for_another_key(rfc, ec_key):
    """The same epk sent to two keys of one opener: each opens with its own KEK; an envelope
    for one key stays refused by the other even after the first cached its epk."""
    second = ec.generate_private_key(ec.SECP256R1())
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    to_first = seal_with_epk(ephemeral, ec_key.public_key(), b"first")
    to_second = seal_with_epk(ephemeral, second.public_key(), b"second")
    assert rfc.open(to_first, ec_key).plaintext == b"first"
    assert rfc.open(to_second, second).plaintext == b"second"
    for jwe, key in ((to_first, second), (to_second, ec_key)):
        with pytest.raises(EnvelopeError, match="cannot decrypt JWE encrypted_key"):
            rfc.open(jwe, key)
    assert rfc.open(to_first, ec_key).plaintext == b"first"


def test_cached_kek_is_never_used_for_other_party_info(rfc, ec_key):
    """Same epk, different ``apu``: another KEK (the KDF input differs), not the cached one."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    assert rfc.open(seal_with_epk(ephemeral, ec_key.public_key(), b"a"), ec_key).plaintext == b"a"
    with_apu = seal_with_epk(ephemeral, ec_key.public_key(), b"b", apu=b"alice")
    assert rfc.open(with_apu, ec_key).plaintext == b"b"


def test_tampered_envelope_with_a_cached_epk_fails(rfc, ec_key):
    """After its epk's KEK is cached, a tampered wrapped key, ciphertext or tag is still
    refused: the unwrap and the GCM tag are checked per envelope."""
    first, second = (rfc.seal(b"hello", ec_key.public_key()).jwe for _ in range(2))
    assert header_of(first)["epk"] == header_of(second)["epk"]
    assert rfc.open(first, ec_key).plaintext == b"hello"
    for member in ("encrypted_key", "ciphertext", "tag", "iv"):
        value = bytearray(unb64url(getattr(second, member)))
        value[0] ^= 0x01
        with pytest.raises(EnvelopeError):
            rfc.open(Jwe(**(second.to_dict() | {member: b64url(bytes(value))})), ec_key)
    assert rfc.open(second, ec_key).plaintext == b"hello"


def test_invalid_curve_epk_refused_with_a_full_cache(ec_key):
    """Valid envelopes fill the cache; a point off the curve (a cached epk's x with another
    y), malformed coordinates and a non-canonical spelling of a cached coordinate are still
    refused: only the exact text of an epk that opened is ever a hit."""
    dialect = JweChannel.from_settings(
        {"profile": "rfc", "epk_reuse_envelopes": 1, "kek_cache_entries": 4}
    )
    sealed = [dialect.seal(b"m", ec_key.public_key()).jwe for _ in range(6)]
    for jwe in sealed:
        assert dialect.open(jwe, ec_key).plaintext == b"m"
    assert len(dialect._dialect.keks) == 4  # bounded: the two oldest were dropped
    epk = dict(header_of(sealed[-1])["epk"])
    y = int.from_bytes(unb64url(epk["y"]), "big")
    off_curve = epk | {"y": b64url(((y + 1) % P256_P).to_bytes(32, "big"))}
    with pytest.raises(EnvelopeError, match="epk is not a point on P-256"):
        dialect.open(forged({"alg": "ECDH-ES+A128KW", "enc": "A256GCM", "epk": off_curve}), ec_key)
    padded = epk | {"x": epk["x"] + "="}
    with pytest.raises(EnvelopeError, match="base64url"):
        dialect.open(forged({"alg": "ECDH-ES+A128KW", "enc": "A256GCM", "epk": padded}), ec_key)
    extra = epk | {"d": "AAAA"}
    with pytest.raises(EnvelopeError, match="exactly the members"):
        dialect.open(forged({"alg": "ECDH-ES+A128KW", "enc": "A256GCM", "epk": extra}), ec_key)


def test_cache_holds_one_kek_per_epk_and_only_of_envelopes_that_opened(rfc, ec_key):
    keks = rfc._dialect.keks
    for _ in range(3):
        rfc.open(rfc.seal(b"m", ec_key.public_key()).jwe, ec_key)
    assert len(keks) == 1  # one reused epk: one entry, the later envelopes were hits
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    jwe = seal_with_epk(ephemeral, ec_key.public_key(), b"m")
    tag = bytearray(unb64url(jwe.tag))
    tag[0] ^= 0x01
    with pytest.raises(EnvelopeError, match="does not authenticate"):
        rfc.open(Jwe(**(jwe.to_dict() | {"tag": b64url(bytes(tag))})), ec_key)
    assert len(keks) == 1  # an envelope that did not open leaves nothing behind
    off = JweChannel.from_settings({"profile": "rfc", "kek_cache_entries": 0})
    assert off.open(rfc.seal(b"m", ec_key.public_key()).jwe, ec_key).plaintext == b"m"
    assert len(off._dialect.keks) == 0


@pytest.mark.parametrize(
    ("settings", "mentions"),
    [
        ({"profile": "upstream", "epk_reuse_seconds": 5}, "rfc profile only"),
        ({"epk_reuse_envelopes": 0}, "epk_reuse_envelopes"),
        ({"epk_reuse_seconds": -1}, "epk_reuse_seconds"),
        ({"kek_cache_entries": -1}, "kek_cache_entries"),
    ],
)
def test_reuse_settings_checked(settings, mentions):
    with pytest.raises(InvalidInput, match=mentions):
        JweChannel.from_settings(settings)
