"""JWS as the upstream system uses it (docs/compat.md#jws-dialect); also plain RFC 7515 for RS256.

* Header ``{"alg":"RS256","x5c":[...]}`` (compact when we write it), ``x5c`` omitted for an
  empty chain; entries are standard base64 **with** padding of DER, leaf first. Extra header
  ``claims`` (e.g. the freshness claims ``iat``/``jti``) follow them; without claims the
  header is byte-for-byte upstream's.
* Signature: RSASSA-PKCS1-v1_5/SHA-256 over ``ASCII(protected + "." + payload)``. Members are
  decoded strictly, so the transmitted strings equal the upstream CM's re-encoding
  (docs/compat.md#jws-dialect).
* ``PS256`` (RSASSA-PSS/SHA-256, MGF1-SHA-256, salt = 32 bytes) is also accepted, as the CM
  does; ``none``, ``HS*`` and ``ES*``/``EdDSA`` are refused with specific messages.
* Every ``x5c`` entry must be a fully readable certificate (public key and signature
  algorithm decoded, :func:`trustflow_core.identity.load_der_certificate`); anything else is an
  :class:`~trustflow_core.errors.EnvelopeError` naming the entry.
* The ``x5c`` chain is checked like the upstream CM: certificate *i* must be signed by
  certificate *i+1* — signatures only, **no** validity period, CA, key-usage, name-chaining or
  trust-anchor checks (docs/compat.md#x5c-chain-signature-only; upstream certificates are
  short-lived and self-signed). Identity is the caller's business: the party id of the LAST
  certificate (:func:`trustflow_core.identity.party_id_of_chain`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from trustflow_core.channel import Jws, VerifiedJws
from trustflow_core.errors import EnvelopeError, InvalidInput
from trustflow_core.identity import load_der_certificate, signed_by
from trustflow_core.jose import (
    b64std_decode,
    b64std_encode,
    b64url_decode,
    b64url_encode,
    compact_json,
    header_string,
    parse_object,
)

HEADER = "JWS protected header"
_ACCEPTED_ALGS: dict[str, padding.AsymmetricPadding] = {
    "RS256": padding.PKCS1v15(),
    "PS256": padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
}


def _spki(key: Any) -> bytes:
    spki: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki


def sign(
    payload: bytes,
    private_key: RSAPrivateKey,
    chain: Sequence[x509.Certificate] = (),
    *,
    claims: Mapping[str, Any] | None = None,
) -> Jws:
    """RS256 JWS of ``payload``; ``chain`` (leaf first) goes into ``x5c`` and its leaf must
    hold the signing key's public key. ``claims`` are added to the protected header after
    ``alg`` and ``x5c`` (which they may not replace)."""
    if not isinstance(private_key, RSAPrivateKey):
        raise EnvelopeError(f"JWS signing key must be an RSA key, got {type(private_key)}")
    header: dict[str, Any] = {"alg": "RS256"}
    if chain:
        if _spki(chain[0].public_key()) != _spki(private_key.public_key()):
            raise EnvelopeError("chain[0] does not hold the public key of the signing key")
        header["x5c"] = [
            b64std_encode(cert.public_bytes(serialization.Encoding.DER)) for cert in chain
        ]
    for name, value in (claims or {}).items():
        if name in ("alg", "x5c", "crit"):
            raise EnvelopeError(f"JWS claim {name!r} may not be set as an extra header member")
        header[name] = value
    protected = b64url_encode(compact_json(header))
    encoded_payload = b64url_encode(payload)
    signing_input = f"{protected}.{encoded_payload}".encode("ascii")
    signature = private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return Jws(protected=protected, payload=encoded_payload, signature=b64url_encode(signature))


def _signature_padding(header: dict[str, Any]) -> padding.AsymmetricPadding:
    alg = header_string(header, "alg", HEADER)
    if alg in _ACCEPTED_ALGS:
        return _ACCEPTED_ALGS[alg]
    if alg.lower() == "none":
        raise EnvelopeError("JWS alg 'none' (unsigned) is not accepted")
    if alg.startswith("HS"):
        raise EnvelopeError(f"JWS alg {alg!r} is a shared-secret MAC and is not accepted")
    if alg.startswith("ES") or alg == "EdDSA":
        raise EnvelopeError(f"JWS alg {alg!r} is not supported (RSA signatures only)")
    raise EnvelopeError(f"JWS alg {alg!r} is not supported; use one of {sorted(_ACCEPTED_ALGS)}")


def _parse_x5c(header: dict[str, Any]) -> tuple[x509.Certificate, ...]:
    """The ``x5c`` chain, every certificate fully readable (no signature checked yet)."""
    if "x5c" not in header:
        return ()
    entries = header["x5c"]
    if not isinstance(entries, list) or not entries:
        raise EnvelopeError("JWS header x5c must be a non-empty list of certificates")
    chain = []
    for i, entry in enumerate(entries):
        what = f"JWS header x5c[{i}]"
        try:
            chain.append(load_der_certificate(b64std_decode(entry, what), what))
        except InvalidInput as exc:
            raise EnvelopeError(str(exc)) from None
    return tuple(chain)


def check_chain(chain: Sequence[x509.Certificate]) -> None:
    """Raise unless every certificate is signed by the next one
    (docs/compat.md#x5c-chain-signature-only)."""
    for i in range(len(chain) - 1):
        if not signed_by(chain[i], chain[i + 1]):
            raise EnvelopeError(f"x5c[{i + 1}] does not sign x5c[{i}]")


def verify(jws: Jws, public_key: RSAPublicKey | None = None) -> VerifiedJws:
    """Verify ``jws`` and return its payload, chain and header.

    With ``public_key=None`` the header must carry ``x5c``; the chain is checked and
    ``x5c[0]``'s key verifies the signature. With a ``public_key`` that key verifies; an
    ``x5c``, if present, is still checked and its leaf must hold that same key, so the returned
    chain always belongs to the signer.
    """
    header_json = b64url_decode(jws.protected, "JWS member 'protected'")
    payload = b64url_decode(jws.payload, "JWS member 'payload'")
    signature = b64url_decode(jws.signature, "JWS member 'signature'")
    header = parse_object(header_json, HEADER)
    if "crit" in header:
        raise EnvelopeError("JWS header member 'crit' is not supported")
    sig_padding = _signature_padding(header)
    chain = _parse_x5c(header)
    check_chain(chain)
    if public_key is None:
        if not chain:
            raise EnvelopeError("JWS header has no x5c and no public key was given to verify it")
        key = chain[0].public_key()
        if not isinstance(key, RSAPublicKey):
            raise EnvelopeError("x5c[0] does not hold an RSA public key")
    else:
        if not isinstance(public_key, RSAPublicKey):
            raise EnvelopeError(f"JWS verification key must be RSA, got {type(public_key)}")
        if chain and _spki(chain[0].public_key()) != _spki(public_key):
            raise EnvelopeError("x5c[0] does not hold the public key the JWS is verified with")
        key = public_key
    signing_input = f"{jws.protected}.{jws.payload}".encode("ascii")
    try:
        key.verify(signature, signing_input, sig_padding, hashes.SHA256())
    except InvalidSignature:
        raise EnvelopeError("JWS signature does not verify") from None
    return VerifiedJws(payload, chain, MappingProxyType(header))
