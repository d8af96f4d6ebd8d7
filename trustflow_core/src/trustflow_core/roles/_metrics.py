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

import functools
import os
import re
import threading
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
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


class _Flusher:
    """What :func:`flush_tallies` calls for one tally: its ``flush`` and its thread."""

    __slots__ = ("__weakref__", "flush", "thread")

    def __init__(self, flush: Callable[[], None]) -> None:
        self.flush = flush
        self.thread = threading.get_ident()


_TALLIES: weakref.WeakSet[_Flusher] = weakref.WeakSet()


def register_tally(flush: Callable[[], None]) -> object:
    """Have :func:`flush_tallies` call ``flush`` when it runs in the calling thread, for as long
    as the returned handle lives (a tally keeps it: the two are freed together)."""
    handle = _Flusher(flush)
    _TALLIES.add(handle)
    return handle


def flush_tallies() -> None:
    """Add the pending counts of every request tally (:mod:`._request_tally`) of the calling
    thread to the metrics (before a scrape renders them, and when a serving loop stops)."""
    thread = threading.get_ident()
    for handle in list(_TALLIES):
        if handle.thread == thread:
            handle.flush()


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
