"""The TCP listener (upstream ``envoy.filters.network.tcp_proxy``): every accepted connection
is joined to a new connection to the cluster; bytes are copied both ways, half-closes are
passed on, and either side closing ends both."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from .config import Cluster
from .upstreams import Upstreams

log = logging.getLogger("trustflow.gateway")
CHUNK = 64 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


class TcpProxy:
    """Connection handler of one TCP listener; ``upstream_ssl`` is for TLS clusters (mTLS)."""

    def __init__(
        self, cluster: Cluster, upstreams: Upstreams, upstream_ssl: ssl.SSLContext | None = None
    ) -> None:
        self.cluster = cluster
        self.upstreams = upstreams
        self.upstream_ssl = upstream_ssl

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = self.upstreams.pick(self.cluster.name)
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(address.host, address.port, ssl=self.upstream_ssl),
                self.cluster.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("tcp_proxy: cannot reach %s (%s): %r", self.cluster.name, address, exc)
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (up_writer, writer):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()
