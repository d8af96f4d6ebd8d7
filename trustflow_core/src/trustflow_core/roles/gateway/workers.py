"""Run the gateway in several forked processes that share the listening ports (SO_REUSEPORT);
the kernel spreads connections over them. The parent forwards SIGINT/SIGTERM to the workers
and exits with the first non-zero worker status."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable


def run_workers(count: int, serve: Callable[[bool], None]) -> None:
    """Fork ``count`` workers running ``serve(is_first)``; wait for all of them (POSIX only)."""
    children: list[int] = []
    for i in range(count):
        pid = os.fork()
        if pid == 0:  # worker
            code = 0
            try:
                serve(i == 0)
            except BaseException as exc:  # report, then leave without running parent code
                print(f"gateway worker {i}: {exc}", file=sys.stderr)
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    if status:
        raise SystemExit(status if status > 0 else 1)
