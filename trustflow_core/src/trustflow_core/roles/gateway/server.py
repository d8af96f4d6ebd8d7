"""``Gateway``: starts every listener of a :class:`~.config.GatewayConfig` and stops them.

TLS listeners and TLS clusters need an ``ssl_factory(tls_context, server_side) ->
ssl.SSLContext`` (the mTLS channel will provide it); without one they are refused at start.
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
from .config import Address, GatewayConfig, Listener
from .http_proxy import HttpProxy, create_app
from .jwe_filter import PROFILES, JweFilter
from .tcp_proxy import TcpProxy
from .upstreams import Upstreams

log = logging.getLogger("trustflow.gateway")

SslFactory = Callable[[Mapping[str, Any], bool], ssl.SSLContext]


class Gateway:
    """``async with Gateway(config, pm) as gw:`` serves until the block ends;
    ``gw.addresses[listener_name]`` is the bound address (useful with port 0).
    ``reuse_port`` lets several gateway processes share the listening ports (workers)."""

    def __init__(
        self,
        config: GatewayConfig,
        pm: TrustflowPluginManager,
        *,
        ssl_factory: SslFactory | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.config = config
        self.pm = pm
        self.ssl_factory = ssl_factory
        self.reuse_port = reuse_port
        self.addresses: dict[str, Address] = {}
        self._runners: list[web.AppRunner] = []
        self._servers: list[asyncio.Server] = []
        self._upstreams: Upstreams | None = None

    def _ssl(self, tls: Mapping[str, Any] | None, server_side: bool, what: str) -> Any:
        if tls is None:
            return None
        if self.ssl_factory is None:
            raise UnsupportedOperation(
                f"{what} uses TLS ({tls.get('@type', 'tls context')}); TLS needs the mTLS "
                "channel, which this gateway was not given"
            )
        return self.ssl_factory(tls, server_side)

    def _jwe_filter(self, listener: Listener) -> JweFilter | None:
        if listener.jwe is None:
            return None
        from ...registry import get_backend_class

        cls = get_backend_class(self.pm, "channel", "jwe")
        channels = {p: cls.from_settings({"profile": p}) for p in PROFILES}
        return JweFilter.load(listener.jwe, channels)

    async def start(self) -> None:
        from ...registry import list_plugins

        try:
            self._upstreams = upstreams = Upstreams(
                self.config.clusters, self.config.request_timeout
            )
            listing = list_plugins(self.pm)
            for listener in self.config.listeners:
                server_ssl = self._ssl(listener.tls, True, f"listener {listener.name!r}")
                if listener.kind == "tcp":
                    assert listener.tcp_cluster is not None
                    cluster = self.config.clusters[listener.tcp_cluster]
                    proxy = TcpProxy(
                        cluster,
                        upstreams,
                        self._ssl(cluster.tls, False, f"cluster {cluster.name!r}"),
                    )
                    server = await asyncio.start_server(
                        proxy.handle,
                        listener.address.host,
                        listener.address.port,
                        ssl=server_ssl,
                        reuse_port=self.reuse_port or None,
                    )
                    self._servers.append(server)
                    port = server.sockets[0].getsockname()[1]
                else:
                    for route in listener.routes:
                        cluster = self.config.clusters[route.cluster]
                        self._ssl(cluster.tls, False, f"cluster {cluster.name!r}")
                    http = HttpProxy(
                        listener, self.config, upstreams, self._jwe_filter(listener), listing
                    )
                    runner = web.AppRunner(create_app(http), handle_signals=False, access_log=None)
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
                    await site.start()
                    port = runner.addresses[-1][1]
                self.addresses[listener.name] = Address(listener.address.host, int(port))
                log.info(
                    "gateway listener %s (%s) on %s",
                    listener.name,
                    listener.kind + (" + jwe" if listener.jwe else ""),
                    self.addresses[listener.name],
                )
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            if hasattr(server, "close_clients"):  # Python 3.13+
                server.close_clients()
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

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
