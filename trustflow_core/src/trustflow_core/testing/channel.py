"""Conformance kit for :class:`~trustflow_core.channel.EnvelopeChannel` backends.

Subclass :class:`EnvelopeChannelConformance` in a plugin's tests and override the ``channel``
fixture::

    class TestJweChannelConformance(EnvelopeChannelConformance):
        @pytest.fixture
        def channel(self):
            return JweChannel.from_settings({"profile": "rfc"})

Capability fixtures default to the strict answer; override them to relax a check:

* ``authenticates_protected_header`` (True): a changed byte of the JWE ``protected`` member
  must make ``open``/``open_reply`` fail. A dialect whose header is not integrity-protected
  (the upstream JWE dialect, docs/compat.md#jwe-aad-is-the-aad-member) returns False and tests its
  header handling itself.

The helpers :func:`tamper_member`, :func:`noncanonical_variants`, :func:`make_cert` and
:func:`handmade_jws` are public so plugin tests can build their own negative cases.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from ..channel import EnvelopeChannel, Jwe, Jws
from ..errors import EnvelopeError
from ..identity import party_id_of_chain, party_id_of_key

JWE_MEMBERS = ("protected", "encrypted_key", "iv", "ciphertext", "tag", "aad")
JWS_MEMBERS = ("protected", "payload", "signature")
MIB = 1 << 20

E = TypeVar("E", Jwe, Jws)


# ---- encoding helpers (written independently of any backend) ---------------------------------


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(value: str) -> bytes:
    """Lenient base64url decoding (padding optional), for building test inputs."""
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def tamper_member(envelope: E, member: str, index: int = 0) -> E:
    """Flip the low bit of byte ``index`` (modulo the length) of the decoded ``member`` and
    re-encode canonically; an empty member becomes one zero byte instead."""
    data = bytearray(unb64url(getattr(envelope, member)))
    if data:
        data[index % len(data)] ^= 0x01
    else:
        data = bytearray(b"\x00")
    return dataclasses.replace(envelope, **{member: b64url(bytes(data))})


def tamper_positions(value: str) -> list[int]:
    """First, middle and last byte of a decoded member (just 0 when empty)."""
    size = len(unb64url(value))
    return sorted({0, size // 2, max(size - 1, 0)})


def noncanonical_variants(value: str) -> list[str]:
    """Encodings a strict base64url-no-pad decoder must reject: flipped spare trailing bits
    (decoding to the same bytes under a lenient decoder, when the length leaves spare bits),
    ``=`` padding, ``+``/``/`` alphabet, and embedded whitespace."""
    variants = [
        value + "=",
        value + "==",
        "+" + value[1:],
        "/" + value[1:],
        value[:1] + " " + value[1:],
    ]
    spare_bits = {2: 4, 3: 2}.get(len(value) % 4, 0)
    if spare_bits:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(value[-1])
        variants.append(value[:-1] + alphabet[last ^ 1])
    return [v for v in variants if v != value]


# ---- keys and certificates -------------------------------------------------------------------


@functools.cache
def rsa_test_key(label: str) -> rsa.RSAPrivateKey:
    """A throwaway RSA-2048 key per label, generated once per test session."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_cert(
    subject_key: rsa.RSAPrivateKey,
    issuer_key: rsa.RSAPrivateKey,
    subject: str,
    issuer: str,
    *,
    not_before: datetime.datetime | None = None,
    days: int = 30,
) -> x509.Certificate:
    """A minimal SHA256withRSA certificate for ``subject_key`` signed by ``issuer_key``."""
    start = not_before or datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .sign(issuer_key, hashes.SHA256())
    )


def handmade_jws(
    header: Mapping[str, Any] | bytes, payload: bytes, key: rsa.RSAPrivateKey | None
) -> Jws:
    """A JWS built without the backend: RS256 (PKCS#1 v1.5) over ``protected.payload`` with
    ``key``, or an empty signature when ``key`` is None. ``header`` may be raw bytes."""
    raw = header if isinstance(header, bytes) else json.dumps(dict(header)).encode()
    protected, encoded = b64url(raw), b64url(payload)
    signature = b""
    if key is not None:
        signature = key.sign(f"{protected}.{encoded}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return Jws(protected, encoded, b64url(signature))


def x5c_entry(cert: x509.Certificate) -> str:
    """Standard base64 with padding of the DER certificate (the ``x5c`` form)."""
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


@dataclass(frozen=True)
class Signer:
    """A signing key with its two-certificate chain (leaf first) and the root's key."""

    key: rsa.RSAPrivateKey
    chain: tuple[x509.Certificate, ...]
    root_key: rsa.RSAPrivateKey


@functools.cache
def _signer(label: str) -> Signer:
    root_key, leaf_key = rsa_test_key(f"{label}-root"), rsa_test_key(f"{label}-leaf")
    root = make_cert(root_key, root_key, f"{label} root", f"{label} root")
    leaf = make_cert(leaf_key, root_key, f"{label} leaf", f"{label} root")
    return Signer(leaf_key, (leaf, root), root_key)


def _der(chain: Any) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in chain]


# ---- the kit ---------------------------------------------------------------------------------


class EnvelopeChannelConformance:
    """Generic tests every :class:`EnvelopeChannel` backend must pass."""

    @pytest.fixture
    def channel(self) -> EnvelopeChannel:
        """The backend under test (override)."""
        raise NotImplementedError("override the 'channel' fixture")

    @pytest.fixture
    def authenticates_protected_header(self) -> bool:
        """Whether changing the JWE ``protected`` member must make opening fail."""
        return True

    @pytest.fixture
    def recipient_key(self) -> rsa.RSAPrivateKey:
        return rsa_test_key("recipient")

    @pytest.fixture
    def stranger_key(self) -> rsa.RSAPrivateKey:
        return rsa_test_key("stranger")

    @pytest.fixture
    def signer(self) -> Signer:
        return _signer("alice")

    @pytest.fixture
    def other_signer(self) -> Signer:
        return _signer("mallory")

    # ---- JWE: seal / open ----

    def test_is_an_envelope_channel(self, channel: EnvelopeChannel) -> None:
        assert isinstance(channel, EnvelopeChannel)
        assert isinstance(channel.name, str) and channel.name

    @pytest.mark.parametrize("size", [0, 1, 1000, MIB])
    def test_seal_open_round_trip(
        self, channel: EnvelopeChannel, recipient_key: rsa.RSAPrivateKey, size: int
    ) -> None:
        plaintext = os.urandom(size)
        sealed = channel.seal(plaintext, recipient_key.public_key())
        opened = channel.open(sealed.jwe, recipient_key)
        assert opened.plaintext == plaintext
        assert opened.cek == sealed.cek
        assert isinstance(opened.header, Mapping)
        assert isinstance(opened.header.get("alg"), str)
        assert isinstance(opened.header.get("enc"), str)

    def test_sealed_members_are_unpadded_base64url(
        self, channel: EnvelopeChannel, recipient_key: rsa.RSAPrivateKey
    ) -> None:
        jwe = channel.seal(b"members", recipient_key.public_key()).jwe
        for member, value in jwe.to_dict().items():
            assert isinstance(value, str), member
            assert b64url(unb64url(value)) == value, member

    def test_sealed_envelope_survives_json(
        self, channel: EnvelopeChannel, recipient_key: rsa.RSAPrivateKey
    ) -> None:
        sealed = channel.seal(b"over the wire", recipient_key.public_key())
        wire = json.loads(json.dumps(sealed.jwe.to_dict()))
        assert channel.open(Jwe.from_dict(wire), recipient_key).plaintext == b"over the wire"

    def test_seal_uses_fresh_content_keys(
        self, channel: EnvelopeChannel, recipient_key: rsa.RSAPrivateKey
    ) -> None:
        first = channel.seal(b"same", recipient_key.public_key())
        second = channel.seal(b"same", recipient_key.public_key())
        assert first.cek != second.cek
        assert first.jwe.iv != second.jwe.iv
        assert first.jwe.ciphertext != second.jwe.ciphertext

    def test_sealed_envelope_repr_hides_the_content_key(
        self, channel: EnvelopeChannel, recipient_key: rsa.RSAPrivateKey
    ) -> None:
        sealed = channel.seal(b"secret", recipient_key.public_key())
        opened = channel.open(sealed.jwe, recipient_key)
        for text in (repr(sealed), repr(opened), repr(channel)):
            assert sealed.cek.hex() not in text
            assert repr(sealed.cek) not in text

    def test_open_with_wrong_private_key_fails(
        self,
        channel: EnvelopeChannel,
        recipient_key: rsa.RSAPrivateKey,
        stranger_key: rsa.RSAPrivateKey,
    ) -> None:
        sealed = channel.seal(b"not for you", recipient_key.public_key())
        with pytest.raises(EnvelopeError):
            channel.open(sealed.jwe, stranger_key)

    @pytest.mark.parametrize("member", JWE_MEMBERS)
    def test_open_rejects_tampered_member(
        self,
        channel: EnvelopeChannel,
        recipient_key: rsa.RSAPrivateKey,
        authenticates_protected_header: bool,
        member: str,
    ) -> None:
        if member == "protected" and not authenticates_protected_header:
            pytest.skip("this backend does not authenticate the protected header")
        jwe = channel.seal(b"tamper with me", recipient_key.public_key()).jwe
        for index in tamper_positions(getattr(jwe, member)):
            with pytest.raises(EnvelopeError):
                channel.open(tamper_member(jwe, member, index), recipient_key)

    @pytest.mark.parametrize("member", JWE_MEMBERS)
    def test_open_rejects_noncanonical_base64(
        self, channel: EnvelopeChannel, recipient_key: rsa.RSAPrivateKey, member: str
    ) -> None:
        jwe = channel.seal(b"0123456789", recipient_key.public_key()).jwe
        for variant in noncanonical_variants(getattr(jwe, member)):
            with pytest.raises(EnvelopeError):
                channel.open(dataclasses.replace(jwe, **{member: variant}), recipient_key)

    @pytest.mark.parametrize(
        "header",
        [
            b"",
            b"not json",
            b"[]",
            b'"alg"',
            b"{}",
            b'{"alg":"RSA-OAEP-256"}',
            b'{"enc":"A128GCM"}',
            b'{"alg":"none","enc":"A128GCM"}',
            b'{"alg":"RSA-OAEP-256","enc":"A128GCM","alg":"RSA-OAEP-256"}',
            b'{"alg":"RSA-OAEP-256","enc":"A128GCM"',
            b"\xff\xfe{}",
        ],
    )
    def test_open_rejects_malformed_protected_header(
        self, channel: EnvelopeChannel, recipient_key: rsa.RSAPrivateKey, header: bytes
    ) -> None:
        jwe = channel.seal(b"header", recipient_key.public_key()).jwe
        with pytest.raises(EnvelopeError):
            channel.open(dataclasses.replace(jwe, protected=b64url(header)), recipient_key)

    # ---- JWE: replies under the request's content key ----

    @pytest.mark.parametrize("size", [0, 1000, MIB])
    def test_reply_round_trip(
        self, channel: EnvelopeChannel, recipient_key: rsa.RSAPrivateKey, size: int
    ) -> None:
        sealed = channel.seal(b"request", recipient_key.public_key())
        opened = channel.open(sealed.jwe, recipient_key)
        reply = os.urandom(size)
        jwe = channel.seal_reply(reply, opened.cek)
        wire = Jwe.from_dict(json.loads(json.dumps(jwe.to_dict())))
        assert channel.open_reply(wire, sealed.cek) == reply

    def test_open_reply_with_wrong_cek_fails(
        self, channel: EnvelopeChannel, recipient_key: rsa.RSAPrivateKey
    ) -> None:
        first = channel.seal(b"one", recipient_key.public_key())
        second = channel.seal(b"two", recipient_key.public_key())
        reply = channel.seal_reply(b"for the first", first.cek)
        with pytest.raises(EnvelopeError):
            channel.open_reply(reply, second.cek)

    @pytest.mark.parametrize("member", JWE_MEMBERS)
    def test_open_reply_rejects_tampered_member(
        self,
        channel: EnvelopeChannel,
        recipient_key: rsa.RSAPrivateKey,
        authenticates_protected_header: bool,
        member: str,
    ) -> None:
        if member == "protected" and not authenticates_protected_header:
            pytest.skip("this backend does not authenticate the protected header")
        cek = channel.seal(b"request", recipient_key.public_key()).cek
        jwe = channel.seal_reply(b"tamper with the reply", cek)
        for index in tamper_positions(getattr(jwe, member)):
            with pytest.raises(EnvelopeError):
                channel.open_reply(tamper_member(jwe, member, index), cek)

    @pytest.mark.parametrize("member", JWE_MEMBERS)
    def test_open_reply_rejects_noncanonical_base64(
        self, channel: EnvelopeChannel, recipient_key: rsa.RSAPrivateKey, member: str
    ) -> None:
        cek = channel.seal(b"request", recipient_key.public_key()).cek
        jwe = channel.seal_reply(b"0123456789", cek)
        for variant in noncanonical_variants(getattr(jwe, member)):
            with pytest.raises(EnvelopeError):
                channel.open_reply(dataclasses.replace(jwe, **{member: variant}), cek)

    # ---- JWS ----

    @pytest.mark.parametrize("payload", [b"", b'{"owner_party_id":"x"}', bytes(range(256))])
    def test_sign_verify_with_chain(
        self, channel: EnvelopeChannel, signer: Signer, payload: bytes
    ) -> None:
        jws = channel.sign(payload, signer.key, signer.chain)
        wire = Jws.from_dict(json.loads(json.dumps(jws.to_dict())))
        verified = channel.verify(wire)
        assert verified.payload == payload
        assert _der(verified.chain) == _der(signer.chain)
        assert verified.header["alg"] == "RS256"
        assert party_id_of_chain(verified.chain) == party_id_of_key(signer.root_key.public_key())

    def test_sign_writes_x5c_as_padded_standard_base64(
        self, channel: EnvelopeChannel, signer: Signer
    ) -> None:
        jws = channel.sign(b"x5c", signer.key, signer.chain)
        header = json.loads(unb64url(jws.protected))
        assert header["alg"] == "RS256"
        assert header["x5c"] == [x5c_entry(c) for c in signer.chain]

    def test_sign_verify_with_public_key_and_no_chain(
        self, channel: EnvelopeChannel, signer: Signer
    ) -> None:
        jws = channel.sign(b"register", signer.key)
        assert "x5c" not in json.loads(unb64url(jws.protected))
        verified = channel.verify(jws, public_key=signer.key.public_key())
        assert verified.payload == b"register"
        assert tuple(verified.chain) == ()

    def test_verify_without_chain_or_key_fails(
        self, channel: EnvelopeChannel, signer: Signer
    ) -> None:
        with pytest.raises(EnvelopeError):
            channel.verify(channel.sign(b"who am i", signer.key))

    def test_verify_with_wrong_public_key_fails(
        self, channel: EnvelopeChannel, signer: Signer, stranger_key: rsa.RSAPrivateKey
    ) -> None:
        jws = channel.sign(b"payload", signer.key)
        with pytest.raises(EnvelopeError):
            channel.verify(jws, public_key=stranger_key.public_key())

    @pytest.mark.parametrize("member", JWS_MEMBERS)
    def test_verify_rejects_tampered_member(
        self, channel: EnvelopeChannel, signer: Signer, member: str
    ) -> None:
        jws = channel.sign(b'{"request":"payload"}', signer.key, signer.chain)
        for index in tamper_positions(getattr(jws, member)):
            with pytest.raises(EnvelopeError):
                channel.verify(tamper_member(jws, member, index))

    @pytest.mark.parametrize("member", JWS_MEMBERS)
    def test_verify_rejects_noncanonical_base64(
        self, channel: EnvelopeChannel, signer: Signer, member: str
    ) -> None:
        jws = channel.sign(b"0123456789", signer.key, signer.chain)
        for variant in noncanonical_variants(getattr(jws, member)):
            with pytest.raises(EnvelopeError):
                channel.verify(dataclasses.replace(jws, **{member: variant}))

    def test_verify_rejects_broken_chain(
        self, channel: EnvelopeChannel, signer: Signer, other_signer: Signer
    ) -> None:
        broken = [x5c_entry(signer.chain[0]), x5c_entry(other_signer.chain[1])]
        jws = handmade_jws({"alg": "RS256", "x5c": broken}, b"payload", signer.key)
        with pytest.raises(EnvelopeError):
            channel.verify(jws)

    def test_verify_rejects_signature_by_other_than_leaf(
        self, channel: EnvelopeChannel, signer: Signer, other_signer: Signer
    ) -> None:
        header = {"alg": "RS256", "x5c": [x5c_entry(c) for c in signer.chain]}
        jws = handmade_jws(header, b"payload", other_signer.key)
        with pytest.raises(EnvelopeError):
            channel.verify(jws)

    def test_verify_accepts_handmade_rs256(self, channel: EnvelopeChannel, signer: Signer) -> None:
        """The reference for the negative cases below: a well-formed hand-made JWS verifies."""
        header = {"alg": "RS256", "x5c": [x5c_entry(c) for c in signer.chain]}
        assert channel.verify(handmade_jws(header, b"ok", signer.key)).payload == b"ok"

    @pytest.mark.parametrize(
        "header",
        [
            b"",
            b"not json",
            b"[1]",
            b"{}",
            b'{"alg":7}',
            b'{"alg":"RS256","alg":"RS256"}',
            b'{"alg":"RS256"',
            {"alg": "none"},
            {"alg": "HS256"},
            {"alg": "ES256"},
            {"alg": "RS256", "x5c": "not a list"},
            {"alg": "RS256", "x5c": []},
            {"alg": "RS256", "x5c": ["@@@@"]},
            {"alg": "RS256", "x5c": ["AAAA"]},
            {"alg": "RS256", "x5c": [7]},
        ],
    )
    def test_verify_rejects_malformed_header(
        self, channel: EnvelopeChannel, signer: Signer, header: Any
    ) -> None:
        jws = handmade_jws(header, b"payload", signer.key)
        with pytest.raises(EnvelopeError):
            channel.verify(jws)
        with pytest.raises(EnvelopeError):
            channel.verify(jws, public_key=signer.key.public_key())

    def test_verify_rejects_x5c_in_other_encodings(
        self, channel: EnvelopeChannel, signer: Signer
    ) -> None:
        leaf = x5c_entry(signer.chain[0])
        variants = [leaf.rstrip("=") if leaf.endswith("=") else leaf + "=", b64url(unb64url(leaf))]
        for entry in [v for v in variants if v != leaf]:
            jws = handmade_jws({"alg": "RS256", "x5c": [entry]}, b"payload", signer.key)
            with pytest.raises(EnvelopeError):
                channel.verify(jws)
