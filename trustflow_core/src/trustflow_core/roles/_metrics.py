"""Every Prometheus metric of the roles, defined once (docs/observability.md lists them).

The roles record into these through the small helpers below and never create metrics of
their own. Labels take only values from a fixed, small set: route templates, RPC names,
status codes, listener and cluster names of the config, platform names of installed verifiers,
check names, reasons written in the code. Never a uuid, a party id, a path of a request or a
message text: a label value built from request data is mapped to ``other`` first
(:func:`bounded`).

With ``PROMETHEUS_MULTIPROC_DIR`` set (see prometheus-client's multiprocess mode) the
processes of ``--workers`` write their values there and :func:`exposition` adds them up.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

NAMESPACE = "trustflow"
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_LABEL_VALUE = re.compile(r"[a-z0-9_.:/-]{1,64}")
OTHER = "other"

REQUESTS = Counter(
    "requests",
    "Requests answered, by role, route (HTTP route template, gateway route prefix or CM RPC) "
    "and status (HTTP status, or the CM's in-band status code).",
    ["role", "route", "status"],
    namespace=NAMESPACE,
)
REQUEST_SECONDS = Histogram(
    "request_duration_seconds",
    "Time to answer a request, by role, route and status.",
    ["role", "route", "status"],
    namespace=NAMESPACE,
)
ATTESTATION_VERDICTS = Counter(
    "attestation_verdicts",
    "Attestation reports checked, by role, platform, verdict (accepted, rejected) and the "
    "failed check ('' when accepted).",
    ["role", "platform", "verdict", "check"],
    namespace=NAMESPACE,
)
POLICY_REFUSALS = Counter(
    "policy_refusals",
    "Capsule Manager requests refused by the data policies, by RPC and reason.",
    ["rpc", "reason"],
    namespace=NAMESPACE,
)
KEY_RELEASES = Counter(
    "key_releases",
    "Data keys released by the Capsule Manager (one per key), by RPC.",
    ["rpc"],
    namespace=NAMESPACE,
)
JWE_FAILURES = Counter(
    "jwe_failures",
    "JWE envelopes refused, by role and cause.",
    ["role", "cause"],
    namespace=NAMESPACE,
)
PROXY_BYTES = Counter(
    "proxy_bytes",
    "Bytes relayed by the gateway, by listener and direction (upstream: client to app, "
    "downstream: app to client).",
    ["listener", "direction"],
    namespace=NAMESPACE,
)
CAPSULE_BYTES = Counter(
    "capsule_bytes",
    "Bytes the Data Capsule Proxy read from its sources and wrote to its destinations, by "
    "operation (get_input_data, put_result_data) and direction (read, written).",
    ["operation", "direction"],
    namespace=NAMESPACE,
)
DB_SECONDS = Histogram(
    "db_duration_seconds",
    "Capsule Manager database transactions, by operation (read, write, ping) and outcome "
    "(ok, error).",
    ["operation", "outcome"],
    namespace=NAMESPACE,
    buckets=DB_BUCKETS,
)
DB_UP = Gauge(
    "db_up",
    "1 while the Capsule Manager's last database check succeeded, else 0.",
    multiprocess_mode="min",
    namespace=NAMESPACE,
)
CM_CLIENT_REQUESTS = Counter(
    "cm_client_requests",
    "Calls of a Capsule Manager client (the Data Capsule Proxy, apps) to a Capsule Manager, by "
    "RPC and outcome (the in-band status code, or the gRPC status name when the call failed).",
    ["rpc", "outcome"],
    namespace=NAMESPACE,
)
CM_CLIENT_FAILOVERS = Counter(
    "cm_client_failovers",
    "Capsule Manager client calls re-sent to another replica after one was unreachable or did "
    "not answer in time (docs/failover.md), by RPC.",
    ["rpc"],
    namespace=NAMESPACE,
)
CM_CLIENT_SECONDS = Histogram(
    "cm_client_request_duration_seconds",
    "Time of a Capsule Manager client's calls, by RPC.",
    ["rpc"],
    namespace=NAMESPACE,
)


def bounded(value: str, allowed: frozenset[str] | None = None) -> str:
    """``value`` as a label value: itself when it is in ``allowed`` (or, without ``allowed``,
    a short lower-case token), else ``other``."""
    if allowed is not None:
        return value if value in allowed else OTHER
    return value if _LABEL_VALUE.fullmatch(value) else OTHER


@functools.lru_cache(maxsize=4096)
def child(metric: MetricWrapperBase, *labels: str) -> Any:
    """``metric.labels(*labels)``, kept: a labelled child lives as long as its parent (nothing
    here removes one), and ``labels`` takes a lock and checks every value on each call
    (~5 µs, several per request). Bounded, as every label value here is."""
    return metric.labels(*labels)


def observe_request(role: str, route: str, status: int | str, seconds: float) -> None:
    """Count one answered request and its duration."""
    status_text = str(status)
    child(REQUESTS, role, route, status_text).inc()
    child(REQUEST_SECONDS, role, route, status_text).observe(seconds)


def attestation_verdict(role: str, platform: str, check: str | None) -> None:
    """Count one attestation report: accepted when ``check`` is None, else rejected by the
    check of that name. ``platform`` must be bounded by the caller (an installed verifier's
    platform, or ``unknown``)."""
    if check is None:
        child(ATTESTATION_VERDICTS, role, platform, "accepted", "").inc()
    else:
        ATTESTATION_VERDICTS.labels(role, platform, "rejected", bounded(check)).inc()


def jwe_failure(role: str, cause: str) -> None:
    """Count one refused envelope."""
    JWE_FAILURES.labels(role, bounded(cause)).inc()


@contextmanager
def db_timer(operation: str) -> Iterator[None]:
    """Time the database work of the block (outcome ``error`` when it raises)."""
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    finally:
        child(DB_SECONDS, operation, outcome).observe(time.perf_counter() - started)


async def counted(chunks: AsyncIterable[bytes], counter: Counter) -> AsyncIterator[bytes]:
    """Pass ``chunks`` on, adding their sizes to ``counter`` (a labelled child)."""
    async for chunk in chunks:
        counter.inc(len(chunk))
        yield chunk


#: Longest a :class:`RequestTally` of a busy event loop keeps its counts before adding them to
#: the metrics (seconds).
FLUSH_DELAY = 0.1


class _Pending:
    """One (route, status) of a :class:`RequestTally`: its metrics and what was counted
    since the last flush (kept from one flush to the next: nothing is allocated per batch)."""

    __slots__ = ("buckets", "count", "histogram", "requests", "seconds")

    def __init__(self, requests: Counter, histogram: Histogram) -> None:
        self.requests = requests
        self.histogram = histogram
        self.count = 0
        self.seconds = 0.0
        #: count per index of an upper bound that was hit (not cumulative, as prometheus-client)
        self.buckets: dict[int, int] = {}


class RequestTally:
    """The requests of one hot path (a listener of the gateway), counted in plain numbers and
    added to :data:`REQUESTS`, :data:`REQUEST_SECONDS` and :data:`PROXY_BYTES` in batches
    instead of a locked update of four or five metrics per request.

    A batch is added as soon as an iteration of the event loop counts nothing after it (the
    loop has gone idle, or serves only other work), and at most :data:`FLUSH_DELAY` seconds
    after its first count while every iteration keeps counting (a busy loop pays for one
    flush per interval, not one per iteration); in the tally's thread :func:`exposition`
    adds it before it renders, and :func:`flush_tallies` when the serving loop stops. So a
    scrape answered by the process that counted sees every request answered before it, and
    one answered by another ``--workers`` process (multiprocess mode) sees them at most
    :data:`FLUSH_DELAY` later. The values are those of per-request updates: same series,
    same buckets; in multiprocess mode each flush writes them to the process's files. Create
    it in the event loop that counts; only that loop's thread may call :meth:`request`."""

    def __init__(self, role: str, listener: str) -> None:
        self.role = role
        self.listener = listener
        self._bounds: tuple[float, ...] = tuple(REQUEST_SECONDS._upper_bounds)
        self._series: dict[tuple[str, int], _Pending] = {}  # every (route, status) seen
        self._dirty: list[_Pending] = []  # those counted since the last flush
        self._upstream = self._downstream = 0
        self._bytes: dict[str, Counter] = {}  # per direction
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._scheduled = False
        self._counted = 0  # requests counted so far: tells a busy loop from an idle one
        self._batch = 0  # flushes so far: a look scheduled before the last flush is stale
        self._timer: asyncio.TimerHandle | None = None
        _TALLIES.add(self)

    def request(
        self, route: str, status: int, seconds: float, upstream: int, downstream: int
    ) -> None:
        """Count one answered request of ``route`` (a bounded label), its duration and the
        body bytes relayed each way (client to app: ``upstream``)."""
        entry = self._series.get((route, status))
        if entry is None:
            labels = (self.role, route, str(status))
            entry = self._series[route, status] = _Pending(
                REQUESTS.labels(*labels), REQUEST_SECONDS.labels(*labels)
            )
        if not entry.count:
            self._dirty.append(entry)
        entry.count += 1
        entry.seconds += seconds
        bucket = bisect_left(self._bounds, seconds)
        entry.buckets[bucket] = entry.buckets.get(bucket, 0) + 1
        self._upstream += upstream
        self._downstream += downstream
        self._counted += 1
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._look, self._batch, None)

    def _look(self, batch: int, mark: int | None) -> None:
        """Runs once the loop has polled after the first count of a batch, notes how many
        requests are counted by then (``mark``) and looks again after the next poll: nothing
        counted since means the loop went idle, and the batch is added now; a loop still
        counting is busy, and the batch is added :data:`FLUSH_DELAY` later."""
        if batch != self._batch:  # flushed meanwhile (a scrape): a new batch has its own look
            return
        if mark is None:
            self._loop.call_soon(self._look, batch, self._counted)
        elif self._counted == mark:
            self.flush()
        else:
            self._timer = self._loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Add what was counted since the last flush to the Prometheus metrics (their values
        directly, as ``inc()`` and ``observe()`` do after checks that hold here)."""
        self._scheduled = False
        self._batch += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        dirty, self._dirty = self._dirty, []
        for entry in dirty:
            entry.requests._value.inc(entry.count)
            # prometheus-client keeps a histogram's sum and per-bucket counts in these
            # values; adding a batch to them is what observe() does one value at a time
            histogram = entry.histogram
            histogram._sum.inc(entry.seconds)
            buckets = histogram._buckets
            for index, count in entry.buckets.items():
                buckets[index].inc(count)
            entry.count, entry.seconds = 0, 0.0
            entry.buckets.clear()
        if self._upstream:
            self._add_bytes("upstream", self._upstream)
            self._upstream = 0
        if self._downstream:
            self._add_bytes("downstream", self._downstream)
            self._downstream = 0

    def _add_bytes(self, direction: str, count: int) -> None:
        child = self._bytes.get(direction)
        if child is None:
            child = self._bytes[direction] = PROXY_BYTES.labels(self.listener, direction)
        child._value.inc(count)


_TALLIES: weakref.WeakSet[RequestTally] = weakref.WeakSet()


def flush_tallies() -> None:
    """Add the pending counts of every :class:`RequestTally` of the calling thread to the
    metrics (before a scrape renders them, and when a serving loop stops)."""
    thread = threading.get_ident()
    for tally in list(_TALLIES):
        if tally._thread == thread:
            tally.flush()


def exposition() -> tuple[bytes, str]:
    """The current values in the Prometheus text format, and its content type (every
    process's values in multiprocess mode)."""
    flush_tallies()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
