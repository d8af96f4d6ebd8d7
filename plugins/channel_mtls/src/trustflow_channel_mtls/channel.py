"""The ``mtls`` transport-channel backend: SSL contexts from a group TLS asset."""

from __future__ import annotations

import os
import ssl
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from trustflow_core.channel import TransportChannel
from trustflow_core.errors import InvalidInput, VerificationError
from trustflow_core.keyexchange import TlsAsset
from trustflow_core.settings_schema import Node
from trustflow_core.tls_asset import AssetInfo, validate_tls_asset

if TYPE_CHECKING:
    from typing_extensions import Self

MIN_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""TLS 1.2 suites: forward-secret AEAD only (TLS 1.3 suites are all AEAD + ECDHE)."""


def _load_chain_from_memory(ctx: ssl.SSLContext, asset: TlsAsset) -> bool:
    """Load the chain and key through anonymous memory files (``memfd``, Linux with /proc),
    so the key never touches a file system. False when that is not possible here."""
    if not (hasattr(os, "memfd_create") and sys.platform.startswith("linux")):
        return False
    fds = []
    try:
        for name, data in (("tls.crt", asset.cert_pem), ("tls.key", asset.private_key_pem)):
            fds.append(os.memfd_create(name, os.MFD_CLOEXEC))
            os.write(fds[-1], data)
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    except (FileNotFoundError, PermissionError):  # no /proc, or a sandbox refusing memfd
        return False
    finally:
        for fd in fds:
            os.close(fd)
    return True


def _load_chain(ctx: ssl.SSLContext, asset: TlsAsset) -> None:
    """``load_cert_chain`` takes paths only: memory files when possible, else a private
    temporary directory (0700, key 0600) removed right after loading."""
    if _load_chain_from_memory(ctx, asset):
        return
    with tempfile.TemporaryDirectory(prefix="trustflow-mtls-") as tmp:
        cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert.write_bytes(asset.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(asset.private_key_pem)
        ctx.load_cert_chain(cert, key)


class MtlsChannel(TransportChannel):
    """Mutual TLS between members of one communication group.

    Both contexts, from an asset that :func:`~trustflow_core.tls_asset.validate_tls_asset`
    accepts (a damaged, mismatched or expired asset raises its
    :class:`~trustflow_core.errors.VerificationError` before any context exists):

    * protocol TLS 1.2 or newer (``min_version`` setting; TLS 1.2 limited to ECDHE + AEAD
      suites), no compression, no renegotiation;
    * present the asset's chain (leaf first) with its key;
    * ``verify_mode = CERT_REQUIRED`` on both ends — a server refuses clients without a
      certificate, a client refuses servers that fail verification;
    * trust exactly one anchor: the asset's last certificate, the self-signed group CA. No
      system CAs are loaded; a peer is accepted only if its chain verifies up to that CA
      (OpenSSL path validation: signatures, validity periods, CA flags, key usage and the
      serverAuth/clientAuth purpose);
    * no hostname or SAN checks (``check_hostname = False``), as in the upstream Envoy config
      (docs/compat.md#mtls-one-file-trust): membership is proven by the CA signature, not by a name;
    * servers issue no session tickets, so every connection does a full handshake and
      re-verifies the peer's certificate (a revoked member whose leaf expired cannot resume).

    Settings: ``min_version`` (``"TLSv1.2"`` default, or ``"TLSv1.3"``).
    """

    name: ClassVar[str] = "mtls"

    def __init__(self, min_version: str = "TLSv1.2") -> None:
        if min_version not in MIN_VERSIONS:
            raise InvalidInput(
                f"channel 'mtls': min_version must be one of {sorted(MIN_VERSIONS)}, "
                f"got {min_version!r}"
            )
        self.min_version = min_version

    def __repr__(self) -> str:
        return f"MtlsChannel(min_version={self.min_version!r})"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        """Build from ``{"min_version": ...}``; unknown keys or bad values raise
        :class:`~trustflow_core.settings_schema.ConfigError`."""
        root = Node.settings(settings, "mtls channel settings").mapping({"min_version"})
        return cls(min_version=root.get("min_version").choice(sorted(MIN_VERSIONS), "TLSv1.2"))

    def server_ssl_context(self, asset: TlsAsset) -> ssl.SSLContext:
        ctx = self._context(ssl.PROTOCOL_TLS_SERVER, asset)
        ctx.options |= ssl.OP_NO_TICKET | ssl.OP_CIPHER_SERVER_PREFERENCE
        ctx.num_tickets = 0
        return ctx

    def client_ssl_context(self, asset: TlsAsset) -> ssl.SSLContext:
        ctx = self._context(ssl.PROTOCOL_TLS_CLIENT, asset)
        ctx.check_hostname = False  # before verify_mode: the setter refuses otherwise
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _context(self, protocol: ssl._SSLMethod, asset: TlsAsset) -> ssl.SSLContext:
        info = validate_tls_asset(asset)
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = MIN_VERSIONS[self.min_version]
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        ctx.set_ciphers(TLS12_CIPHERS)
        ctx.verify_mode = ssl.CERT_REQUIRED
        self._load(ctx, asset, info)
        return ctx

    @staticmethod
    def _load(ctx: ssl.SSLContext, asset: TlsAsset, info: AssetInfo) -> None:
        try:
            _load_chain(ctx, asset)
            ctx.load_verify_locations(cadata=info.anchor_pem)
        except ssl.SSLError as exc:
            raise VerificationError(
                "tls", f"OpenSSL refused the asset ({info.leaf.subject.rfc4514_string()}): {exc}"
            ) from exc
