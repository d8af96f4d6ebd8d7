"""Give the calling thread its Python name at the operating-system level too, so that
``top -H``, ``ps -L``, ``/proc/<pid>/task/<tid>/comm``, perf and the benchmarks' per-thread
CPU accounting tell a role's threads apart (Python before 3.14 leaves every thread named after
the process).

Linux only (``prctl(PR_SET_NAME)``, which names the calling thread; at most 15 bytes are kept):
elsewhere, or when the C library does not offer ``prctl``, nothing happens. A name is never
needed for correctness, so no failure here is raised.
"""

from __future__ import annotations

import ctypes
import sys
import threading

#: ``PR_SET_NAME`` from ``<linux/prctl.h>``.
_PR_SET_NAME = 15
#: The kernel keeps 15 bytes of a thread name (16 with the terminating NUL).
MAX_NAME_BYTES = 15


def _load_prctl() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def name_native_thread(name: str | None = None) -> None:
    """Set the calling thread's OS-level name to ``name`` (default: its ``threading`` name),
    cut to :data:`MAX_NAME_BYTES` bytes of UTF-8 (never inside a character)."""
    if _prctl is None:
        return
    text = threading.current_thread().name if name is None else name
    raw = text.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", "ignore").encode("utf-8")
    _prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)  # type: ignore[operator]
