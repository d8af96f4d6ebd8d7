"""The listeners of the roles, for the server runner (:mod:`._server`).

* A :class:`Listener` is one listening socket of a role: :class:`WebListener` (an aiohttp
  application or low-level server), :class:`StreamListener` (an asyncio stream server, e.g.
  TCP proxying) or :class:`GrpcListener` (a ``grpc.aio`` server). ``open`` binds it, ``close``
  stops it, letting open requests finish for its ``grace`` seconds.
* :class:`Listeners` holds the listeners of one role process: it checks and claims their ports
  (:mod:`._port_claim`), opens them in order, turns a failure to bind into a one-line
  :class:`BackendUnavailable` and closes them again. A role gets another listener (an admin
  listener, say) with one ``self.listeners.add(...)`` before it starts.
* A :class:`Service` is a role's server as :func:`._server.run` drives it: its ``listeners``,
  ``start()``, ``stop()`` and notes for the listening line.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aiohttp import web

from ..errors import BackendUnavailable
from ._port_claim import Sharing, check_free, claim

if TYPE_CHECKING:
    import ssl

    import grpc

GRACE = 2.0
"""Default seconds a stopping listener lets open requests finish before it closes them."""

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
L = TypeVar("L", bound="Listener")


@contextlib.contextmanager
def binding(host: str, port: int) -> Iterator[None]:
    """Turn a failure to bind ``host:port`` (in use, not an address of this host, no
    permission) into :class:`BackendUnavailable` naming the address: one line for the user,
    not a traceback."""
    try:
        yield
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise BackendUnavailable(f"cannot listen on {host}:{port}: {reason}") from None


# ---- listeners ---------------------------------------------------------------------------


class Listener(abc.ABC):
    """One listening socket of a role. ``port`` 0 asks for any free port; after :meth:`open`
    it is the bound port. ``label`` says what the listener serves (shown in the listening
    line); ``scheme`` is the URL scheme of :attr:`address` ("" for gRPC and raw TCP)."""

    def __init__(
        self, host: str, port: int, *, label: str = "", scheme: str = "", grace: float = GRACE
    ) -> None:
        self.host, self.port, self.label, self.scheme, self.grace = host, port, label, scheme, grace

    @property
    def address(self) -> str:
        """Where clients reach the listener: ``host:port`` or ``scheme://host:port``."""
        where = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return f"{self.scheme}://{where}" if self.scheme else where

    @abc.abstractmethod
    async def open(self, reuse_port: bool) -> int:
        """Listen on ``host:port``, with ``SO_REUSEPORT`` when ``reuse_port``; return the bound
        port. Raise :class:`OSError` when the address cannot be bound, leaving nothing open."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop accepting, give open requests up to ``grace`` seconds, close the rest. A
        listener that is not open is left alone."""


class WebListener(Listener):
    """An aiohttp :class:`~aiohttp.web.Application` or low-level :class:`~aiohttp.web.Server`
    (HTTP, HTTPS with ``ssl_context``). aiohttp takes ``grace`` when the listener opens."""

    def __init__(
        self,
        handler: web.Application | web.Server,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        label: str = "",
        grace: float = GRACE,
    ) -> None:
        scheme = "https" if ssl_context is not None else "http"
        super().__init__(host, port, label=label, scheme=scheme, grace=grace)
        self.handler, self.ssl_context = handler, ssl_context
        self.runner: web.BaseRunner | None = None

    async def open(self, reuse_port: bool) -> int:
        runner: web.BaseRunner
        if isinstance(self.handler, web.Application):
            runner = web.AppRunner(
                self.handler, handle_signals=False, access_log=None, shutdown_timeout=self.grace
            )
        else:
            runner = web.ServerRunner(
                self.handler, handle_signals=False, shutdown_timeout=self.grace
            )
        await runner.setup()
        try:
            site = web.TCPSite(
                runner,
                self.host,
                self.port,
                ssl_context=self.ssl_context,
                reuse_address=True,
                reuse_port=reuse_port or None,
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.runner = runner
        return int(runner.addresses[0][1])

    async def close(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()


class StreamListener(Listener):
    """An asyncio stream server calling ``handler(reader, writer)`` per connection (TLS with
    ``ssl_context``, handshakes limited to ``handshake_timeout`` seconds). ``on_close`` runs
    after the listener stops accepting, e.g. to end the open connections."""

    def __init__(
        self,
        handler: StreamHandler,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        label: str = "",
        grace: float = GRACE,
    ) -> None:
        super().__init__(host, port, label=label, grace=grace)
        self.handler, self.ssl_context = handler, ssl_context
        self.handshake_timeout, self.on_close = handshake_timeout, on_close
        self.server: asyncio.Server | None = None

    async def open(self, reuse_port: bool) -> int:
        self.server = await asyncio.start_server(
            self.handler,
            self.host,
            self.port,
            ssl=self.ssl_context,
            ssl_handshake_timeout=self.handshake_timeout if self.ssl_context else None,
            reuse_port=reuse_port or None,
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        server.close()
        if hasattr(server, "close_clients"):  # Python 3.13+
            server.close_clients()
        if self.on_close is not None:
            await self.on_close()
        # From Python 3.12 wait_closed() also waits for open connections.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), self.grace)


class GrpcListener(Listener):
    """A ``grpc.aio`` server: ``add_services(server)`` registers the servicers before it
    starts; ``credentials()`` gives the TLS credentials (None: plaintext). gRPC reports no
    reason when it cannot bind; a probe socket finds it (:func:`._port_claim.bind_error`)."""

    def __init__(
        self,
        add_services: Callable[[grpc.aio.Server], None],
        host: str,
        port: int,
        *,
        credentials: Callable[[], grpc.ServerCredentials] | None = None,
        options: Sequence[tuple[str, Any]] = (),
        label: str = "",
        grace: float = GRACE,
    ) -> None:
        super().__init__(host, port, label=label, grace=grace)
        self.add_services, self.credentials, self.options = add_services, credentials, options
        self.server: grpc.aio.Server | None = None

    async def open(self, reuse_port: bool) -> int:
        import grpc

        from ._port_claim import bind_error

        server = grpc.aio.server(options=[*self.options, ("grpc.so_reuseport", int(reuse_port))])
        self.add_services(server)
        address = f"{self.host}:{self.port}"
        try:
            if self.credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, self.credentials())
        except RuntimeError:
            port = 0
        if port == 0:
            raise bind_error(self.host, self.port) or OSError("gRPC could not bind it")
        await server.start()
        self.server = server
        return int(port)

    async def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop(self.grace)


class Listeners:
    """The listeners of one process of ``role``, bound as ``sharing`` says
    (:mod:`._port_claim`): ``exclusive`` by default, ``first`` in a process that starts
    workers (:func:`._server.run` sets it), ``worker`` after :meth:`join`."""

    def __init__(self, role: str, *, sharing: Sharing = "exclusive") -> None:
        self.role, self.sharing = role, sharing
        self._all: list[Listener] = []
        self._checked = 0
        self._open: list[Listener] = []
        self._claims: list[socket.socket] = []
        self._join: list[int] | None = None

    def add(self, listener: L) -> L:
        """Add ``listener`` (before :meth:`open`); return it."""
        self._all.append(listener)
        return listener

    def __iter__(self) -> Iterator[Listener]:
        return iter(self._all)

    @property
    def ports(self) -> list[int]:
        """The ports of the listeners, in order (the bound ones after :meth:`open`)."""
        return [listener.port for listener in self._all]

    def join(self, ports: Sequence[int]) -> None:
        """Be a worker of the process whose listeners are bound to ``ports`` (in order): open
        the same listeners on those ports, with ``SO_REUSEPORT``, without checks."""
        self.sharing, self._join = "worker", list(ports)

    def check(self) -> None:
        """Refuse (:class:`BackendUnavailable`) a fixed port something listens on, and claim
        it when ``sharing`` is ``first``; :meth:`open` does it too, a role may call it early to
        fail before expensive setup. Port 0 and workers are not checked."""
        for listener in self._all[self._checked :]:
            self._checked += 1
            if self.sharing == "worker" or not listener.port:
                continue
            if self.sharing == "first":
                self._claim(listener)
            with binding(listener.host, listener.port):
                check_free(listener.host, listener.port)

    def _claim(self, listener: Listener) -> None:
        held = claim(listener.host, listener.port)
        if held is not None:
            self._claims.append(held)

    async def open(self, only: Callable[[Listener], bool] | None = None) -> None:
        """Open every listener in order (``only``: those it accepts; a later call opens the
        rest, e.g. the admin listener before a slow start); on any failure close those opened
        and raise (a bind failure as :class:`BackendUnavailable` naming the address)."""
        try:
            if self._join is not None:
                if len(self._join) != len(self._all):
                    raise BackendUnavailable(
                        f"{self.role} worker: {len(self._all)} listeners, {len(self._join)} ports"
                    )
                for listener, port in zip(self._all, self._join, strict=True):
                    listener.port = port
            self.check()
            for listener in self._all:
                if listener in self._open or (only is not None and not only(listener)):
                    continue
                requested = listener.port
                with binding(listener.host, requested):
                    listener.port = await listener.open(reuse_port=self.sharing != "exclusive")
                self._open.append(listener)
                if self.sharing == "first" and not requested:  # a port the kernel just chose
                    self._claim(listener)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the open listeners (together, each within its grace) and drop the claims."""
        opened, self._open = self._open[::-1], []
        try:
            await asyncio.gather(*(listener.close() for listener in opened))
        finally:
            for held in self._claims:
                held.close()
            self._claims.clear()

    def lines(self, notes: Iterable[str] = ()) -> list[str]:
        """The listening lines: ``<role> listening on <address> (<label>, <notes>)``."""
        notes = list(notes)
        lines = []
        for listener in self._all:
            line = f"{self.role} listening on {listener.address}"
            extra = [listener.label, *notes] if listener.label else notes
            lines.append(f"{line} ({', '.join(extra)})" if extra else line)
        return lines


class Service(Protocol):
    """A role's server as :func:`._server.run` drives it. ``start`` sets the role up and opens its
    ``listeners`` (on failure it stops again what it started, then raises); ``stop`` closes
    them and releases the rest; ``notes`` adds to the listening line (e.g. an identity)."""

    listeners: Listeners

    async def start(self) -> object: ...

    async def stop(self) -> None: ...

    def notes(self) -> list[str]: ...
