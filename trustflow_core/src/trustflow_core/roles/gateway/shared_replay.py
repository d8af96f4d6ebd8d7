"""One replay cache for all ``--workers`` of a gateway: :class:`SharedReplayCache`.

Each worker is a spawned interpreter (:mod:`..._workers`), and the kernel hands a connection to
any of them, so a replay cache per process would let a replay through whenever it reaches
another worker. The first process makes, per replay-protected JWE listener, an anonymous memory
file (``memfd``) holding a :class:`~.replay.ReplayTable`, the table's hash key and a
``multiprocessing`` lock; the handle travels to each worker inside the pickled service factory
(only while spawning: the file descriptor is passed the way ``multiprocessing`` passes
sockets, the lock as its own semaphore), and every worker maps the same memory. Nothing is
named in the file system, and the memory goes when the last worker ends.

Stays interpreted (not in :data:`.compiled.MODULES`): it is pickled.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import tempfile
from multiprocessing.reduction import DupFd
from typing import Any

from .replay import KEY_SIZE, ReplayTable, geometry


class SharedReplayCache:
    """A replay table of ``cache_size`` slots that the processes given this object share."""

    def __init__(self, cache_size: int) -> None:
        self.cache_size = cache_size
        self._key = os.urandom(KEY_SIZE)
        self._lock = multiprocessing.get_context("spawn").Lock()
        self._fd = _anonymous_file()
        os.ftruncate(self._fd, geometry(cache_size)[2])  # all zeros: an empty table
        self._table: ReplayTable | None = None

    def table(self) -> ReplayTable:
        """This process's view of the shared table (mapped on first use)."""
        if self._table is None:
            memory = mmap.mmap(self._fd, geometry(self.cache_size)[2])
            self._table = ReplayTable(memory, self.cache_size, self._key, self._lock)
        return self._table

    def __reduce__(self) -> tuple[Any, ...]:
        return _attach, (self.cache_size, self._key, self._lock, DupFd(self._fd))


def _anonymous_file() -> int:
    """A file descriptor of memory with no name: a ``memfd`` (Linux), else an unlinked
    temporary file."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("trustflow-replay-cache")
    handle, path = tempfile.mkstemp(prefix="trustflow-replay-")
    os.unlink(path)
    return handle


def _attach(cache_size: int, key: bytes, lock: Any, fd: Any) -> SharedReplayCache:
    """The cache as a spawned worker unpickles it: the parent's memory file, key and lock."""
    cache = SharedReplayCache.__new__(SharedReplayCache)
    cache.cache_size = cache_size
    cache._key = key
    cache._lock = lock
    cache._fd = fd.detach()
    cache._table = None
    return cache
