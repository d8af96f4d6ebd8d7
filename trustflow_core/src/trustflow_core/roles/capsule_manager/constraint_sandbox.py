"""The run-time budget of policy evaluation: costly constraints run in worker processes.

A CPU-bound CEL evaluation in a thread holds the GIL and slows every other RPC of the process,
and a thread cannot be stopped. So a constraint that is not cheap by construction
(:attr:`.constraint_cost.Shape.in_process`) is evaluated by one of :data:`WORKERS` worker
processes (``python -c``, lower CPU priority, address space capped). Each request's policy
evaluation has a wall-clock :class:`Budget`; waiting for a free worker and the evaluation both
spend it. A worker still busy when the budget runs out is killed and replaced on next use, and
the evaluation raises :class:`BudgetExceeded` (the rule fails closed). Starting a worker is not
charged to the budget. Workers exit when the server process's end of their pipe closes.

Protocol (one line each way per evaluation): the server writes ``{"e": expression, "r": r}`` as
one JSON line; the worker answers ``1`` (holds) or ``0`` (anything else, errors included). A new
worker first writes ``ready``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from ...errors import TrustflowError

log = logging.getLogger(__name__)

EVALUATION_BUDGET = 1.0  # seconds per request, all its resources and rules together
WORKERS = 2
WORKER_START_TIMEOUT = 30.0
WORKER_MEMORY = 512 * 2**20  # RLIMIT_AS of a worker
WORKER_NICENESS = 10
_WORKER_CODE = f"from {__name__} import worker_main; worker_main()"


class BudgetExceeded(TrustflowError):
    """The request's evaluation budget ran out, or no worker could answer: the rule fails."""


class Budget:
    """The wall-clock budget of one request's policy evaluation."""

    def __init__(self, seconds: float = EVALUATION_BUDGET) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self._reported = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def extend(self, seconds: float) -> None:
        self.deadline += seconds

    def check(self) -> None:
        """Raise :class:`BudgetExceeded` when nothing is left."""
        if self.remaining() <= 0:
            raise BudgetExceeded(f"policy evaluation exceeded its budget of {self.seconds:g}s")

    def first_report(self) -> bool:
        """True the first time only: a request logs its overrun once."""
        first, self._reported = not self._reported, True
        return first


class _Worker:
    """One worker process and its pipes."""

    def __init__(self) -> None:
        try:
            self.proc = subprocess.Popen(  # noqa: S603 -- our own interpreter and code
                [sys.executable, "-c", _WORKER_CODE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd="/",  # ``-c`` puts the working directory first on sys.path
            )
        except OSError as exc:
            raise BudgetExceeded(f"the policy evaluator could not start: {exc}") from None
        self.ready = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, payload: bytes, budget: Budget) -> bool:
        if not self.ready:
            started = time.monotonic()
            if self._read_line(started + WORKER_START_TIMEOUT) != b"ready":
                raise BudgetExceeded("the policy evaluator did not start")
            self.ready = True
            budget.extend(time.monotonic() - started)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(payload)
            self.proc.stdin.flush()
        except OSError:
            raise BudgetExceeded("the policy evaluator exited") from None
        answer = self._read_line(budget.deadline)
        if answer is None:
            raise BudgetExceeded("policy evaluation exceeded its budget; the evaluator was stopped")
        return answer == b"1"

    def _read_line(self, deadline: float) -> bytes | None:
        """The worker's next line, or None if none came by ``deadline``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 64)
            if not chunk:
                raise BudgetExceeded("the policy evaluator exited")
            line += chunk
        return line[:-1]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class Sandbox:
    """A pool of :data:`WORKERS` lazily started worker processes."""

    def __init__(self, workers: int = WORKERS) -> None:
        self._idle: queue.LifoQueue[_Worker | None] = queue.LifoQueue()
        for _ in range(workers):
            self._idle.put(None)
        self._lock = threading.Lock()
        self._all: set[_Worker] = set()

    def evaluate(self, expression: str, r: Mapping[str, Any], budget: Budget) -> bool:
        """Whether ``expression`` holds for ``r``; :class:`BudgetExceeded` when ``budget`` runs
        out first (the worker is then killed)."""
        payload = json.dumps({"e": expression, "r": r}, separators=(",", ":")) + "\n"
        try:
            worker = self._idle.get(timeout=max(budget.remaining(), 0.0))
        except queue.Empty:
            raise BudgetExceeded("no policy evaluator became free within the budget") from None
        try:
            if worker is None or not worker.alive():
                worker = self._start(worker)
            return worker.ask(payload.encode(), budget)
        except BaseException:
            if worker is not None:
                self._stop(worker)
            worker = None
            raise
        finally:
            self._idle.put(worker)

    def _start(self, dead: _Worker | None) -> _Worker:
        if dead is not None:
            self._stop(dead)
        worker = _Worker()
        with self._lock:
            self._all.add(worker)
        return worker

    def _stop(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)

    def close(self) -> None:
        """Stop every worker (at exit)."""
        with self._lock:
            workers, self._all = list(self._all), set()
        for worker in workers:
            worker.kill()


def worker_main() -> None:
    """The worker process: answer one line per request line until stdin closes."""
    import resource
    import signal

    from .constraint_eval import evaluate_cel

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's Ctrl-C is not ours
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = WORKER_MEMORY if hard == resource.RLIM_INFINITY else min(WORKER_MEMORY, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    os.nice(WORKER_NICENESS)
    evaluate_cel("true", {})  # builds the parser before saying ready
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            holds = evaluate_cel(request["e"], request["r"])
        except Exception:  # MemoryError and RecursionError included: the rule fails
            holds = False
        out.write(b"1\n" if holds else b"0\n")
        out.flush()


def _exit_with_parent(parent: int) -> None:
    """A worker busy with a costly evaluation does not read stdin: leave when the server is gone
    (even SIGKILLed) instead of computing for nobody."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
