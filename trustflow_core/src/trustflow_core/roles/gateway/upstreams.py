"""Keep-alive connection pools to the upstream clusters, with round-robin endpoint choice."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

import aiohttp

from .config import Address, Cluster

#: Connections kept per upstream endpoint.
DEFAULT_POOL_SIZE = 128


class Upstreams:
    """Keep-alive pools (one shared connector, ``pool_size`` connections per endpoint) and one
    ``aiohttp.ClientSession`` per cluster carrying its timeouts: ``connect_timeout`` to
    connect, ``request_timeout`` for each read (so for the answer to start).

    Bodies are relayed byte for byte: no automatic decompression, no cookies, no redirects.
    """

    def __init__(
        self,
        clusters: Mapping[str, Cluster],
        request_timeout: float,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        self.clusters = dict(clusters)
        self._cycles: dict[str, Iterator[Address]] = {
            name: itertools.cycle(c.endpoints) for name, c in self.clusters.items()
        }
        self._connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=pool_size, keepalive_timeout=30, ttl_dns_cache=60
        )
        self.sessions = {
            name: aiohttp.ClientSession(
                connector=self._connector,
                connector_owner=False,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=cluster.connect_timeout, sock_read=request_timeout
                ),
            )
            for name, cluster in self.clusters.items()
        }

    def pick(self, cluster: str) -> Address:
        return next(self._cycles[cluster])

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()
        await self._connector.close()
