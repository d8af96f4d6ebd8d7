"""One SQLite writer at a time, across the threads of a process and the ``--workers``
processes that share the database file.

SQLite lets one write transaction run at a time; the others wait in its busy handler, which
polls with sleeps growing to 100 ms. Two CM workers writing concurrently then saw p99 latencies
of 300 to 600 ms for CreateDataKeys. A blocking ``flock`` on a lock file beside the database hands
the turn over as soon as it is free. Without ``fcntl`` (Windows), or for a database that is not
a file, only the threads of this process are serialized and SQLite's busy handler does the rest.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


class WriterLock:
    """A context manager: held for the whole of one write transaction."""

    def __init__(self, database: str | None) -> None:
        self._threads = threading.Lock()
        self._fd: int | None = None
        if fcntl is not None and database and database != ":memory:":
            path = Path(database).with_name(Path(database).name + ".writer-lock")
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def __enter__(self) -> WriterLock:
        self._threads.acquire()
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._threads.release()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
