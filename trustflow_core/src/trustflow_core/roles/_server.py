"""The one server runner of the roles.

Every ``trustflow`` server command (``ra-proxy``, ``data-capsule-proxy``, ``gateway``,
``capsule-manager``), the demos and the tests start and stop their servers through here. A
role is a :class:`~._listeners.Service` with :class:`~._listeners.Listeners` (aiohttp, asyncio
stream or gRPC listeners, :mod:`._listeners`); :class:`AppServer` is the service of one aiohttp
application (the RA proxy, the Data Capsule Proxy). :func:`run` serves one until SIGINT or
SIGTERM (handled here, once), prints one line per listener,
``<role> listening on <address> (<label>, <notes>, <n> worker[s])``, then stops it, each
listener within its grace period, logging ``<role> stopping`` and ``<role> stopped``; with
``workers > 1`` it runs the extra processes of :mod:`._workers`, logging as this one does
(:mod:`._logging`). A port that cannot be bound is a one-line :class:`BackendUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from aiohttp import web

from ..errors import BackendUnavailable
from ._listeners import Listeners, Service, WebListener, binding
from ._logging import logging_args, setup_logging

log = logging.getLogger("trustflow.server")
T = TypeVar("T")


class AppServer:
    """The :class:`Service` of one aiohttp application on ``host:port``."""

    def __init__(self, role: str, app: web.Application, host: str, port: int) -> None:
        self.listeners = Listeners(role)
        self.listeners.add(WebListener(app, host, port))

    async def start(self) -> None:
        await self.listeners.open()

    async def stop(self) -> None:
        await self.listeners.close()

    def notes(self) -> list[str]:
        return []


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start ``app`` on ``host:port`` (port 0 = any free port); return its aiohttp runner
    (``await runner.cleanup()`` stops it) and the port; for the demos and tests, which run
    apps inside their own event loop. Raises :class:`BackendUnavailable` when the address
    cannot be bound."""
    listener = WebListener(app, host, port)
    with binding(host, port):
        bound = await listener.open(reuse_port=False)
    assert isinstance(listener.runner, web.AppRunner)
    return listener.runner, bound


# ---- running -----------------------------------------------------------------------------


@contextlib.contextmanager
def stop_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> Iterator[None]:
    """Call ``stop`` on SIGINT or SIGTERM while the block runs."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def run_loop(main: Coroutine[Any, Any, T], *, fast_loop: bool = False) -> T:
    """Run ``main`` to completion in a new event loop, as :func:`asyncio.run` does. With
    ``fast_loop`` the loop is uvloop's (libuv; scheduling, callbacks and socket I/O in C) when
    uvloop is installed, else asyncio's own (logged once)."""
    if fast_loop:
        try:
            import uvloop
        except ImportError:
            log.info("uvloop is not installed: serving on asyncio's event loop")
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def run(factory: Callable[[], Service], *, workers: int = 1, fast_loop: bool = False) -> None:
    """Serve ``factory()`` until SIGINT or SIGTERM, then stop it; print one listening line
    per listener on stderr once every process serves. ``fast_loop``: every process serves on
    uvloop's event loop when it is installed (:func:`run_loop`).

    ``workers > 1`` runs that many processes sharing the ports (:mod:`._workers`): this one
    binds first and claims the ports, the others call ``factory()`` in fresh interpreters, so
    it must pickle (a module-level function or class, or a :func:`functools.partial` of one).
    Start-up failures raise :class:`BackendUnavailable` (one line); so does a worker that
    ends while serving, after everything is stopped."""
    run_loop(_serve(factory, workers, fast_loop), fast_loop=fast_loop)


async def _serve(factory: Callable[[], Service], workers: int, fast_loop: bool) -> None:
    from functools import partial

    import click

    stop = asyncio.Event()
    with stop_signals(asyncio.get_running_loop(), stop.set):  # before anything binds
        service = factory()
        role = service.listeners.role
        if workers > 1:
            service.listeners.sharing = "first"
        await service.start()
        pool = None
        failure: str | None = None
        try:
            if workers > 1:
                from ._workers import Workers

                args = logging_args()
                setup = None if args is None else partial(setup_logging, *args)
                pool = Workers(
                    role, factory, workers - 1, service.listeners.ports, setup, fast_loop
                )
                if not await _until(stop, pool.start()):
                    return
            count = f"{workers} worker" + "s" * (workers != 1)
            for line in service.listeners.lines([*service.notes(), count]):
                click.echo(line, err=True)
            failure = await _until(stop, pool.ended()) if pool is not None else None
            if failure is None:
                await stop.wait()
        finally:
            log.info("%s stopping", role)
            if pool is not None:
                pool.terminate()
            await service.stop()
            if pool is not None:
                await pool.join()
            log.info("%s stopped", role)
        if failure:
            raise BackendUnavailable(failure)


async def _until(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """Await ``work`` unless ``stop`` is set first (then cancel it and return None)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return task.result() if task.done() and not task.cancelled() else None
