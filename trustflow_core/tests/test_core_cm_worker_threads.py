"""The CM's worker threads (``worker_threads.py``): what ``asyncio.to_thread`` guaranteed the
handlers still holds (context, exceptions, cancelled calls not run, a clean close)."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading

import pytest

from trustflow_core.roles._thread_names import name_native_thread
from trustflow_core.roles.capsule_manager.worker_threads import WorkerThreads

pytestmark = pytest.mark.asyncio
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


async def test_runs_in_another_thread_with_the_callers_context() -> None:
    threads = WorkerThreads("t", 2)
    try:
        request_id.set("req-1")
        name, seen = await threads.run(lambda: (threading.current_thread().name, request_id.get()))
        assert name.startswith("t-") and name != threading.current_thread().name
        assert seen == "req-1"
    finally:
        threads.close(5)


async def test_the_callers_exception_is_raised_in_the_caller() -> None:
    threads = WorkerThreads("t", 1)

    def fail(text: str) -> None:
        raise ValueError(text)

    try:
        with pytest.raises(ValueError, match="refused"):
            await threads.run(fail, "refused")
        assert await threads.run(lambda x: x + 1, 1) == 2  # the thread survived it
    finally:
        threads.close(5)


async def test_a_call_cancelled_before_a_thread_took_it_is_not_run() -> None:
    threads = WorkerThreads("t", 1)
    release = threading.Event()
    ran: list[str] = []
    try:
        busy = asyncio.ensure_future(threads.run(release.wait, 5))
        queued = asyncio.ensure_future(threads.run(ran.append, "queued"))
        await asyncio.sleep(0)  # both calls are queued; the one thread waits in the first
        queued.cancel()
        release.set()
        assert await busy is True
        assert await threads.run(ran.append, "after") is None
        assert ran == ["after"]
        assert queued.cancelled()
    finally:
        threads.close(5)


async def test_close_ends_the_threads_and_refuses_new_calls() -> None:
    threads = WorkerThreads("closing", 3)
    await threads.run(lambda: None)
    started = [t for t in threading.enumerate() if t.name.startswith("closing-")]
    assert len(started) == 3
    threads.close(5)
    assert not any(t.is_alive() for t in started)
    with pytest.raises(RuntimeError, match="closed"):
        await threads.run(lambda: None)


def _native_name(thread: threading.Thread) -> str:
    with open(f"/proc/self/task/{thread.native_id}/comm", encoding="utf-8") as comm:
        return comm.read().rstrip("\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread names in /proc")
async def test_worker_threads_carry_their_names_at_the_os_level() -> None:
    """``top -H``, perf and the benchmarks' per-thread CPU tell the workers apart."""
    threads = WorkerThreads("cm-worker", 1)
    try:
        thread = await threads.run(threading.current_thread)
        assert _native_name(thread) == "cm-worker-0"
        assert _native_name(threading.main_thread()) != "cm-worker-0"
    finally:
        threads.close(5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread names in /proc")
async def test_a_long_name_is_cut_to_what_the_kernel_keeps_never_inside_a_character() -> None:
    seen: list[str] = []

    def run() -> None:
        name_native_thread()
        seen.append(_native_name(threading.current_thread()))

    for name, kept in (("abcdefghijklmné", "abcdefghijklmn"), ("x" * 20, "x" * 15)):
        thread = threading.Thread(target=run, name=name)
        thread.start()
        thread.join(5)
        assert seen.pop() == kept
