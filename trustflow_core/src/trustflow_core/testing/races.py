"""Race a path-confinement check: a thread keeps exchanging two paths atomically.

``exchanging(a, b)`` swaps the directory entries ``a`` and ``b`` (for example a real directory
and a symbolic link to a directory outside a root) with Linux's
``renameat2(RENAME_EXCHANGE)`` as fast as it can, so at every instant each name exists and is
one of the two. Code that checks a path and then opens it by name meets both states. Skips the
test where the C library or the file system lacks ``renameat2`` exchange.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

AT_FDCWD = -100
RENAME_EXCHANGE = 2


class Exchanger:
    """The running swapper: ``swaps`` done so far, ``error`` if it stopped on one."""

    def __init__(self, a: Path, b: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "renameat2"):
            pytest.skip("the C library has no renameat2")
        self._renameat2 = libc.renameat2
        self._renameat2.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_uint,
        ]
        self._a, self._b = os.fsencode(a), os.fsencode(b)
        self.swaps = 0
        self.error: OSError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="exchanger", daemon=True)

    def exchange(self) -> None:
        if self._renameat2(AT_FDCWD, self._a, AT_FDCWD, self._b, RENAME_EXCHANGE) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self.swaps += 1

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.exchange()
        except OSError as exc:
            self.error = exc

    def start(self) -> None:
        try:
            self.exchange()
            self.exchange()
        except OSError as exc:
            if exc.errno in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                pytest.skip(f"renameat2(RENAME_EXCHANGE) is not available here: {exc}")
            raise
        self._thread.start()

    def stop(self) -> None:
        """Stop swapping and leave both names as they were before :meth:`start`."""
        self._stop.set()
        self._thread.join()
        if self.swaps % 2:
            self.exchange()


@contextlib.contextmanager
def exchanging(a: Path, b: Path) -> Iterator[Exchanger]:
    """Exchange ``a`` and ``b`` continuously while the block runs; see the module docstring."""
    swapper = Exchanger(a, b)
    swapper.start()
    try:
        yield swapper
    finally:
        swapper.stop()
    assert swapper.error is None, f"the exchanger failed: {swapper.error}"
