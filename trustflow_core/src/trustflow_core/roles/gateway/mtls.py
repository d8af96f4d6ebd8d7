"""mTLS for gateway listeners (ingress) and clusters (egress): each TLS context of the config
becomes SSL contexts of the ``mtls`` transport-channel backend, kept in step with the asset
files by a :class:`~trustflow_core.tls_asset.TlsAssetWatcher` (certificate reload without
closing a listener).

A TLS context is an Envoy ``DownstreamTlsContext`` (listener) or ``UpstreamTlsContext``
(cluster) mapping, as in the upstream interact configs (the native config form is turned into
the same shape by :mod:`.config`). Accepted subset — anything else is refused, never ignored,
since an ignored option could be a security check the operator relies on:

* ``common_tls_context.tls_certificates``: exactly one ``certificate_chain.filename`` +
  ``private_key.filename`` (the group asset, ``tls.crt`` / ``tls.key``);
* ``common_tls_context.validation_context.trusted_ca.filename``: must be the certificate chain
  file (docs/compat.md#mtls-one-file-trust — the channel trusts that file's last certificate, the
  group CA);
* ``common_tls_context.tls_params.tls_minimum_protocol_version``: ``TLSv1_2`` (default,
  also for ``TLS_AUTO``) or ``TLSv1_3``; ``tls_maximum_protocol_version``: ``TLSv1_3`` or
  ``TLS_AUTO``;
* listeners: ``require_client_certificate: true`` (the channel always requires one);
* clusters: ``sni`` is accepted and ignored (no names are checked or needed).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import (
    BackendNotFound,
    InvalidInput,
    ObjectNotFound,
    UnsupportedOperation,
    VerificationError,
)
from ...manager import TrustflowPluginManager
from ...tls_asset import TlsAssetWatcher
from .config import GatewayConfig

DOWNSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
MIN_VERSIONS = {"TLSv1_2": "TLSv1.2", "TLS_AUTO": "TLSv1.2", "TLSv1_3": "TLSv1.3"}
MAX_VERSIONS = ("TLSv1_3", "TLS_AUTO")
DEFAULT_RELOAD_INTERVAL = 1.0


@dataclass(frozen=True)
class TlsFiles:
    """What a TLS context asks for: the asset file pair and the minimum protocol version
    (a setting of the ``mtls`` channel)."""

    cert_path: Path
    key_path: Path
    min_version: str = "TLSv1.2"


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{what} must be a mapping, got {type(value).__name__}")
    return value


def _only(obj: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise InvalidInput(
            f"{what}: unsupported TLS option(s) {unknown}; the mtls channel supports "
            f"{sorted(allowed)}"
        )


def _filename(obj: Any, what: str) -> str:
    obj = _mapping(obj, what)
    _only(obj, {"filename"}, what)
    name = obj.get("filename")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{what}: needs a 'filename'")
    return name


def tls_files(tls: Mapping[str, Any], server_side: bool, what: str) -> TlsFiles:
    """Interpret one TLS context (see the module docstring); :class:`InvalidInput` names
    ``what`` and the offending option."""
    tls = _mapping(tls, what)
    expected = DOWNSTREAM if server_side else UPSTREAM
    kind = "DownstreamTlsContext" if server_side else "UpstreamTlsContext"
    if tls.get("@type", expected) != expected:
        raise InvalidInput(f"{what}: expected a {kind}, got {tls.get('@type')!r}")
    top = {"@type", "common_tls_context"} | (
        {"require_client_certificate"} if server_side else {"sni"}
    )
    _only(tls, top, what)
    if server_side and tls.get("require_client_certificate") is not True:
        raise InvalidInput(
            f"{what}: the mtls channel always requires a client certificate; "
            "set require_client_certificate: true"
        )
    common = _mapping(tls.get("common_tls_context"), f"{what}: common_tls_context")
    _only(common, {"tls_certificates", "validation_context", "tls_params"}, what)
    certs = common.get("tls_certificates")
    if not isinstance(certs, list) or len(certs) != 1:
        raise InvalidInput(f"{what}: exactly one entry in tls_certificates is supported")
    pair = _mapping(certs[0], f"{what}: tls_certificates[0]")
    _only(pair, {"certificate_chain", "private_key"}, f"{what}: tls_certificates[0]")
    cert = _filename(pair.get("certificate_chain"), f"{what}: certificate_chain")
    key = _filename(pair.get("private_key"), f"{what}: private_key")
    validation = _mapping(common.get("validation_context"), f"{what}: validation_context")
    _only(validation, {"trusted_ca"}, f"{what}: validation_context")
    trusted = _filename(validation.get("trusted_ca"), f"{what}: trusted_ca")
    if os.path.abspath(trusted) != os.path.abspath(cert):
        raise InvalidInput(
            f"{what}: trusted_ca must be the certificate chain file {cert!r} (the group CA is "
            f"its last certificate), got {trusted!r}"
        )
    params = _mapping(common.get("tls_params") or {}, f"{what}: tls_params")
    _only(
        params,
        {"tls_minimum_protocol_version", "tls_maximum_protocol_version"},
        f"{what}: tls_params",
    )
    low = params.get("tls_minimum_protocol_version", "TLS_AUTO")
    if low not in MIN_VERSIONS:
        raise InvalidInput(
            f"{what}: tls_minimum_protocol_version must be one of {sorted(MIN_VERSIONS)}, "
            f"got {low!r}"
        )
    high = params.get("tls_maximum_protocol_version", "TLS_AUTO")
    if high not in MAX_VERSIONS:
        raise InvalidInput(
            f"{what}: tls_maximum_protocol_version must be one of {list(MAX_VERSIONS)}, "
            f"got {high!r}"
        )
    return TlsFiles(Path(cert), Path(key), MIN_VERSIONS[low])


class MtlsContexts:
    """SSL contexts for the gateway, built only by the transport channel backend ``channel``
    (the config's ``transport_channel``, default ``mtls``) of ``pm``.

    One :class:`TlsAssetWatcher` per distinct :class:`TlsFiles` (listeners and clusters
    naming the same files share it). Creating a watcher loads and validates the asset, so a
    missing, tampered or mismatched file pair raises at start-up (a
    :class:`~trustflow_core.errors.VerificationError` / ``ObjectNotFound`` naming the listener
    or cluster and the files). :meth:`start` polls the files every ``interval`` seconds.
    """

    def __init__(
        self,
        pm: TrustflowPluginManager,
        *,
        interval: float = DEFAULT_RELOAD_INTERVAL,
        channel_settings: Mapping[str, Any] | None = None,
        channel: str = "mtls",
    ) -> None:
        from ...registry import TRANSPORT_CHANNEL, backend_class

        try:
            self._channel_cls = backend_class(pm, TRANSPORT_CHANNEL, channel)
        except BackendNotFound as exc:
            raise UnsupportedOperation(
                "TLS (listeners, clusters) needs the mTLS channel "
                f"(transport channel {channel!r}): {exc}"
            ) from exc
        self.pm = pm
        self.interval = interval
        self.channel_settings = dict(channel_settings or {})
        self.watchers: dict[TlsFiles, TlsAssetWatcher] = {}

    def watcher(self, tls: Mapping[str, Any], server_side: bool, what: str) -> TlsAssetWatcher:
        files = tls_files(tls, server_side, what)
        watcher = self.watchers.get(files)
        if watcher is None:
            channel = self._channel_cls.from_role(
                {**self.channel_settings, "min_version": files.min_version}, pm=self.pm
            )
            try:
                watcher = TlsAssetWatcher(
                    channel, files.cert_path, files.key_path, interval=self.interval
                )
            except VerificationError as exc:
                raise VerificationError(exc.check, f"{what}: {exc.detail}") from exc
            except ObjectNotFound as exc:
                raise ObjectNotFound(f"{what}: {exc}") from exc
            self.watchers[files] = watcher
        return watcher

    def server_context(self, tls: Mapping[str, Any], what: str) -> ssl.SSLContext:
        """The listener's context: it follows reloads by itself (the watcher's SNI hook)."""
        return self.watcher(tls, True, what).server_context

    def client_contexts(self, tls: Mapping[str, Any], what: str) -> Callable[[], ssl.SSLContext]:
        """A function returning the newest client context; call it per upstream connection."""
        return self.watcher(tls, False, what).client_context

    def start(self) -> None:
        """Start watching every asset file pair (in the running loop)."""
        for watcher in self.watchers.values():
            watcher.start()

    async def aclose(self) -> None:
        for watcher in self.watchers.values():
            await watcher.aclose()


def check_assets(config: GatewayConfig, pm: TrustflowPluginManager) -> int:
    """Load and validate every TLS asset ``config`` names (what :meth:`Gateway.start` would
    do), without serving; return how many file pairs there are. Raises like start-up."""
    contexts = MtlsContexts(pm, channel=config.transport_channel) if _uses_tls(config) else None
    if contexts is None:
        return 0
    for listener in config.listeners:
        if listener.tls is not None:
            contexts.watcher(listener.tls, True, f"listener {listener.name!r}")
    for cluster in config.clusters.values():
        if cluster.tls is not None:
            contexts.watcher(cluster.tls, False, f"cluster {cluster.name!r}")
    return len(contexts.watchers)


def _uses_tls(config: GatewayConfig) -> bool:
    return any(lst.tls is not None for lst in config.listeners) or any(
        c.tls is not None for c in config.clusters.values()
    )
