"""The upstream clusters: round-robin endpoint choice and keep-alive pools (:mod:`.h1client`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

from .config import Address, Cluster
from .h1client import H1Client

#: Idle connections kept per upstream endpoint (and worker). As many as the requests that can be
#: in flight at once: a smaller pool closes the connections beyond it after each reply and opens
#: them again, doubling the app's CPU per request at 1,000 busy keep-alive clients
#: (benchmarks/gateway_growth.py, docs/online.md).
DEFAULT_POOL_SIZE = 1024


class Upstreams:
    """Every cluster of the config and one :class:`~.h1client.H1Client` (a keep-alive pool
    per endpoint) shared by all listeners."""

    def __init__(
        self,
        clusters: Mapping[str, Cluster],
        request_timeout: float,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        self.clusters = dict(clusters)
        self.request_timeout = request_timeout
        self._cycles: dict[str, Iterator[Address]] = {
            name: itertools.cycle(c.endpoints) for name, c in self.clusters.items()
        }
        self.client = H1Client(pool_size)

    def pick(self, cluster: str) -> Address:
        return next(self._cycles[cluster])

    async def close(self) -> None:
        self.client.close()
