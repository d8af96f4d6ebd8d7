"""The communication-group TLS asset (``GetTlsAsset``): issuing, validating, reloading.

Design (``docs/tls-asset.md``): a **group CA** is derived deterministically from the data key
the group may read, and it signs a short-lived **per-member leaf**. The asset a member gets is

* ``cert_pem`` = ``leaf PEM ‖ group-CA PEM`` — its chain *and*, in the upstream Envoy config
  shape, its trust anchor file (docs/compat.md#mtls-one-file-trust);
* ``private_key_pem`` = the leaf's P-256 key, PKCS#8 PEM.

Derivation (all HKDF-SHA256, RFC 5869)::

    seed     = HKDF(ikm=data_key, salt="trustflow-tls-asset-v1" [‖ 0x00 ‖ issuer_secret],
                    info=scope ‖ 0x00 ‖ data_uuid ‖ 0x00 ‖ op_name, L=32)
    CA key   = P-256 scalar from HKDF-Expand(seed, "ca-key", 48)           (FIPS 186-5 A.2.1)
    group id = HKDF-Expand(seed, "group-id", 16)                            (public, in names)
    leaf key = P-256 scalar from HKDF-Expand(seed, "leaf-key" ‖ 0x00 ‖ SHA-256(member SPKI)
                                                   ‖ window as 8-byte big endian, 48)

Signatures are RFC 6979 deterministic ECDSA-SHA256, validity periods come from fixed windows
since :data:`EPOCH`, so repeated calls in one window return byte-identical PEM and the Capsule
Manager needs no state beyond the data key.

:func:`validate_tls_asset` / :func:`load_tls_asset` check an asset (PEM well-formed, key
matches the leaf, every link signed by the next certificate, a self-signed anchor, validity);
:class:`TlsAssetWatcher` keeps SSL contexts in step with the asset files.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import BackendUnavailable, InvalidInput, ObjectNotFound, VerificationError
from .fileio import atomic_write_bytes
from .identity import party_id_of_key
from .keyexchange import TlsAsset

if TYPE_CHECKING:
    from .channel import TransportChannel

log = logging.getLogger(__name__)

LABEL = b"trustflow-tls-asset-v1"
EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
"""Start of leaf validity windows (and notBefore of every group CA)."""
CA_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)
"""RFC 5280 §4.1.2.5 "no well-defined expiration": a group CA lives as long as its data key."""
DEFAULT_LEAF_LIFETIME = datetime.timedelta(hours=12)
CLOCK_SKEW = datetime.timedelta(minutes=5)
MIN_LEAF_LIFETIME = datetime.timedelta(minutes=10)
MAX_LEAF_LIFETIME = datetime.timedelta(days=365)
MIN_DATA_KEY_BYTES = 16
ORGANIZATION = "Trustflow"

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_BEGIN = b"-----BEGIN "
_BEGIN_CERT = b"-----BEGIN CERTIFICATE-----"


# ---- derivation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupId:
    """What makes a communication group: the data (``data_uuid``, i.e. its resource uri) in a
    policy ``scope``, used for ``op_name``. Apps granted another op on the same data form
    another group."""

    scope: str
    data_uuid: str
    op_name: str

    def info(self) -> bytes:
        """``scope ‖ 0x00 ‖ data_uuid ‖ 0x00 ‖ op_name`` (UTF-8); NUL inside a field is refused
        so the encoding is unambiguous."""
        if not self.data_uuid:
            raise InvalidInput("tls asset: data_uuid must not be empty")
        for name in ("scope", "data_uuid", "op_name"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise InvalidInput(f"tls asset: {name} must be a string")
            if "\x00" in value:
                raise InvalidInput(f"tls asset: {name} must not contain NUL")
        return b"\x00".join(v.encode() for v in (self.scope, self.data_uuid, self.op_name))


def _seed(data_key: bytes, group: GroupId, issuer_secret: bytes) -> bytes:
    if not isinstance(data_key, bytes) or len(data_key) < MIN_DATA_KEY_BYTES:
        raise InvalidInput(f"tls asset: the data key must be at least {MIN_DATA_KEY_BYTES} bytes")
    salt = LABEL + b"\x00" + issuer_secret if issuer_secret else LABEL
    return HKDF(hashes.SHA256(), 32, salt, group.info()).derive(data_key)


def _expand(seed: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(hashes.SHA256(), length, info).derive(seed)


def _p256_key(seed: bytes, info: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 key from 48 derived bytes: d = c mod (n-1) + 1 (FIPS 186-5 A.2.1)."""
    c = int.from_bytes(_expand(seed, info, 48), "big")
    return ec.derive_private_key(c % (_P256_ORDER - 1) + 1, ec.SECP256R1())


def _serial(seed: bytes, info: bytes) -> int:
    """A positive 127-bit serial number."""
    return int.from_bytes(_expand(seed, info, 16), "big") >> 1 or 1


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name(*parts: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in parts])


def _sign(builder: x509.CertificateBuilder, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    try:
        return builder.sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    except (TypeError, UnsupportedAlgorithm) as exc:  # cryptography < 45 or OpenSSL < 3.2
        raise BackendUnavailable(
            "tls asset: deterministic ECDSA (RFC 6979) needs cryptography>=45 built with "
            f"OpenSSL>=3.2: {exc}"
        ) from exc


@dataclass(frozen=True)
class _GroupCa:
    seed: bytes
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    group_hex: str

    def __repr__(self) -> str:
        return f"_GroupCa(group={self.group_hex})"


def _group_ca(data_key: bytes, group: GroupId, issuer_secret: bytes) -> _GroupCa:
    seed = _seed(data_key, group, issuer_secret)
    key = _p256_key(seed, b"ca-key")
    group_hex = _expand(seed, b"group-id", 16).hex()
    name = _name(
        (NameOID.ORGANIZATION_NAME, ORGANIZATION),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "communication group CA"),
        (NameOID.COMMON_NAME, f"group-{group_hex}"),
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial(seed, b"ca-serial"))
        .not_valid_before(EPOCH)
        .not_valid_after(CA_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return _GroupCa(seed, key, _sign(builder, key), group_hex)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_window(
    now: datetime.datetime, lifetime: datetime.timedelta
) -> tuple[int, datetime.datetime]:
    if now.tzinfo is None:
        raise InvalidInput("tls asset: now must be timezone-aware")
    if not MIN_LEAF_LIFETIME <= lifetime <= MAX_LEAF_LIFETIME or lifetime.microseconds:
        raise InvalidInput(
            f"tls asset: leaf lifetime must be whole seconds between {MIN_LEAF_LIFETIME} and "
            f"{MAX_LEAF_LIFETIME}, got {lifetime}"
        )
    if now < EPOCH:
        raise InvalidInput(f"tls asset: now ({now.isoformat()}) is before {EPOCH.isoformat()}")
    window = (now - EPOCH) // lifetime
    return window, EPOCH + window * lifetime


def member_uri(group_hex: str, party_id: str) -> str:
    """The leaf's subjectAltName URI ``urn:trustflow:group:<group id hex>:party:<party id>``.
    Informational (nobody matches names, docs/compat.md#mtls-one-file-trust); it also makes the leaf
    a complete RFC 5280 end-entity certificate for strict verifiers."""
    return f"urn:trustflow:group:{group_hex}:party:{party_id}"


def group_ca_certificate(
    data_key: bytes, *, scope: str, data_uuid: str, op_name: str, issuer_secret: bytes = b""
) -> x509.Certificate:
    """The group CA certificate (identical for every member; no private key leaves here)."""
    return _group_ca(data_key, GroupId(scope, data_uuid, op_name), issuer_secret).cert


def issue_group_asset(
    data_key: bytes,
    *,
    scope: str,
    data_uuid: str,
    op_name: str,
    member_public_key: PublicKeyTypes,
    now: datetime.datetime,
    leaf_lifetime: datetime.timedelta = DEFAULT_LEAF_LIFETIME,
    issuer_secret: bytes = b"",
) -> TlsAsset:
    """Issue the group TLS asset of ``member_public_key`` (the key of the member's attested
    certificate, i.e. the ``cert`` of ``GetTlsAssetRequest``) for the group of
    ``(scope, data_uuid, op_name)``.

    Call it only after the member was authorized (grantee of ``op_name`` on the data) and its
    attestation verified. The leaf's subject CN is the member's party id; its validity is the
    window of ``leaf_lifetime`` that contains ``now``, from ``window start - 5 min`` to
    ``window start + 2 * leaf_lifetime`` (so at least one lifetime remains after issuing).
    Same inputs in the same window give byte-identical output.

    ``issuer_secret`` (optional, held only by the Capsule Manager) is mixed into the HKDF salt:
    without it anybody holding the data key can derive the group CA key (see the docs).

    Raises :class:`~trustflow_core.errors.InvalidInput` for a data key shorter than 16 bytes,
    a NUL in a name, an empty ``data_uuid``, a naive ``now`` or a bad lifetime.
    """
    ca = _group_ca(data_key, GroupId(scope, data_uuid, op_name), issuer_secret)
    window, start = _leaf_window(now, leaf_lifetime)
    member = hashlib.sha256(_spki(member_public_key)).digest()
    party = party_id_of_key(member_public_key)
    leaf_info = member + window.to_bytes(8, "big")
    key = _p256_key(ca.seed, b"leaf-key\x00" + leaf_info)
    ca_public = ca.key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            _name(
                (NameOID.ORGANIZATION_NAME, ORGANIZATION),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, f"group-{ca.group_hex}"),
                (NameOID.COMMON_NAME, party),
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial(ca.seed, b"leaf-serial\x00" + leaf_info))
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + 2 * leaf_lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(member_uri(ca.group_hex, party))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
    )
    leaf = _sign(builder, ca.key)
    pem = serialization.Encoding.PEM
    return TlsAsset(
        cert_pem=leaf.public_bytes(pem) + ca.cert.public_bytes(pem),
        private_key_pem=key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


# ---- validation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AssetInfo:
    """What :func:`validate_tls_asset` found: the chain (leaf first), its trust anchor (the
    last, self-signed certificate) and the window in which every certificate is valid."""

    chain: tuple[x509.Certificate, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def anchor(self) -> x509.Certificate:
        return self.chain[-1]

    @property
    def anchor_pem(self) -> str:
        """The trust anchor as PEM text (for ``SSLContext.load_verify_locations(cadata=)``)."""
        return self.anchor.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def anchor_fingerprint(self) -> str:
        """SHA-256 of the anchor's DER, lowercase hex: the group's public identifier."""
        return self.anchor.fingerprint(hashes.SHA256()).hex()

    def refresh_at(self, fraction: float = 0.75) -> datetime.datetime:
        """When to fetch a new asset: ``fraction`` of the way through the validity window.

        For an issued leaf (valid from ``window start - 5 min`` to ``start + 2 * lifetime``)
        the default 0.75 falls after the next window has begun, so the fetch returns a new
        leaf (fetching earlier in the same window returns the same bytes), with a quarter of
        the validity (half a lifetime) left as margin."""
        return self.not_before + (self.not_after - self.not_before) * fraction


def _describe(index: int, cert: x509.Certificate) -> str:
    return f"certificate {index} ({cert.subject.rfc4514_string() or 'empty subject'})"


def _parse_chain(cert_pem: bytes) -> list[x509.Certificate]:
    if not isinstance(cert_pem, bytes) or _BEGIN_CERT not in cert_pem:
        raise VerificationError("certificate", "no PEM certificate found")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except (ValueError, x509.InvalidVersion) as exc:
        raise VerificationError("certificate", f"cannot parse the PEM certificates: {exc}") from exc
    for index, cert in enumerate(chain):
        try:  # parsed lazily: touch what the checks read so damage surfaces here
            cert.public_key()
            _ = cert.subject, cert.issuer, cert.extensions
            _ = cert.not_valid_before_utc, cert.not_valid_after_utc
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise VerificationError(
                "certificate", f"certificate {index} is damaged: {exc}"
            ) from exc
    blocks = cert_pem.count(_BEGIN)
    if blocks != len(chain):
        raise VerificationError(
            "certificate",
            f"{blocks} PEM block(s) but {len(chain)} readable certificate(s): the file is "
            "damaged or holds something else",
        )
    return chain


def _parse_key(key_pem: bytes) -> Any:
    if not isinstance(key_pem, bytes) or _BEGIN not in key_pem:
        raise VerificationError("key", "no PEM private key found")
    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise VerificationError("key", f"cannot parse the PEM private key: {exc}") from exc


def _check_links(chain: list[x509.Certificate]) -> None:
    for index, cert in enumerate(chain):
        issuer_index = min(index + 1, len(chain) - 1)
        issuer = chain[issuer_index]
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            if issuer is cert:
                raise VerificationError(
                    "chain",
                    f"the last {_describe(index, cert)} must be a self-signed group CA, but it "
                    "is not signed by itself",
                ) from exc
            raise VerificationError(
                "chain",
                f"{_describe(index, cert)} is not signed by {_describe(issuer_index, issuer)}",
            ) from exc
        if index > 0:
            try:
                ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                ca = False
            if not ca:
                raise VerificationError(
                    "chain", f"{_describe(index, cert)} issues a certificate but is not a CA"
                )


def _check_leaf_usage(leaf: x509.Certificate) -> None:
    with contextlib.suppress(x509.ExtensionNotFound):
        usages = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        missing = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} - usages
        if missing:
            raise VerificationError(
                "usage",
                "the leaf must allow both serverAuth and clientAuth (it is used on both "
                "ends of a connection)",
            )
    with contextlib.suppress(x509.ExtensionNotFound):
        if not leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            raise VerificationError("usage", "the leaf key usage lacks digitalSignature")


def validate_tls_asset(asset: TlsAsset, *, now: datetime.datetime | None = None) -> AssetInfo:
    """Check that ``asset`` is usable as a group TLS asset at ``now`` (default: the current
    time) and return what it holds.

    Checks, in order, each failure a :class:`~trustflow_core.errors.VerificationError` whose
    ``check`` names it: ``certificate`` (every PEM block parses as a certificate), ``key``
    (the private key parses, unencrypted), ``key_match`` (it is the key of the first
    certificate), ``chain`` (each certificate is signed by the next, issuers are CAs, the last
    one is self-signed), ``usage`` (the leaf may serve as TLS server and client), ``validity``
    (every certificate is valid at ``now``).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if now.tzinfo is None:
        raise InvalidInput("tls asset: now must be timezone-aware")
    chain = _parse_chain(asset.cert_pem)
    key = _parse_key(asset.private_key_pem)
    if not hmac.compare_digest(_spki(key.public_key()), _spki(chain[0].public_key())):
        raise VerificationError(
            "key_match", f"the private key does not belong to {_describe(0, chain[0])}"
        )
    _check_links(chain)
    _check_leaf_usage(chain[0])
    for index, cert in enumerate(chain):
        if now < cert.not_valid_before_utc:
            raise VerificationError(
                "validity",
                f"{_describe(index, cert)} is not valid before "
                f"{cert.not_valid_before_utc.isoformat()} (now {now.isoformat()})",
            )
        if now > cert.not_valid_after_utc:
            raise VerificationError(
                "validity",
                f"{_describe(index, cert)} expired at {cert.not_valid_after_utc.isoformat()} "
                f"(now {now.isoformat()})",
            )
    return AssetInfo(
        chain=tuple(chain),
        not_before=max(c.not_valid_before_utc for c in chain),
        not_after=min(c.not_valid_after_utc for c in chain),
    )


def read_tls_asset(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> TlsAsset:
    """Read the two files of an asset (no checks). A missing file raises
    :class:`~trustflow_core.errors.ObjectNotFound` naming it."""
    parts = []
    for what, path in (("certificate", cert_path), ("private key", key_path)):
        try:
            parts.append(Path(path).read_bytes())
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"tls asset: {what} file {os.fspath(path)!r} not found") from exc
        except OSError as exc:
            raise InvalidInput(
                f"tls asset: cannot read {what} file {os.fspath(path)!r}: {exc}"
            ) from exc
    return TlsAsset(cert_pem=parts[0], private_key_pem=parts[1])


def load_tls_asset(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    *,
    now: datetime.datetime | None = None,
) -> tuple[TlsAsset, AssetInfo]:
    """Read and validate an asset file pair; a :class:`VerificationError` names both files
    and the failed check (e.g. ``chain: tls.crt + tls.key: certificate 0 (...) is not
    signed by certificate 1 (...)``)."""
    asset = read_tls_asset(cert_path, key_path)
    try:
        return asset, validate_tls_asset(asset, now=now)
    except VerificationError as exc:
        raise VerificationError(
            exc.check, f"{os.fspath(cert_path)} + {os.fspath(key_path)}: {exc.detail}"
        ) from exc


def write_tls_asset(
    asset: TlsAsset,
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    *,
    now: datetime.datetime | None = None,
) -> AssetInfo:
    """Validate ``asset`` and write it atomically: the key (mode 0600) first, then the
    certificate (0644). Nothing is written when validation fails."""
    info = validate_tls_asset(asset, now=now)
    atomic_write_bytes(key_path, asset.private_key_pem, mode=0o600)
    atomic_write_bytes(cert_path, asset.cert_pem, mode=0o644)
    return info


def peer_party_id(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The party id a connected group peer's leaf names (its subject CN), for logs and
    access decisions; None when the peer sent no certificate or the CN is absent. Only
    meaningful after the handshake verified the peer against the group CA."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


# ---- reload -----------------------------------------------------------------------------------


def _file_state(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class TlsAssetWatcher:
    """Keeps the SSL contexts of a :class:`~trustflow_core.channel.TransportChannel` in step
    with an asset file pair, without restarting listeners.

    * Construction loads and validates the files and builds both contexts; a missing, damaged
      or expired asset raises (start-up must refuse it).
    * :meth:`check` (or the polling task of :meth:`start`) reloads when either file's
      (device, inode, size, mtime) changes. A new asset that fails validation or context
      building is **not** used: the previous contexts stay, ``last_error`` records why, and the
      next change is tried again (so a half-rotated pair — new certificate, old key — is simply
      picked up once both files are in place).
    * :attr:`server_context` is what a listener is started with. Every server context built
      here gets an ``sni_callback`` that moves each new connection, during its handshake, onto
      the newest server context (``SSLObject.context = ...``). Connections already established
      keep their session; new ones present the new certificate and verify against the new
      anchor. :meth:`client_context` returns the newest client context (take it per connection).
    """

    def __init__(
        self,
        channel: TransportChannel,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        *,
        interval: float = 1.0,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self.channel = channel
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self.interval = interval
        self._clock = clock or (lambda: datetime.datetime.now(datetime.timezone.utc))
        self.generation = 0
        self.last_error: Exception | None = None
        self._task: asyncio.Task[None] | None = None
        self._state = self._states()
        self._install(*self._build())

    def _states(self) -> tuple[Any, Any]:
        return _file_state(self.cert_path), _file_state(self.key_path)

    def _build(self) -> tuple[ssl.SSLContext, ssl.SSLContext, AssetInfo]:
        asset, info = load_tls_asset(self.cert_path, self.key_path, now=self._clock())
        server = self.channel.server_ssl_context(asset)
        client = self.channel.client_ssl_context(asset)
        server.sni_callback = self._on_client_hello
        return server, client, info

    def _install(self, server: ssl.SSLContext, client: ssl.SSLContext, info: AssetInfo) -> None:
        self._server, self._client, self.info = server, client, info
        self.generation += 1

    def _on_client_hello(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: Any
    ) -> None:
        if ssl_object.context is not self._server:
            ssl_object.context = self._server

    @property
    def server_context(self) -> ssl.SSLContext:
        """The newest server context (start listeners with it once; it follows reloads)."""
        return self._server

    def client_context(self) -> ssl.SSLContext:
        """The newest client context; take it for each new connection."""
        return self._client

    def check(self) -> bool:
        """Reload if the files changed; True when new contexts were installed."""
        state = self._states()
        if state == self._state:
            return False
        self._state = state
        try:
            built = self._build()
        except Exception as exc:  # keep serving with the previous asset
            self.last_error = exc
            log.warning("tls asset reload failed, keeping the previous one: %s", exc)
            return False
        self.last_error = None
        self._install(*built)
        log.info("tls asset reloaded (generation %d)", self.generation)
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()

    def start(self) -> asyncio.Task[None]:
        """Start polling every ``interval`` seconds in the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll())
        return self._task

    async def aclose(self) -> None:
        """Stop polling. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
