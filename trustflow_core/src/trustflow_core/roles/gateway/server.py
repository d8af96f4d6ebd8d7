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
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from ...errors import UnsupportedOperation
from ...manager import TrustflowPluginManager
from .._admin import tcp_reachable
from .._server import binding
from .config import Address, Cluster, GatewayConfig, Listener
from .guard import default_max_connections
from .http_proxy import HttpProxy, create_server
from .jwe_filter import PROFILES, JweFilter
from .mtls import DEFAULT_RELOAD_INTERVAL, MtlsContexts
from .tcp_proxy import TcpProxy
from .upstreams import Upstreams

log = logging.getLogger("trustflow.gateway")

SslFactory = Callable[[Mapping[str, Any], bool], ssl.SSLContext]
HANDSHAKE_TIMEOUT = 10.0
"""Seconds a TLS listener waits for a client's handshake."""


class Gateway:
    """``async with Gateway(config, pm) as gw:`` serves until the block ends;
    ``gw.addresses[listener_name]`` is the bound address (useful with port 0).
    ``reuse_port`` lets several gateway processes share the listening ports (workers).
    ``gw.mtls`` (after start) holds the asset watchers of the TLS listeners and clusters."""

    def __init__(
        self,
        config: GatewayConfig,
        pm: TrustflowPluginManager,
        *,
        ssl_factory: SslFactory | None = None,
        reuse_port: bool = False,
        tls_reload_interval: float = DEFAULT_RELOAD_INTERVAL,
    ) -> None:
        self.config = config
        self.pm = pm
        self.ssl_factory = ssl_factory
        self.reuse_port = reuse_port
        self.tls_reload_interval = tls_reload_interval
        self.mtls: MtlsContexts | None = None
        self.addresses: dict[str, Address] = {}
        self._runners: list[web.BaseRunner] = []
        self._servers: list[asyncio.Server] = []
        self._tcp_proxies: list[TcpProxy] = []
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
        return JweFilter.load(listener.jwe, channels)

    async def start(self) -> None:
        try:
            self._upstreams = upstreams = Upstreams(
                self.config.clusters, self.config.request_timeout
            )
            default_cap = default_max_connections(len(self.config.listeners))
            for listener in self.config.listeners:
                server_ssl = self._server_ssl(listener)
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
                    self._tcp_proxies.append(proxy)
                    with binding(listener.address.host, listener.address.port):
                        server = await asyncio.start_server(
                            proxy.handle,
                            listener.address.host,
                            listener.address.port,
                            ssl=server_ssl,
                            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if server_ssl else None,
                            reuse_port=self.reuse_port or None,
                        )
                    self._servers.append(server)
                    port = server.sockets[0].getsockname()[1]
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
                    runner = web.ServerRunner(create_server(http), handle_signals=False)
                    await runner.setup()
                    self._runners.append(runner)
                    site = web.TCPSite(
                        runner,
                        listener.address.host,
                        listener.address.port,
                        ssl_context=server_ssl,
                        reuse_address=True,
                        reuse_port=self.reuse_port or None,
                    )
                    with binding(listener.address.host, listener.address.port):
                        await site.start()
                    port = runner.addresses[-1][1]
                self.addresses[listener.name] = Address(listener.address.host, int(port))
                log.info(
                    "gateway listener %s (%s) on %s",
                    listener.name,
                    listener.kind
                    + (" + jwe" if listener.jwe else "")
                    + (" + mtls" if listener.tls else ""),
                    self.addresses[listener.name],
                )
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

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            if hasattr(server, "close_clients"):  # Python 3.13+
                server.close_clients()
        for proxy in self._tcp_proxies:
            await proxy.aclose()
        self._tcp_proxies.clear()
        for runner in self._runners:
            await runner.cleanup()
        for server in self._servers:
            # From Python 3.12 wait_closed() also waits for open connections.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2)
        self._servers.clear()
        self._runners.clear()
        if self._upstreams is not None:
            await self._upstreams.close()
            self._upstreams = None
        if self.mtls is not None:
            await self.mtls.aclose()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
