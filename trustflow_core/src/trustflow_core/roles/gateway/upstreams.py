"""Keep-alive connection pools to the upstream clusters, with round-robin endpoint choice."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

import aiohttp

from .config import Address, Cluster

#: Connections kept per upstream endpoint.
DEFAULT_POOL_SIZE = 128


class Upstreams:
    """One ``aiohttp.ClientSession`` (keep-alive pool per endpoint) for every cluster.

    Bodies are relayed byte for byte: no automatic decompression, no cookies, no redirects.
    """

    def __init__(self, clusters: Mapping[str, Cluster], pool_size: int = DEFAULT_POOL_SIZE):
        self.clusters = dict(clusters)
        self._cycles: dict[str, Iterator[Address]] = {
            name: itertools.cycle(c.endpoints) for name, c in self.clusters.items()
        }
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, limit_per_host=pool_size, keepalive_timeout=30, ttl_dns_cache=60
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    def pick(self, cluster: str) -> Address:
        return next(self._cycles[cluster])

    async def close(self) -> None:
        await self.session.close()
