"""The one server runner of the roles: start aiohttp sites, run until SIGINT/SIGTERM, stop
cleanly (shared by every ``trustflow`` server command, the demos and the tests)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web

from ..errors import BackendUnavailable


async def wait_for_signal() -> None:
    """Return on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


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


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start ``app`` on ``host:port`` (port 0 = any free port); return the runner and the port.
    Raises :class:`BackendUnavailable` when the address cannot be bound."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        with binding(host, port):
            await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return runner, int(bound)


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    on_started: Callable[[int], None] | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] = wait_for_signal,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns, then clean up."""
    runner, bound = await start_site(app, host, port)
    try:
        if on_started is not None:
            on_started(bound)
        await shutdown_trigger()
    finally:
        await runner.cleanup()
