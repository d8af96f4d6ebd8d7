"""``Gateway``: starts every listener of a :class:`~.config.GatewayConfig` and stops them.

TLS listeners (mTLS ingress) and TLS clusters (mTLS egress, ``tcp_proxy`` listeners only) get
their SSL contexts from the ``mtls`` channel backend through :class:`~.mtls.MtlsContexts`, which
reloads certificates when the asset files change (every ``tls_reload_interval`` seconds)
without closing a listener. A tampered, mismatched or missing asset fails :meth:`Gateway.start`.
``ssl_factory(tls_context, server_side) -> ssl.SSLContext`` replaces that with fixed contexts
(no reload).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from ...errors import UnsupportedOperation
from ...manager import TrustflowPluginManager
from .._admin import create_admin_app, tcp_reachable, with_admin
from .._listeners import Listener as ServiceListener
from .._listeners import Listeners, StreamListener
from .._metrics import flush_tallies
from . import compiled
from .config import Address, Cluster, GatewayConfig, Listener
from .guard import default_max_connections
from .http_proxy import HttpProxy
from .jwe_filter import PROFILES, JweFilter
from .mtls import DEFAULT_RELOAD_INTERVAL, MtlsContexts
from .shared_replay import SharedReplayCache
from .tcp_proxy import TcpProxy
from .upstreams import Upstreams

log = logging.getLogger("trustflow.gateway")

SslFactory = Callable[[Mapping[str, Any], bool], ssl.SSLContext]
HANDSHAKE_TIMEOUT = 10.0
"""Seconds a TLS listener waits for a client's handshake."""


class Gateway:
    """``async with Gateway(config, pm) as gw:`` serves until the block ends;
    ``gw.addresses[listener_name]`` is the bound address (useful with port 0).
    ``gw.mtls`` (after start) holds the asset watchers of the TLS listeners and clusters.
    ``replay_caches`` (listener name → cache) gives JWE listeners a replay cache shared with
    other processes (``--workers``); the others keep one of their own.
    A :class:`~.._listeners.Service`: ``trustflow gateway`` runs it with :func:`~.._server.run`
    (signals, ``--workers``); ``gw.listeners`` holds one listener per config listener."""

    def __init__(
        self,
        config: GatewayConfig,
        pm: TrustflowPluginManager,
        *,
        ssl_factory: SslFactory | None = None,
        tls_reload_interval: float = DEFAULT_RELOAD_INTERVAL,
        replay_caches: Mapping[str, SharedReplayCache] | None = None,
    ) -> None:
        self.config = config
        self.replay_caches = dict(replay_caches or {})
        self.pm = pm
        self.ssl_factory = ssl_factory
        self.tls_reload_interval = tls_reload_interval
        self.mtls: MtlsContexts | None = None
        self.addresses: dict[str, Address] = {}
        self.listeners = Listeners("gateway")
        self._upstreams: Upstreams | None = None

    def _contexts(self) -> MtlsContexts:
        if self.mtls is None:
            self.mtls = MtlsContexts(
                self.pm,
                interval=self.tls_reload_interval,
                channel=self.config.transport_channel,
            )
        return self.mtls

    def _server_ssl(self, listener: Listener) -> ssl.SSLContext | None:
        if listener.tls is None:
            return None
        what = f"listener {listener.name!r}"
        if self.ssl_factory is not None:
            return self.ssl_factory(listener.tls, True)
        return self._contexts().server_context(listener.tls, what)

    def _client_ssl(self, cluster: Cluster) -> Callable[[], ssl.SSLContext] | None:
        if cluster.tls is None:
            return None
        if self.ssl_factory is not None:
            context = self.ssl_factory(cluster.tls, False)
            return lambda: context
        return self._contexts().client_contexts(cluster.tls, f"cluster {cluster.name!r}")

    def _jwe_filter(self, listener: Listener) -> JweFilter | None:
        if listener.jwe is None:
            return None
        from ...registry import ENVELOPE_CHANNEL, backend_class

        cls = backend_class(self.pm, ENVELOPE_CHANNEL, self.config.envelope_channel)
        channels = {p: cls.from_role({"profile": p}, pm=self.pm) for p in PROFILES}
        shared = self.replay_caches.get(listener.name)
        return JweFilter.load(listener.jwe, channels, None if shared is None else shared.table())

    async def start(self) -> None:
        """Open every listener of the config (each fixed port checked before any opens);
        on failure stop again."""
        try:
            self._upstreams = upstreams = Upstreams(
                self.config.clusters, self.config.request_timeout
            )
            default_cap = default_max_connections(len(self.config.listeners))
            ours: list[ServiceListener] = []  # beside them: the admin listener
            for listener in self.config.listeners:
                server_ssl = self._server_ssl(listener)
                host, port = listener.address.host, listener.address.port
                label = (
                    f"listener {listener.name}: {listener.kind}"
                    + (" + jwe" if listener.jwe else "")
                    + (" + mtls" if listener.tls else "")
                )
                if listener.kind == "tcp":
                    assert listener.tcp_cluster is not None
                    cluster = self.config.clusters[listener.tcp_cluster]
                    proxy = TcpProxy(
                        cluster,
                        upstreams,
                        self._client_ssl(cluster),
                        max_connections=listener.max_connections or default_cap,
                        idle_timeout=listener.idle_timeout or 0.0,
                        listener_name=listener.name,
                    )
                    opened: ServiceListener = self.listeners.add(
                        StreamListener(
                            proxy.handle,
                            host,
                            port,
                            ssl_context=server_ssl,
                            handshake_timeout=HANDSHAKE_TIMEOUT,
                            on_close=proxy.aclose,
                            label=label,
                        )
                    )
                else:
                    for route in listener.routes:
                        if self.config.clusters[route.cluster].tls is not None:
                            raise UnsupportedOperation(
                                f"listener {listener.name!r}: cluster {route.cluster!r} uses "
                                "TLS, which only tcp_proxy listeners support"
                            )
                    http = HttpProxy(
                        listener,
                        self.config,
                        upstreams,
                        self._jwe_filter(listener),
                        max_connections=default_cap,
                    )
                    opened = self.listeners.add(
                        http.relay_listener(
                            host,
                            port,
                            ssl_context=server_ssl,
                            handshake_timeout=HANDSHAKE_TIMEOUT,
                            label=label,
                        )
                    )
                ours.append(opened)
            await self.listeners.open()
            for listener, bound in zip(self.config.listeners, ours, strict=True):
                self.addresses[listener.name] = Address(bound.host, bound.port)
                log.info("gateway %s on %s", bound.label, self.addresses[listener.name])
            log.info("gateway request path: %s", compiled.build())
            if self.mtls is not None:
                self.mtls.start()
        except BaseException:
            await self.stop()
            raise

    async def upstreams_ready(self) -> str | None:
        """A readiness check (:mod:`.._admin`): None when every cluster has an endpoint that
        accepts a TCP connection now, else one line per cluster that has none."""

        async def reachable(cluster: Cluster) -> str | None:
            problems = []
            for endpoint in cluster.endpoints:
                what = f"cluster {cluster.name}"
                problem = await tcp_reachable(endpoint.host, endpoint.port, what)
                if problem is None:
                    return None
                problems.append(problem)
            return "; ".join(problems) or f"cluster {cluster.name}: no endpoint"

        found = await asyncio.gather(*(reachable(c) for c in self.config.clusters.values()))
        return "\n".join(p for p in found if p) or None

    def notes(self) -> list[str]:
        """Nothing beyond the listeners' labels."""
        return []

    async def stop(self) -> None:
        """Close the listeners, the upstream connections and the asset watchers; add the
        request counts still pending to the metrics."""
        await self.listeners.close()
        if self._upstreams is not None:
            await self._upstreams.close()
            self._upstreams = None
        if self.mtls is not None:
            await self.mtls.aclose()
        flush_tallies()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def gateway_service(
    config: GatewayConfig,
    tls_reload_interval: float,
    admin_host: str = "127.0.0.1",
    admin_port: int | None = None,
    replay_caches: Mapping[str, SharedReplayCache] | None = None,
) -> Gateway:
    """The gateway of ``trustflow gateway`` and of each of its ``--workers`` (a picklable
    service factory for :func:`~.._server.run`): the installed plugins, asset reload, the
    admin listener on ``admin_host:admin_port`` (None: none; readiness: the clusters answer)
    and the ``replay_caches`` the workers share (:func:`shared_replay_caches`)."""
    from ...manager import get_plugin_manager

    gw = Gateway(
        config,
        get_plugin_manager(),
        tls_reload_interval=tls_reload_interval,
        replay_caches=replay_caches,
    )
    admin = create_admin_app("gateway", gw.pm, [gw.upstreams_ready])
    return with_admin(gw, admin, admin_host, admin_port)


def shared_replay_caches(config: GatewayConfig) -> dict[str, SharedReplayCache]:
    """One :class:`~.shared_replay.SharedReplayCache` per JWE listener whose replay protection
    is on, by listener name: what the ``--workers`` of one gateway share."""
    return {
        listener.name: SharedReplayCache(listener.jwe.freshness.cache_size)
        for listener in config.listeners
        if listener.jwe is not None and listener.jwe.freshness.mode != "off"
    }
