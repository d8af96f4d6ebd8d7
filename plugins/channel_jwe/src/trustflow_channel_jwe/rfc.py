"""The RFC 7516 profile: flattened JSON JWE with the same six member names, built with jwcrypto.

Unlike the upstream dialect, the GCM AAD is ``ASCII(protected)`` (plus ``"." + aad`` when the
``aad`` member is present), so every byte of every member is authenticated. Requests use
``RSA-OAEP-256`` (or ``RSA-OAEP``) key transport; replies use ``alg: "dir"`` under the
request's content key. IVs must be 96 bits and tags 128 bits (RFC 7518 §5.3). As in the
``Jwe`` dataclass, an empty member means an absent one (``aad``; ``encrypted_key`` with
``dir``): drop empty members before handing the JSON to another RFC 7516 library.

Sealed to an EC P-256 key, a request uses ``ECDH-ES+A128KW`` key agreement instead
(RFC 7518 §4.6: an ephemeral P-256 key ``epk`` in the protected header, Concat KDF with
SHA-256, the random CEK wrapped with AES-128 key wrap), so opening costs one P-256 ECDH
instead of an RSA decryption. The reply is the same ``dir`` reply under the request's random
CEK as for RSA. ``open`` takes the ``alg`` allowlist from the key's type: an RSA key opens
only ``RSA-OAEP``/``RSA-OAEP-256``, an EC key only ``ECDH-ES+A128KW`` (no direct
``ECDH-ES``, no other curves); ``epk`` must be exactly ``{kty: EC, crv: P-256, x, y}`` with
32-byte coordinates of a point on the curve (``cryptography`` checks it; an invalid-curve
point is refused before any key agreement).

**Key-agreement reuse** (docs/online.md#ecdh-profile), the analogue of TLS session
resumption with the wire unchanged: :meth:`RfcDialect.seal` reuses one ephemeral P-256 key per
recipient for a bounded window (:class:`EphemeralKeys`: at most ``epk_reuse_seconds`` and
``epk_reuse_envelopes`` envelopes, 60 s and 10,000 by default; 1 envelope = a fresh key each
time), keeping only the derived key-encryption key (KEK), so sealing is a random CEK, an AES
key wrap and AES-GCM. :meth:`RfcDialect.open` remembers the KEK of envelopes that opened in a
bounded LRU (:class:`KekCache`, 1,024 entries by default, 0 = off) keyed by the exact ``epk``
``x``/``y`` text, ``apu``/``apv`` text, ``alg`` and the opening key's own public point: a hit
skips decoding and checking the point, the ECDH and the KDF (the identical text was decoded and
checked before); the header checks, the AES key unwrap and the GCM tag stay per envelope. Every
envelope still has its own random CEK, IV, ``iat`` and ``jti``.

Every request :meth:`RfcDialect.seal` writes carries ``iat`` (seconds since the epoch) and
``jti`` (128 random bits, base64url) in its protected header, so a receiver can refuse a
replayed or stale envelope (the gateway does: ``roles/gateway/freshness.py``); the header is
authenticated, so neither can be changed without breaking the envelope. ``open`` returns
them with the rest of the header and checks nothing about them itself.

Sealing to an RSA key uses :class:`jwcrypto.jwe.JWE`; sealing to a P-256 key and opening do
not. ``ECDH-ES+A128KW`` sealing needs its ephemeral key reused (above), which jwcrypto cannot
take. Opening: ``JWE.decrypt`` cannot return an
empty plaintext (it treats ``b""`` as failure), its base64url decoder is lenient, and its key
and algorithm objects cost more than the key agreement. It applies ``cryptography``'s
primitives to the strictly decoded members with the RFC 7518 parameters (RSAES-OAEP with
SHA-1 or SHA-256 and MGF1 of the same hash; ECDH on P-256, Concat KDF with SHA-256, AES key
unwrap; AES-GCM with a 128-bit tag), which the tests check against jwcrypto both ways.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from jwcrypto.jwe import JWE
from jwcrypto.jwk import JWK
from trustflow_core.channel import (
    EnvelopePrivateKey,
    EnvelopeRecipient,
    Jwe,
    OpenedEnvelope,
    SealedEnvelope,
)
from trustflow_core.errors import EnvelopeError
from trustflow_core.jose import (
    b64url_decode,
    b64url_encode,
    compact_json,
    header_string,
)

from .codec import DecodedJwe, decode_jwe, decode_protected, reject_unsupported_members
from .upstream import oaep

KEY_ALGS: Final = ("RSA-OAEP-256", "RSA-OAEP")
#: Key agreement for EC recipients: ephemeral-static ECDH on P-256, the CEK wrapped with A128KW.
ECDH_ALG: Final = "ECDH-ES+A128KW"
ECDH_CURVE: Final = "P-256"
EC_COORDINATE_BYTES: Final = 32
ECDH_KEK_BYTES: Final = 16
EPK_MEMBERS: Final = frozenset({"kty", "crv", "x", "y"})
GCM_KEY_BYTES: Final[dict[str, int]] = {"A128GCM": 16, "A192GCM": 24, "A256GCM": 32}
DEFAULT_ENC: Final = "A256GCM"
IV_BYTES: Final = 12
TAG_BYTES: Final = 16
_P256: Final = ec.SECP256R1()
_ECDH: Final = ec.ECDH()
_SHA256: Final = hashes.SHA256()
#: The fixed parts of the Concat KDF OtherInfo (RFC 7518 §4.6.2): AlgorithmID and SuppPubInfo.
_KDF_ALGORITHM_ID: Final = struct.pack(">I", len(ECDH_ALG)) + ECDH_ALG.encode("ascii")
_KDF_SUPP_PUB_INFO: Final = struct.pack(">I", ECDH_KEK_BYTES * 8)
#: The protected header of a ``dir`` reply for each ``enc`` (always the same bytes).
_REPLY_PROTECTED: Final = {
    enc: b64url_encode(compact_json({"alg": "dir", "enc": enc})) for enc in GCM_KEY_BYTES
}


_ENC_BY_KEY_BYTES: Final = {size: enc for enc, size in GCM_KEY_BYTES.items()}
#: What runs per envelope from other packages, under final names: the compiled build calls
#: them without a globals lookup each time (core's functions are not native calls from here).
_AESGCM: Final = AESGCM
_Jwe: Final = Jwe
_OpenedEnvelope: Final = OpenedEnvelope
_MappingProxyType: Final = MappingProxyType
_aes_key_unwrap: Final = aes_key_unwrap
_b64url_decode: Final = b64url_decode
_b64url_encode: Final = b64url_encode
_header_string: Final = header_string


def _enc_for_key(cek: bytes) -> str:
    enc = _ENC_BY_KEY_BYTES.get(len(cek))
    if enc is None:
        raise EnvelopeError(f"content key must be 16, 24 or 32 bytes, got {len(cek)}")
    return enc


def _header(jwe: Jwe, parts: DecodedJwe, algs: tuple[str, ...]) -> tuple[dict[str, Any], str, str]:
    header = decode_protected(jwe)
    reject_unsupported_members(header, "JWE protected header")
    alg = _header_string(header, "alg", "JWE protected header")
    enc = _header_string(header, "enc", "JWE protected header")
    if alg not in algs:
        raise EnvelopeError(f"JWE alg {alg!r} is not accepted here; expected one of {list(algs)}")
    if enc not in GCM_KEY_BYTES:
        raise EnvelopeError(f"JWE enc {enc!r} is not supported; use one of {sorted(GCM_KEY_BYTES)}")
    if len(parts.iv) != IV_BYTES:
        raise EnvelopeError(f"JWE iv must be {IV_BYTES} bytes, got {len(parts.iv)}")
    if len(parts.tag) != TAG_BYTES:
        raise EnvelopeError(f"JWE tag must be {TAG_BYTES} bytes, got {len(parts.tag)}")
    return header, alg, enc


#: Which parts of an ECDH envelope decide its KEK, as received: ``x``, ``y``, ``apu`` and
#: ``apv`` (None when absent) text of the header.
EpkText = tuple[str, str, str | None, str | None]


def _epk_text(header: dict[str, Any]) -> EpkText:
    """The ``epk`` coordinates and ``apu``/``apv`` as the header holds them, after the checks
    that cost no decoding: ``epk`` is exactly ``{kty: EC, crv: P-256, x, y}`` and every one of
    these members is a string. :func:`_epk_point` and :func:`_party_info` decode them."""
    epk = header.get("epk")
    if not isinstance(epk, dict):
        raise EnvelopeError(f"JWE {ECDH_ALG} needs an 'epk' JSON object in the protected header")
    if epk.keys() != EPK_MEMBERS:
        raise EnvelopeError(
            f"JWE epk must have exactly the members {sorted(EPK_MEMBERS)}, got {sorted(epk)}"
        )
    if epk["kty"] != "EC" or epk["crv"] != ECDH_CURVE:
        raise EnvelopeError(
            f"JWE epk must be kty 'EC' crv {ECDH_CURVE!r}, got {epk['kty']!r} {epk['crv']!r}"
        )
    x, y = epk["x"], epk["y"]
    for member, value in (("x", x), ("y", y)):
        if not isinstance(value, str):
            raise EnvelopeError(f"JWE epk member {member!r} must be a string")
    apu, apv = header.get("apu"), header.get("apv")
    for member, value in (("apu", apu), ("apv", apv)):
        if value is not None and not isinstance(value, str):
            raise EnvelopeError(f"JWE protected header member {member!r} must be a string")
    return x, y, apu, apv


def _epk_point(x: str, y: str) -> ec.EllipticCurvePublicKey:
    """The ``epk`` public key; refuses coordinates that are not 32 bytes of strict base64url
    and a point that is not on P-256 (``cryptography`` checks the curve equation and that each
    coordinate is < p), before any key agreement."""
    encoded = b"\x04"  # SEC 1, section 2.3.3: uncompressed point: 0x04 || x || y
    for member, value in (("x", x), ("y", y)):
        raw = _b64url_decode(value, f"JWE epk member {member!r}")
        if len(raw) != EC_COORDINATE_BYTES:
            raise EnvelopeError(
                f"JWE epk member {member!r} must be {EC_COORDINATE_BYTES} bytes, got {len(raw)}"
            )
        encoded += raw
    try:  # refuses coordinates >= p and points off the curve
        return ec.EllipticCurvePublicKey.from_encoded_point(_P256, encoded)
    except ValueError:
        raise EnvelopeError(f"JWE epk is not a point on {ECDH_CURVE}") from None


def _party_info(apu: str | None, apv: str | None) -> tuple[bytes, bytes]:
    """The decoded ``apu``/``apv`` (empty when absent)."""
    return (
        b"" if apu is None else _b64url_decode(apu, "JWE protected header member 'apu'"),
        b"" if apv is None else _b64url_decode(apv, "JWE protected header member 'apv'"),
    )


def _point_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _ecdh_es_kek(
    private_key: ec.EllipticCurvePrivateKey, epk: ec.EllipticCurvePublicKey, apu: bytes, apv: bytes
) -> bytes:
    """The ``ECDH-ES+A128KW`` key-encryption key (RFC 7518 §4.6.2): Concat KDF (NIST SP 800-56A,
    SHA-256) over the ECDH shared secret with AlgorithmID = ``alg``, PartyUInfo = ``apu``,
    PartyVInfo = ``apv``, SuppPubInfo = 128 (bits). The same computation as jwcrypto's
    ``_EcdhEs._derive`` with ``cryptography``'s public primitives and no JWK objects (which
    cost more than the key agreement); the tests check both directions against jwcrypto."""
    otherinfo = b"".join(
        (
            _KDF_ALGORITHM_ID,
            struct.pack(">I", len(apu)),
            apu,
            struct.pack(">I", len(apv)),
            apv,
            _KDF_SUPP_PUB_INFO,
        )
    )
    shared = private_key.exchange(_ECDH, epk)
    return ConcatKDFHash(_SHA256, ECDH_KEK_BYTES, otherinfo).derive(shared)


#: Client side: one ephemeral key serves a recipient for at most this long ...
DEFAULT_EPK_REUSE_SECONDS = 60.0
#: ... and at most this many envelopes (1: a fresh ephemeral key per envelope).
DEFAULT_EPK_REUSE_ENVELOPES = 10_000
#: Receiver side: KEKs of opened envelopes remembered per dialect (0: none).
DEFAULT_KEK_CACHE_ENTRIES = 1024
#: Recipients (client) or opening keys (receiver) one dialect keeps state for; past it, the
#: oldest is forgotten.
_MAX_KEYS: Final = 16


@dataclass
class _Ephemeral:
    epk: dict[str, str]
    kek: bytes
    born: float
    uses: int = 0


class EphemeralKeys:
    """The sealing side's ephemeral P-256 keys: per recipient (by its exact public point), one
    key for at most ``seconds`` (by ``clock``) and ``envelopes`` envelopes, then a new one.
    Only its public ``epk`` members and the KEK it agreed with the recipient (Concat KDF,
    ``apu``/``apv`` empty) are kept; the private scalar is dropped at once. Not thread-safe:
    one dialect per thread or event loop."""

    def __init__(
        self,
        seconds: float = DEFAULT_EPK_REUSE_SECONDS,
        envelopes: int = DEFAULT_EPK_REUSE_ENVELOPES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not seconds >= 0 or envelopes < 1:
            raise ValueError("epk reuse needs seconds >= 0 and envelopes >= 1")
        self.seconds = seconds
        self.envelopes = envelopes
        self._clock = clock
        self._by_recipient: OrderedDict[bytes, _Ephemeral] = OrderedDict()

    def current(self, recipient: ec.EllipticCurvePublicKey) -> tuple[dict[str, str], bytes]:
        """The ``epk`` members and the KEK for the next envelope to ``recipient``."""
        point = _point_bytes(recipient)
        now = self._clock()
        entry = self._by_recipient.get(point)
        if (
            entry is None
            or entry.uses >= self.envelopes
            or not entry.born <= now < entry.born + self.seconds
        ):
            private = ec.generate_private_key(_P256)
            numbers = private.public_key().public_numbers()
            epk = {
                "kty": "EC",
                "crv": ECDH_CURVE,
                "x": b64url_encode(numbers.x.to_bytes(EC_COORDINATE_BYTES, "big")),
                "y": b64url_encode(numbers.y.to_bytes(EC_COORDINATE_BYTES, "big")),
            }
            entry = _Ephemeral(epk, _ecdh_es_kek(private, recipient, b"", b""), now)
            self._by_recipient[point] = entry
            while len(self._by_recipient) > _MAX_KEYS:
                self._by_recipient.popitem(last=False)
        self._by_recipient.move_to_end(point)
        entry.uses += 1
        return entry.epk, entry.kek


class KekCache:
    """The opening side's KEKs: an LRU of at most ``entries`` from (``alg``, the opening key's
    public point, the ``epk`` ``x``/``y`` text, the ``apu``/``apv`` text) to the KEK those
    derive. Keyed by the whole text, never a prefix or a digest of it: strict base64url maps
    each byte string to exactly one text, so equal text means equal bytes. Only the KEKs of
    envelopes that opened are put in. Not thread-safe: one dialect per thread or event loop
    (a gateway worker)."""

    def __init__(self, entries: int = DEFAULT_KEK_CACHE_ENTRIES) -> None:
        if entries < 0:
            raise ValueError("the KEK cache size must be >= 0")
        self.entries = entries
        self._keks: OrderedDict[tuple[str, bytes, EpkText], bytes] = OrderedDict()
        #: id of an opening key -> (the key, kept alive so the id stays its own; its point)
        self._points: dict[int, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}

    def __len__(self) -> int:
        return len(self._keks)

    def key(
        self, private_key: ec.EllipticCurvePrivateKey, text: EpkText
    ) -> tuple[str, bytes, EpkText]:
        """The cache key of an envelope with ``text`` opened by ``private_key``."""
        known = self._points.get(id(private_key))
        if known is None or known[0] is not private_key:
            if len(self._points) >= _MAX_KEYS:
                self._points.clear()
            known = (private_key, _point_bytes(private_key.public_key()))
            self._points[id(private_key)] = known
        return ECDH_ALG, known[1], text

    def get(self, key: tuple[str, bytes, EpkText]) -> bytes | None:
        kek = self._keks.get(key)
        if kek is not None:
            self._keks.move_to_end(key)
        return kek

    def put(self, key: tuple[str, bytes, EpkText], kek: bytes) -> None:
        if self.entries:
            self._keks[key] = kek
            self._keks.move_to_end(key)
            while len(self._keks) > self.entries:
                self._keks.popitem(last=False)


#: The type of an opening key -> whether it is an EC key (else RSA): ``isinstance`` against
#: ``cryptography``'s key ABCs costs about 0.3 us a call, per envelope.
_EC_KEY_TYPES: Final[dict[type, bool]] = {}


def _is_ec_key(private_key: object) -> bool:
    """True for an EC private key, False for an RSA one; :class:`EnvelopeError` otherwise."""
    kind = _EC_KEY_TYPES.get(type(private_key))
    if kind is None:
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            kind = True
        elif isinstance(private_key, RSAPrivateKey):
            kind = False
        else:
            raise EnvelopeError(f"private key must be an RSA or EC key, got {type(private_key)}")
        _EC_KEY_TYPES[type(private_key)] = kind
    return kind


def _decrypt_content(jwe: Jwe, parts: DecodedJwe, enc: str, cek: bytes) -> bytes:
    aad = jwe.protected.encode("ascii")
    if jwe.aad:
        aad += b"." + jwe.aad.encode("ascii")
    try:
        return _AESGCM(cek).decrypt(parts.iv, parts.ciphertext + parts.tag, aad)
    except InvalidTag:
        raise EnvelopeError(
            "JWE does not authenticate: wrong content key, or a member was altered"
        ) from None


def _to_jwe(token: JWE) -> Jwe:
    return Jwe.from_dict(json.loads(token.serialize()))


class RfcDialect:
    """RFC 7516 JWE (flattened JSON members) with ``alg`` key transport (RSA recipients) or
    ``ECDH-ES+A128KW`` key agreement (EC P-256 recipients) and ``enc`` content encryption for
    requests, ``dir`` for replies."""

    def __init__(
        self,
        alg: str = "RSA-OAEP-256",
        enc: str = DEFAULT_ENC,
        *,
        ephemeral: EphemeralKeys | None = None,
        keks: KekCache | None = None,
    ) -> None:
        """``ephemeral``: the sealing side's ephemeral P-256 keys (default: reused for 60 s /
        10,000 envelopes per recipient); ``keks``: the opening side's KEK cache (default:
        1,024 entries)."""
        if alg not in KEY_ALGS:
            raise ValueError(f"alg must be one of {list(KEY_ALGS)}, got {alg!r}")
        if enc not in GCM_KEY_BYTES:
            raise ValueError(f"enc must be one of {sorted(GCM_KEY_BYTES)}, got {enc!r}")
        self.alg = alg
        self.enc = enc
        self.ephemeral = EphemeralKeys() if ephemeral is None else ephemeral
        self.keks = KekCache() if keks is None else keks

    def seal(self, plaintext: bytes, recipient: EnvelopeRecipient) -> SealedEnvelope:
        """RSA recipient: ``alg`` (RSA-OAEP-256/RSA-OAEP) key transport; EC P-256 recipient:
        ``ECDH-ES+A128KW`` with ``epk`` in the protected header. Either way ``enc`` under a
        fresh random CEK, ``iat`` and ``jti`` in the protected header."""
        if isinstance(recipient, ec.EllipticCurvePublicKey):
            if not isinstance(recipient.curve, ec.SECP256R1):
                raise EnvelopeError(
                    f"EC recipient must be on {ECDH_CURVE}, got {recipient.curve.name}"
                )
            alg = ECDH_ALG
        elif isinstance(recipient, RSAPublicKey):
            alg = self.alg
        else:
            raise EnvelopeError(
                f"recipient must be an RSA or EC P-256 public key, got {type(recipient)}"
            )
        if alg == ECDH_ALG:
            return self._seal_ecdh(plaintext, recipient)  # type: ignore[arg-type]
        header = {
            "alg": alg,
            "enc": self.enc,
            "iat": int(time.time()),
            "jti": secrets.token_urlsafe(16),
        }
        protected = compact_json(header).decode("ascii")
        token = JWE(plaintext, protected=protected, algs=[alg, self.enc])
        token.add_recipient(JWK.from_pyca(recipient))
        return SealedEnvelope(_to_jwe(token), token.cek)

    def _seal_ecdh(self, plaintext: bytes, recipient: ec.EllipticCurvePublicKey) -> SealedEnvelope:
        """``ECDH-ES+A128KW`` with ``cryptography``'s primitives (jwcrypto makes its own
        ephemeral key per token, and its six-member form cannot carry ``epk``): the ``epk``
        and KEK of :attr:`ephemeral`, a fresh random CEK wrapped with AES key wrap (RFC 3394),
        ``epk``/``iat``/``jti`` in the protected header, which is the GCM AAD."""
        epk, kek = self.ephemeral.current(recipient)
        header = {
            "alg": ECDH_ALG,
            "enc": self.enc,
            "epk": epk,
            "iat": int(time.time()),
            "jti": secrets.token_urlsafe(16),
        }
        protected = _b64url_encode(compact_json(header))
        cek = os.urandom(GCM_KEY_BYTES[self.enc])
        iv = os.urandom(IV_BYTES)
        sealed = _AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
        jwe = _Jwe(
            protected,
            _b64url_encode(aes_key_wrap(kek, cek)),
            _b64url_encode(iv),
            _b64url_encode(sealed[:-TAG_BYTES]),
            _b64url_encode(sealed[-TAG_BYTES:]),
        )
        return SealedEnvelope(jwe, cek)

    def open(self, jwe: Jwe, private_key: EnvelopePrivateKey) -> OpenedEnvelope:
        """Open with an RSA key (``RSA-OAEP-256``/``RSA-OAEP`` only) or an EC P-256 key
        (``ECDH-ES+A128KW`` only, ``epk`` checked first: :func:`_epk_text`, and unless
        :attr:`keks` holds the KEK for that exact text and key, :func:`_epk_point`)."""
        if _is_ec_key(private_key):
            if not isinstance(private_key.curve, ec.SECP256R1):  # type: ignore[union-attr]
                raise EnvelopeError(f"EC private key must be on {ECDH_CURVE}")
            algs: tuple[str, ...] = (ECDH_ALG,)
        else:
            algs = KEY_ALGS
        parts = decode_jwe(jwe)
        header, alg, enc = _header(jwe, parts, algs)
        kek = cache_key = None
        derived = False
        if alg == ECDH_ALG:  # only accepted with an EC key
            ec_key = cast(ec.EllipticCurvePrivateKey, private_key)
            text = _epk_text(header)
            cache_key = self.keks.key(ec_key, text)
            kek = self.keks.get(cache_key)
            if kek is None:  # not opened before: decode and check the point, agree
                epk = _epk_point(text[0], text[1])
                apu, apv = _party_info(text[2], text[3])
        try:
            if alg == ECDH_ALG:
                if kek is None:
                    kek, derived = _ecdh_es_kek(ec_key, epk, apu, apv), True
                cek = _aes_key_unwrap(kek, parts.encrypted_key)
            else:  # RFC 7518 §4.3
                cek = cast(RSAPrivateKey, private_key).decrypt(parts.encrypted_key, oaep(alg))
        except (ValueError, InvalidUnwrap):
            raise EnvelopeError(
                f"cannot decrypt JWE encrypted_key with {alg}: not for this key, or altered"
            ) from None
        if len(cek) != GCM_KEY_BYTES[enc]:
            raise EnvelopeError(f"JWE content key is {len(cek)} bytes, enc {enc!r} needs another")
        plaintext = _decrypt_content(jwe, parts, enc, cek)
        if derived:  # it opened: remember its KEK
            self.keks.put(cache_key, kek)  # type: ignore[arg-type]
        return _OpenedEnvelope(plaintext, _MappingProxyType(header), cek)

    def seal_reply(self, plaintext: bytes, cek: bytes) -> Jwe:
        """``{"alg":"dir","enc":<by CEK size>}`` under the request's CEK, fresh 96-bit IV, GCM
        AAD = ``ASCII(protected)``: what ``jwcrypto.jwe.JWE`` writes for ``dir`` (AES-GCM
        directly, without the token object's copying)."""
        protected = _REPLY_PROTECTED[_enc_for_key(cek)]
        iv = os.urandom(IV_BYTES)
        sealed = _AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
        return _Jwe(
            protected,
            "",
            _b64url_encode(iv),
            _b64url_encode(sealed[:-TAG_BYTES]),
            _b64url_encode(sealed[-TAG_BYTES:]),
        )

    def open_reply(self, jwe: Jwe, cek: bytes) -> bytes:
        parts = decode_jwe(jwe)
        _, _, enc = _header(jwe, parts, ("dir",))
        if enc != _enc_for_key(cek):
            raise EnvelopeError(f"reply JWE enc {enc!r} does not fit a {len(cek)}-byte content key")
        if parts.encrypted_key:
            raise EnvelopeError("reply JWE with alg 'dir' must have an empty encrypted_key")
        return _decrypt_content(jwe, parts, enc, cek)
