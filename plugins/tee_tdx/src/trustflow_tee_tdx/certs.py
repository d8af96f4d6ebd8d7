"""X.509 for DCAP: strict PEM chains, the pinned Intel SGX Root CA, chain and CRL checks at a
given time, and the PCK certificate's SGX extension.

Parsed certificates, CRLs and signature results are cached by their exact DER bytes, so a warm
verifier pays only for what changed. Validity windows are always re-checked at the given time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import warnings
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from trustflow_core.errors import VerificationError

#: SHA-256 of the DER of the Intel SGX Root CA. The certificate
#: shipped in ``data/intel_sgx_root_ca.pem`` must hash to this value.
INTEL_ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
PCK_CA_NAMES = {"Intel SGX PCK Platform CA": "platform", "Intel SGX PCK Processor CA": "processor"}
SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")

_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+?)-----END CERTIFICATE-----(?:\r?\n)?"
)


# ---- ECDSA --------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def p256_key(raw_xy: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from the 64-byte ``x || y`` form used in quotes."""
    if len(raw_xy) != 64:
        raise ValueError("a raw P-256 key is 64 bytes")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw_xy)


def ecdsa_ok(key: ec.EllipticCurvePublicKey, raw_rs: bytes, message: bytes) -> bool:
    """Whether ``raw_rs`` (64-byte big-endian ``r || s``) is an ECDSA-SHA256 signature of
    ``message`` by ``key``."""
    if len(raw_rs) != 64:
        return False
    r, s = int.from_bytes(raw_rs[:32], "big"), int.from_bytes(raw_rs[32:], "big")
    if not (r and s):
        return False
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


# ---- certificates -------------------------------------------------------------------------


@lru_cache(maxsize=256)
def load_der_cert(der: bytes) -> x509.Certificate:
    """Parse a certificate completely (``cryptography`` parses some parts lazily); raise
    ``ValueError`` for anything malformed."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a malformed country name only warns
        try:
            cert = x509.load_der_x509_certificate(der)
            _ = (cert.subject, cert.issuer, cert.extensions, cert.public_key())
            _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number)
            _ = cert.signature_hash_algorithm
        except Exception as exc:  # the DER is untrusted: any parse problem means malformed
            raise ValueError(f"malformed certificate: {exc}") from exc
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("certificate key is not ECDSA P-256")
    return cert


def parse_pem_chain(text: bytes, check: str) -> list[bytes]:
    """DER of every certificate in a strict PEM chain (trailing NULs allowed).

    Anything but certificate blocks separated by newlines, non-canonical base64 included, is
    rejected with ``check``: one changed byte must never leave the same certificates.
    Results are cached by the exact text.
    """
    return list(_parse_pem_chain(bytes(text), check))


@lru_cache(maxsize=128)
def _parse_pem_chain(text: bytes, check: str) -> tuple[bytes, ...]:
    text = text.rstrip(b"\0")
    ders, offset = [], 0
    while offset < len(text):
        match = _PEM_BLOCK.match(text, offset)
        if match is None:
            raise VerificationError(check, f"malformed PEM certificate chain at byte {offset}")
        b64 = match.group(1).replace(b"\r", b"").replace(b"\n", b"")
        try:
            der = base64.b64decode(b64, validate=True)
        except binascii.Error as exc:
            raise VerificationError(check, f"bad base64 in certificate chain: {exc}") from exc
        if base64.b64encode(der) != b64:
            raise VerificationError(check, "non-canonical base64 in certificate chain")
        ders.append(der)
        offset = match.end()
    if not ders:
        raise VerificationError(check, "empty certificate chain")
    for der in ders:
        try:
            load_der_cert(der)
        except (ValueError, TypeError) as exc:
            raise VerificationError(check, f"unparsable certificate: {exc}") from exc
    return tuple(ders)


@lru_cache(maxsize=1)
def pinned_root_der() -> bytes:
    """The Intel SGX Root CA shipped with this package, after checking its pinned hash."""
    pem = resources.files("trustflow_tee_tdx").joinpath("data/intel_sgx_root_ca.pem").read_bytes()
    (der,) = parse_pem_chain(pem, "root_ca")
    if not hmac.compare_digest(hashlib.sha256(der).hexdigest(), INTEL_ROOT_SHA256):
        raise VerificationError("root_ca", "the packaged Intel SGX Root CA does not match its pin")
    return der


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


@lru_cache(maxsize=512)
def _issued_by(child_der: bytes, issuer_der: bytes) -> bool:
    try:
        load_der_cert(child_der).verify_directly_issued_by(load_der_cert(issuer_der))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def valid_at(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def verify_chain(ders: list[bytes], now: datetime, check: str) -> list[x509.Certificate]:
    """Verify ``ders`` (leaf first) up to the pinned root at ``now``; return the certificates.

    The last certificate must be byte-identical to the pinned root (a chain may also stop one
    short of it, in which case the pinned root is appended). Every link's signature and issuer
    name, every validity period at ``now``, and CA basic constraints on issuers are checked
    (the time-independent part is cached by the exact DER bytes).
    """
    root = pinned_root_der()
    if ders[-1] != root:
        if any(der == root for der in ders):
            raise VerificationError(check, "certificates after the root in the chain")
        if common_name(load_der_cert(ders[-1])) == "Intel SGX Root CA":
            raise VerificationError(check, "the chain's root is not the pinned Intel SGX Root CA")
        ders = [*ders, root]
    problem = _chain_problem(tuple(ders))
    if problem:
        raise VerificationError(check, problem)
    certs = [load_der_cert(der) for der in ders]
    for cert in certs:
        if not valid_at(cert, now):
            start, end = cert.not_valid_before_utc.isoformat(), cert.not_valid_after_utc.isoformat()
            raise VerificationError(
                check,
                f"certificate {common_name(cert)!r} is not valid at {now.isoformat()} ("
                f"{start} .. {end})",
            )
    return certs


@lru_cache(maxsize=128)
def _chain_problem(ders: tuple[bytes, ...]) -> str | None:
    """What is wrong with the links of a chain ending in its self-signed root, or None."""
    for i, der in enumerate(ders):
        cert = load_der_cert(der)
        issuer_der = ders[i + 1] if i + 1 < len(ders) else der
        if not _issued_by(der, issuer_der):
            return f"certificate {common_name(cert)!r} is not signed by its issuer"
        if i > 0 and not _is_ca(cert):
            return f"issuer {common_name(cert)!r} is not a CA"
    return None


# ---- CRLs ---------------------------------------------------------------------------------


def load_crl(data: bytes, check: str) -> x509.CertificateRevocationList:
    """A CRL given as DER, PEM, or hex text of DER (all seen in collateral formats)."""
    return _load_crl(bytes(data), check)


@lru_cache(maxsize=64)
def _load_crl(data: bytes, check: str) -> x509.CertificateRevocationList:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                crl = x509.load_pem_x509_crl(data)
            else:
                stripped = data.strip().rstrip(b"\0")
                if stripped and re.fullmatch(rb"[0-9a-fA-F]+", stripped):
                    data = bytes.fromhex(stripped.decode())
                crl = x509.load_der_x509_crl(data)
            _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.extensions)
            _ = (crl.signature_hash_algorithm, [r.serial_number for r in crl])
        except Exception as exc:  # untrusted DER: any parse problem means malformed
            raise VerificationError(check, f"unparsable CRL: {exc}") from exc
    return crl


@lru_cache(maxsize=64)
def _crl_signed_by(data: bytes, issuer_der: bytes) -> bool:
    crl = _load_crl(data, "crl")
    issuer = load_der_cert(issuer_der)
    if crl.issuer != issuer.subject:
        return False
    key = issuer.public_key()
    return isinstance(key, ec.EllipticCurvePublicKey) and crl.is_signature_valid(key)


def check_crl(
    data: bytes, issuer_der: bytes, now: datetime, what: str
) -> x509.CertificateRevocationList:
    """The CRL in ``data`` after checking it is signed by the certificate ``issuer_der``
    (check ``"crl"``) and current at ``now`` (else ``"collateral_expired"``)."""
    crl = load_crl(data, "crl")
    if not _crl_signed_by(bytes(data), issuer_der):
        issuer = common_name(load_der_cert(issuer_der))
        raise VerificationError("crl", f"the {what} is not signed by {issuer!r}")
    next_update = crl.next_update_utc
    if next_update is None or not crl.last_update_utc <= now <= next_update:
        raise VerificationError(
            "collateral_expired",
            f"the {what} is not current at {now.isoformat()} "
            f"({crl.last_update_utc.isoformat()} .. {next_update})",
        )
    return crl


def is_revoked(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


# ---- the PCK certificate's SGX extension --------------------------------------------------


@dataclass(frozen=True)
class PckInfo:
    """What the PCK leaf certifies about the platform."""

    fmspc: bytes
    pce_id: bytes
    pce_svn: int
    sgx_tcb_components: tuple[int, ...]
    cpu_svn: bytes


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) TLVs directly inside ``data``."""
    items, i = [], 0
    while i < len(data):
        if i + 2 > len(data):
            raise ValueError("truncated DER")
        tag, length = data[i], data[i + 1]
        i += 2
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 4 or i + count > len(data):
                raise ValueError("bad DER length")
            length = int.from_bytes(data[i : i + count], "big")
            i += count
        if i + length > len(data):
            raise ValueError("truncated DER value")
        items.append((tag, data[i : i + length]))
        i += length
    return items


def _oid(content: bytes) -> str:
    first, parts, value = content[0], [], 0
    parts = [str(min(first // 40, 2)), str(first - 40 * min(first // 40, 2))]
    for byte in content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(str(value))
            value = 0
    return ".".join(parts)


def _pairs(content: bytes) -> dict[str, tuple[int, bytes]]:
    result = {}
    for tag, pair in _der_items(content):
        if tag != 0x30:
            raise ValueError("SGX extension entry is not a SEQUENCE")
        inner = _der_items(pair)
        if len(inner) != 2 or inner[0][0] != 0x06:
            raise ValueError("SGX extension entry is not (OID, value)")
        result[_oid(inner[0][1])] = inner[1]
    return result


def pck_info(leaf: x509.Certificate) -> PckInfo:
    """Decode the SGX extension (OID 1.2.840.113741.1.13.1) of a PCK leaf certificate."""
    from cryptography.hazmat.primitives.serialization import Encoding

    return _pck_info(leaf.public_bytes(Encoding.DER))


@lru_cache(maxsize=64)
def _pck_info(der: bytes) -> PckInfo:
    leaf = load_der_cert(der)
    base = SGX_EXTENSION_OID.dotted_string
    try:
        ext = leaf.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
        raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
        (outer,) = _der_items(raw)
        entries = _pairs(outer[1])
        tcb = _pairs(entries[f"{base}.2"][1])
        comps = tuple(int.from_bytes(tcb[f"{base}.2.{i}"][1], "big") for i in range(1, 17))
        return PckInfo(
            fmspc=entries[f"{base}.4"][1],
            pce_id=entries[f"{base}.3"][1],
            pce_svn=int.from_bytes(tcb[f"{base}.2.17"][1], "big"),
            sgx_tcb_components=comps,
            cpu_svn=tcb[f"{base}.2.18"][1],
        )
    except (x509.ExtensionNotFound, KeyError, ValueError, IndexError) as exc:
        raise VerificationError(
            "pck_chain", f"PCK certificate has no usable SGX extension: {exc}"
        ) from exc


def clear_caches() -> None:
    """Forget every cached certificate, CRL and signature result (benchmarks, tests)."""
    for cached in (
        p256_key,
        load_der_cert,
        _parse_pem_chain,
        _issued_by,
        _chain_problem,
        _load_crl,
        _crl_signed_by,
        _pck_info,
        signed_by_key,
    ):
        cached.cache_clear()


@lru_cache(maxsize=64)
def signed_by_key(key_der: bytes, raw_rs: bytes, message: bytes) -> bool:
    """:func:`ecdsa_ok` for collateral (TCB info, QE identity), cached by exact bytes."""
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    key = load_der_public_key(key_der)
    return isinstance(key, ec.EllipticCurvePublicKey) and ecdsa_ok(key, raw_rs, message)
