"""The gateway's per-request metrics, counted in plain numbers and added to Prometheus in
batches (:class:`RequestTally`). Compiled with the gateway's request path
(``roles/gateway/compiled.py``): it runs once per request."""

from __future__ import annotations

import asyncio
import bisect
from typing import Final

from prometheus_client import Counter, Histogram

from ._metrics import PROXY_BYTES, REQUEST_SECONDS, REQUESTS, register_tally

#: Longest a :class:`RequestTally` of a busy event loop keeps its counts before adding them to
#: the metrics (seconds).
FLUSH_DELAY: Final = 0.1
#: ``bisect.bisect_left`` under a final name (no globals lookup per request when compiled)
_bisect_left: Final = bisect.bisect_left


class _Pending:
    """One (route, status) of a :class:`RequestTally`: its metrics and what was counted
    since the last flush (kept from one flush to the next: nothing is allocated per batch)."""

    def __init__(self, requests: Counter, histogram: Histogram) -> None:
        self.requests = requests
        self.histogram = histogram
        self.count = 0
        self.seconds = 0.0
        #: count per index of an upper bound that was hit (not cumulative, as prometheus-client)
        self.buckets: dict[int, int] = {}


class RequestTally:
    """The requests of one hot path (a listener of the gateway), counted in plain numbers and
    added to :data:`~._metrics.REQUESTS`, :data:`~._metrics.REQUEST_SECONDS` and
    :data:`~._metrics.PROXY_BYTES` in batches instead of a locked update of four or five
    metrics per request.

    A batch is added as soon as an iteration of the event loop counts nothing after it (the
    loop has gone idle, or serves only other work), and at most :data:`FLUSH_DELAY` seconds
    after its first count while every iteration keeps counting (a busy loop pays for one
    flush per interval, not one per iteration); in the tally's thread
    :func:`~._metrics.exposition` adds it before it renders, and
    :func:`~._metrics.flush_tallies` when the serving loop stops. So a scrape answered by the
    process that counted sees every request answered before it, and one answered by another
    ``--workers`` process (multiprocess mode) sees them at most :data:`FLUSH_DELAY` later.
    The values are those of per-request updates: same series, same buckets; in multiprocess
    mode each flush writes them to the process's files. Create it in the event loop that
    counts; only that loop's thread may call :meth:`request`."""

    def __init__(self, role: str, listener: str) -> None:
        self.role = role
        self.listener = listener
        self._bounds: tuple[float, ...] = tuple(REQUEST_SECONDS._upper_bounds)
        self._series: dict[tuple[str, int], _Pending] = {}  # every (route, status) seen
        self._dirty: list[_Pending] = []  # those counted since the last flush
        self._upstream = self._downstream = 0
        self._bytes: dict[str, Counter] = {}  # per direction
        self._loop = asyncio.get_running_loop()
        self._scheduled = False
        self._counted = 0  # requests counted so far: tells a busy loop from an idle one
        self._batch = 0  # flushes so far: a look scheduled before the last flush is stale
        self._timer: asyncio.TimerHandle | None = None
        self._registration = register_tally(self.flush)  # held: registered while alive

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
        bucket = _bisect_left(self._bounds, seconds)
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
