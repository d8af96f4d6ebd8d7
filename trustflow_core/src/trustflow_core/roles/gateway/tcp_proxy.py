"""The TCP listener (upstream ``envoy.filters.network.tcp_proxy``): every accepted connection
is joined to a new connection to the cluster; bytes are copied both ways, half-closes are
passed on between plain connections, and either side closing ends both.

Limits: at most ``max_connections`` tunnels (a connection over the cap is closed before any
upstream connection is made), and a tunnel with no byte in either direction for
``idle_timeout`` seconds is closed, upstream connection included (Envoy's ``idle_timeout``).

asyncio's TLS transports cannot half-close, so an end of input that must go into a TLS
connection (mTLS ingress or egress) closes that connection once the pending bytes are written;
the peer gateway then closes its side too. Request/response protocols that keep the
connection open (HTTP) are unaffected; "send, shut down writing, then read the answer" does not
work across an mTLS hop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...tls_asset import peer_party_id
from .. import _metrics
from .config import Cluster
from .upstreams import Upstreams

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger("trustflow.gateway")
CHUNK = 256 * 1024
CLOSE_TIMEOUT = 2.0


class _IdleWatch:
    """Closes ``writers`` once no byte went either way for ``timeout`` seconds: one timer per
    tunnel, re-armed lazily from the time of the last byte."""

    def __init__(self, timeout: float, writers: tuple[asyncio.StreamWriter, ...]) -> None:
        self._loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.writers = writers
        self.last = self._loop.time()
        self.expired = False
        self._timer = self._loop.call_at(self.last + timeout, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        due = self.last + self.timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
            return
        self.expired = True
        for writer in self.writers:
            writer.transport.abort()

    def cancel(self) -> None:
        self._timer.cancel()


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    watch: _IdleWatch | None,
    relayed: Counter,
) -> None:
    try:
        while data := await reader.read(CHUNK):
            relayed.inc(len(data))
            if watch is not None:
                watch.touch()
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:  # TLS: no half-close, see the module docstring
            writer.close()
    except (ConnectionError, OSError):
        writer.close()


class TcpProxy:
    """Connection handler of one TCP listener. ``upstream_ssl`` (TLS clusters, mTLS egress)
    returns the client context for each new upstream connection, so reloaded certificates are
    used from the next connection on. The TLS handshake gets ``handshake_timeout`` seconds on
    top of the cluster's connect timeout; a refused handshake closes the downstream connection.
    Relayed bytes are counted under ``listener_name`` (default: the cluster's name)."""

    def __init__(
        self,
        cluster: Cluster,
        upstreams: Upstreams,
        upstream_ssl: Callable[[], ssl.SSLContext] | None = None,
        handshake_timeout: float = 10.0,
        *,
        max_connections: int,
        idle_timeout: float,
        listener_name: str | None = None,
    ) -> None:
        self.cluster = cluster
        name = listener_name or cluster.name
        self._to_upstream = _metrics.PROXY_BYTES.labels(name, "upstream")
        self._to_downstream = _metrics.PROXY_BYTES.labels(name, "downstream")
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.upstreams = upstreams
        self.upstream_ssl = upstream_ssl
        self.handshake_timeout = handshake_timeout
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= self.max_connections:
            log.warning(
                "tcp_proxy %s: %d tunnels open, refusing a connection",
                self.cluster.name,
                len(self._tasks),
            )
            writer.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        peer = writer.get_extra_info("ssl_object")
        if peer is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("tcp_proxy %s: mTLS peer %s", self.cluster.name, peer_party_id(peer))
        address = self.upstreams.pick(self.cluster.name)
        timeout = self.cluster.connect_timeout
        ssl = None if self.upstream_ssl is None else self.upstream_ssl()
        if ssl is not None:
            timeout += self.handshake_timeout
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(
                    address.host,
                    address.port,
                    ssl=ssl,
                    ssl_handshake_timeout=self.handshake_timeout if ssl is not None else None,
                ),
                timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("tcp_proxy: cannot reach %s (%s): %r", self.cluster.name, address, exc)
            writer.close()
            return
        except BaseException:  # cancelled (the listener stops) while connecting
            writer.close()
            raise
        watch = _IdleWatch(self.idle_timeout, (writer, up_writer)) if self.idle_timeout else None
        try:
            await asyncio.gather(
                _pipe(reader, up_writer, watch, self._to_upstream),
                _pipe(up_reader, writer, watch, self._to_downstream),
            )
        finally:
            if watch is not None:
                watch.cancel()
                if watch.expired:
                    log.info(
                        "tcp_proxy %s: idle for %g s, closed", self.cluster.name, watch.timeout
                    )
            for w in (up_writer, writer):
                w.close()
            for w in (up_writer, writer):
                with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
                    await asyncio.wait_for(w.wait_closed(), CLOSE_TIMEOUT)

    async def aclose(self, timeout: float = 2.0) -> None:
        """End every open tunnel (cancel its handler, which closes both connections)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
