"""The one worker model of the roles: ``--workers N`` serves a role from N processes that share
its listening ports (``SO_REUSEPORT``; the kernel spreads the connections over them).

The command's own process is the first: :func:`._server.run` starts its service with the
ports claimed (:mod:`._port_claim`, so no other server shares them), then :class:`Workers`
starts N-1 more processes that call the same service factory and join the bound ports (port 0
works: they join the port the kernel chose). The listening line is printed once every worker
serves; a worker that cannot start fails the command with its one-line error.

**Spawn, not fork.** A forked child inherits the parent's threads' state without the threads:
gRPC's core (the Capsule Manager's server, started before the workers so the port is claimed
first) does not survive it, nor do the event loop, the SQLAlchemy pool or the asset-reload
tasks; forking a threaded process is deprecated since Python 3.12. A spawned worker is a fresh
interpreter that builds its service from a pickled factory (the settings travel, not the live
objects), so one model serves every role, at the price of a second or two of start-up per
worker and no copy-on-write memory sharing.

**Lifetime.** Each worker holds one end of a socket pair whose other end only the parent
holds: when the parent ends, however it ends (even SIGKILL), the kernel closes its end and the
worker stops. A worker ignores SIGINT (a terminal's Ctrl-C reaches the whole process group; the
parent decides) and stops gracefully on SIGTERM. The parent sends SIGTERM to every worker when
it stops, waits for them (killing one that outlasts its grace) and logs each step; a worker
that ends while the parent serves stops the whole server with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailable, TrustflowError
from ._listeners import GRACE

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from ._listeners import Service

log = logging.getLogger("trustflow.server")

START_TIMEOUT = 120.0
"""Seconds a worker may take to serve (a fresh interpreter imports the role, then starts)."""
STOP_TIMEOUT = GRACE + 10.0
"""Seconds a stopping worker gets before it is killed."""


async def _readable(conn: Connection) -> None:
    """Return when ``conn`` has a message or its other end is closed."""
    loop = asyncio.get_running_loop()
    fd = conn.fileno()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _all(*works: Awaitable[None]) -> None:
    """Await every one of ``works``; on the first failure (or cancellation) cancel the rest
    and wait until they are gone, then raise."""
    tasks = [asyncio.ensure_future(work) for work in works]
    try:
        await asyncio.gather(*tasks)
    finally:
        await _cancel(tasks)


async def _cancel(tasks: Sequence[asyncio.Future[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _Worker:
    def __init__(self, index: int, process: BaseProcess, conn: Connection) -> None:
        self.index, self.process, self.conn = index, process, conn

    def name(self, role: str) -> str:
        return f"{role} worker {self.index} (pid {self.process.pid})"


class Workers:
    """The extra processes of one ``role`` server, each running ``factory()`` on ``ports``."""

    def __init__(
        self,
        role: str,
        factory: Callable[[], Service],
        count: int,
        ports: Sequence[int],
        setup: Callable[[], None] | None = None,
        fast_loop: bool = False,
    ) -> None:
        """``setup()`` runs first in each worker (the logging set-up); like ``factory`` it
        must pickle. ``fast_loop``: the workers serve on uvloop's event loop when it is
        installed (:func:`._server.run_loop`)."""
        self.role, self.factory, self.count, self.ports = role, factory, count, list(ports)
        self.setup, self.fast_loop = setup, fast_loop
        self._workers: list[_Worker] = []

    async def start(self) -> bool:
        """Spawn the workers; return True once each serves. Raise :class:`BackendUnavailable`
        with the reason of a worker that could not start."""
        context = multiprocessing.get_context("spawn")
        for index in range(1, self.count + 1):
            mine, theirs = context.Pipe()
            process = context.Process(
                target=_worker_main,
                args=(self.factory, self.ports, theirs, self.setup, self.fast_loop),
                name=f"{self.role} worker {index}",
            )
            process.start()
            theirs.close()
            self._workers.append(_Worker(index, process, mine))
        await _all(*(self._ready(worker) for worker in self._workers))
        log.info("%s: all %d processes serve", self.role, self.count + 1)
        return True

    async def _ready(self, worker: _Worker) -> None:
        try:
            await asyncio.wait_for(_readable(worker.conn), START_TIMEOUT)
            message = worker.conn.recv()
        except asyncio.TimeoutError:
            raise BackendUnavailable(
                f"{worker.name(self.role)} did not serve within {START_TIMEOUT:.0f} s"
            ) from None
        except (EOFError, OSError):
            await asyncio.to_thread(worker.process.join, STOP_TIMEOUT)
            raise BackendUnavailable(
                f"{worker.name(self.role)} ended with status {worker.process.exitcode} "
                "before it served"
            ) from None
        if message != "serving":
            raise BackendUnavailable(f"{self.role} worker {worker.index}: {message}")

    async def ended(self) -> str:
        """Wait until a worker ends (while the server runs, only a failure does); say which."""
        waits = [asyncio.ensure_future(_readable(worker.conn)) for worker in self._workers]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel(waits)
        worker = self._workers[waits.index(next(iter(done)))]
        await asyncio.to_thread(worker.process.join, STOP_TIMEOUT)
        message = f"{worker.name(self.role)} ended with status {worker.process.exitcode}"
        log.error("%s; stopping", message)
        return message

    def terminate(self) -> None:
        """Ask every worker to stop (SIGTERM)."""
        if self._workers:
            log.info("%s: stopping %d workers", self.role, len(self._workers))
        for worker in self._workers:
            if worker.process.exitcode is None:
                with contextlib.suppress(OSError):
                    worker.process.terminate()

    async def join(self) -> None:
        """Wait for every worker to end; kill one still running after :data:`STOP_TIMEOUT`."""
        await asyncio.to_thread(self._join_all)

    def _join_all(self) -> None:
        for worker in self._workers:
            worker.process.join(STOP_TIMEOUT)
            if worker.process.exitcode is None:
                log.warning("%s did not stop; killing it", worker.name(self.role))
                worker.process.kill()
                worker.process.join()
            log.info("%s stopped (status %s)", worker.name(self.role), worker.process.exitcode)
            worker.conn.close()
        self._workers.clear()


def _worker_main(
    factory: Callable[[], Service],
    ports: list[int],
    conn: Connection,
    setup: Callable[[], None] | None,
    fast_loop: bool = False,
) -> None:
    """A worker process: serve ``factory()`` on ``ports`` until SIGTERM or the parent's end."""
    from ._server import run_loop

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if setup is not None:
        setup()
    sys.exit(run_loop(_work(factory, ports, conn), fast_loop=fast_loop))


async def _work(factory: Callable[[], Service], ports: list[int], conn: Connection) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    why: list[str] = []

    def stop_for(reason: str) -> None:
        why.append(reason)
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop_for, "SIGTERM")
    loop.add_reader(conn.fileno(), stop_for, "the parent process ended")  # it closed its end
    service = factory()
    service.listeners.join(ports)
    name = f"{service.listeners.role} worker (pid {os.getpid()})"
    try:
        await service.start()
    except Exception as exc:
        conn.send(_one_line(exc))
        return 1
    conn.send("serving")
    log.info("%s serving", name)
    await stop.wait()
    log.info("%s stopping: %s", name, why[0])
    loop.remove_reader(conn.fileno())
    await service.stop()
    log.info("%s stopped", name)
    return 0


def _one_line(exc: BaseException) -> str:
    text: Any = exc if isinstance(exc, TrustflowError) else f"{type(exc).__name__}: {exc}"
    return " ".join(str(text).split())
