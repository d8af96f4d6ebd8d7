"""The floor of ``benchmarks/gateway.py``'s peer rounds: the least a Python HTTP/1.1 reverse proxy
on the gateway's own stack (uvloop, llhttp through httptools) does per request, so that the
gateway's cost can be split into what the stack costs and what its features cost.

Per request it parses the request with llhttp (no callback for the body), writes its bytes
unchanged to an idle upstream connection (a new one when none is idle) from the end of its head
on, writes the reply's bytes to the client as they arrive and parses them with llhttp only to
find the reply's end. Nothing else: no routing, header
edits, request id, metrics, limits, timeouts or error replies; a broken connection is simply
dropped. It is a measuring stick, not a proxy anyone should run.

    python benchmarks/_floor.py <listen port> <app port> [processes]

``processes`` share one listening socket (bound before the fork, as prefork servers do); the
first is the parent of the others, so its CPU with its children's is the floor's.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import os
import signal
import socket
import sys

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    """A keep-alive connection to the app, lent to one client request at a time."""

    def __init__(self, idle: collections.deque[Upstream]) -> None:
        self.idle = idle
        self.transport: asyncio.Transport | None = None
        self.client: Downstream | None = None
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.client is not None and self.client.transport is not None
        self.client.transport.write(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        assert self.client is not None
        self.client.upstream = self.client = None
        self.idle.append(self)


class Downstream(asyncio.Protocol):
    """A client connection: each request is streamed to an upstream connection from the end of
    its head on (the load generator sends the next request after the reply)."""

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.upstream: Upstream | None = None
        self.pending: list[bytes] = []  # received while no upstream connection is attached

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.pending.append(data)
        self.parser.feed_data(data)  # the end of a head attaches an upstream connection
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.writelines(self.pending)
            self.pending = []

    def on_headers_complete(self) -> None:
        self.floor.attach(self)


class Floor:
    """The upstream connections of one process."""

    def __init__(self, loop: asyncio.AbstractEventLoop, app_port: int) -> None:
        self.loop = loop
        self.app_port = app_port
        self.idle: collections.deque[Upstream] = collections.deque()

    def attach(self, client: Downstream) -> None:
        if self.idle:
            upstream = client.upstream = self.idle.pop()
            upstream.client = client
        else:
            self.loop.create_task(self._connect(client))

    async def _connect(self, client: Downstream) -> None:
        _, upstream = await self.loop.create_connection(
            lambda: Upstream(self.idle), "127.0.0.1", self.app_port
        )
        upstream.client, client.upstream = client, upstream
        assert upstream.transport is not None
        upstream.transport.writelines(client.pending)
        client.pending = []


def main() -> None:
    port, app_port = int(sys.argv[1]), int(sys.argv[2])
    processes = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    for _ in range(processes - 1):
        if os.fork() == 0:  # a child ends with its parent (Linux: PR_SET_PDEATHSIG)
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
            break
    loop = uvloop.new_event_loop()
    floor = Floor(loop, app_port)
    loop.run_until_complete(loop.create_server(lambda: Downstream(floor), sock=listener))
    loop.run_forever()


if __name__ == "__main__":
    main()
