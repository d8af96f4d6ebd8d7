"""Connection limits of a listener: the default cap, and the HTTP connection guard.

A client that opens connections and never finishes a request (slowloris) must not hold
descriptors for long, nor keep others out:

* :func:`default_max_connections` sizes each listener's cap so that the downstream
  connections of all listeners, each with one upstream connection, fit in the process's
  descriptor limit with :data:`RESERVED_FDS` to spare: the gateway never runs out of
  descriptors because of its clients, so it keeps accepting (and ``/healthz`` keeps answering).
  asyncio itself backs off and retries when ``accept()`` fails with ``EMFILE``.
* :class:`HttpGuard` gives a new HTTP connection ``request_headers_timeout`` seconds to deliver
  its first request head (else ``408`` and close; later requests on a kept-alive connection
  are bounded by the listener's ``idle_timeout``). At the cap, a new connection closes the
  oldest connection that has no request in progress; only when every connection is busy with
  a request is the new one refused with ``503``. A flood of idle or half-sent connections
  therefore cannot keep a real request out.

The TCP listener's cap and idle timeout live in :mod:`.tcp_proxy`.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import cast

log = logging.getLogger("trustflow.gateway")

#: Descriptors kept for everything but client connections (logs, key files, the loop, ...).
RESERVED_FDS = 64
#: Descriptors one client connection may need: its own and one to the upstream.
FDS_PER_CONNECTION = 2
#: The default cap never exceeds this, whatever the descriptor limit.
MAX_DEFAULT_CONNECTIONS = 4096
MIN_DEFAULT_CONNECTIONS = 8


def default_max_connections(listeners: int) -> int:
    """The per-listener cap when the config sets none: an equal share of the soft
    ``RLIMIT_NOFILE`` (minus :data:`RESERVED_FDS`) at :data:`FDS_PER_CONNECTION` each."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_DEFAULT_CONNECTIONS
    share = (soft - RESERVED_FDS) // (FDS_PER_CONNECTION * max(1, listeners))
    return max(MIN_DEFAULT_CONNECTIONS, min(MAX_DEFAULT_CONNECTIONS, share))


def _reply_and_close(transport: asyncio.BaseTransport, status: str, message: str) -> None:
    body = message.encode() + b"\n"
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    if not transport.is_closing():  # uvloop's transports are no asyncio.WriteTransport
        cast(asyncio.WriteTransport, transport).write(head.encode() + body)
    transport.close()


@dataclass
class _Entry:
    busy: bool = False
    timer: asyncio.TimerHandle | None = None

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class HttpGuard:
    """The open connections of one HTTP listener, oldest first (see the module docstring).
    The server calls :meth:`opened`/:meth:`closed`; the request handler calls :meth:`busy`
    when a request head has arrived and :meth:`idle` when its reply is done."""

    def __init__(self, name: str, max_connections: int, headers_timeout: float) -> None:
        self.name = name
        self.max_connections = max_connections
        self.headers_timeout = headers_timeout
        self._open: dict[asyncio.BaseTransport, _Entry] = {}

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, transport: asyncio.BaseTransport) -> None:
        if len(self._open) >= self.max_connections:
            victim = next((t for t, e in self._open.items() if not e.busy), None)
            if victim is None:
                log.warning("listener %s: %d connections busy, refusing", self.name, len(self))
                _reply_and_close(
                    transport, "503 Service Unavailable", "too many connections, try again"
                )
                return
            log.info(
                "listener %s: at %d connections, closing the oldest idle one", self.name, len(self)
            )
            self.closed(victim)
            victim.close()
        entry = _Entry()
        if self.headers_timeout:
            entry.timer = asyncio.get_running_loop().call_later(
                self.headers_timeout, self._headers_late, transport
            )
        self._open[transport] = entry

    def _headers_late(self, transport: asyncio.BaseTransport) -> None:
        entry = self._open.get(transport)
        if entry is not None:
            entry.timer = None
            _reply_and_close(
                transport,
                "408 Request Timeout",
                f"request headers not received within {self.headers_timeout:g} s",
            )

    def closed(self, transport: asyncio.BaseTransport) -> None:
        entry = self._open.pop(transport, None)
        if entry is not None:
            entry.disarm()

    def busy(self, transport: asyncio.BaseTransport | None) -> None:
        entry = self._open.get(transport) if transport is not None else None
        if entry is not None:
            entry.busy = True
            entry.disarm()

    def idle(self, transport: asyncio.BaseTransport | None) -> None:
        entry = self._open.get(transport) if transport is not None else None
        if entry is not None:
            entry.busy = False
