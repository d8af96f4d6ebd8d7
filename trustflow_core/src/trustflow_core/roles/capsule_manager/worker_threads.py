"""The Capsule Manager's worker threads: blocking calls (SQL, the audit commit, the policy
sandbox, sealing) awaited from the event loop with one queue put and one
``call_soon_threadsafe`` per call.

:func:`asyncio.to_thread` does the same through ``run_in_executor``: a
``concurrent.futures.Future`` chained to an asyncio future, a work item, the executor's
idle-semaphore and thread-count checks and two sets of done-callbacks: about 130 µs of CPU per
call on the build box against about 75 µs here (serial calls in one process,
docs/capsule-manager.md). Semantics kept from ``to_thread``: the call runs in a copy of the
caller's context (the request id of its log lines), its exception is raised in the caller, and
a call whose caller was cancelled before a thread took it is not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .._thread_names import name_native_thread

T = TypeVar("T")
#: As many threads as asyncio's default executor has (``min(32, cores + 4)``): the calls may
#: wait (a PostgreSQL round trip, the SQLite writer lock, a sandboxed constraint).
DEFAULT_THREADS = min(32, (os.cpu_count() or 1) + 4)

_Call = tuple[
    asyncio.AbstractEventLoop,
    "asyncio.Future[Any]",
    contextvars.Context,
    Callable[..., Any],
    tuple[Any, ...],
]


class WorkerThreads:
    """``await threads.run(fn, *args)``: ``fn(*args)`` in one of ``count`` daemon threads,
    started on first use; :meth:`close` lets them finish what they run and end."""

    def __init__(self, name: str, count: int = DEFAULT_THREADS) -> None:
        if count < 1:
            raise ValueError("at least one worker thread")
        self._name, self._count = name, count
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread, in a copy of the current context."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._threads:
            self._start()
        self._calls.put((loop, future, contextvars.copy_context(), fn, args))
        return await future

    def _start(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name} threads are closed")
            while len(self._threads) < self._count:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        name_native_thread()
        while (call := self._calls.get()) is not None:
            _run_one(*call)
            del call  # nothing of it is kept while the thread waits for the next

    def close(self, timeout: float | None = None) -> None:
        """Let every thread finish its current call and end (queued calls still run first);
        wait up to ``timeout`` seconds for them. :meth:`run` fails afterwards."""
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, []
        for _ in threads:
            self._calls.put(None)
        for thread in threads:
            thread.join(timeout)


def _run_one(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    context: contextvars.Context,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
) -> None:
    if future.cancelled():  # its caller is gone (as to_thread's executor skips such a call)
        return
    result: Any = None
    error: BaseException | None = None
    try:
        result = context.run(fn, *args)
    except BaseException as exc:  # the caller gets it, as from to_thread
        error = exc
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_complete, future, result, error)


def _complete(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled while the call ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
