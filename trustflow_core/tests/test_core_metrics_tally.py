"""When the gateway's request tally (roles/_request_tally.py ``RequestTally``) adds its counts
to the Prometheus metrics: after the poll that counted when the event loop goes idle, at most
``FLUSH_DELAY`` later while every iteration counts, and at once when asked (a scrape, a stop)."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from prometheus_client import REGISTRY

from trustflow_core.roles import _metrics
from trustflow_core.roles._request_tally import FLUSH_DELAY, RequestTally

pytestmark = pytest.mark.asyncio
_ROUTES = itertools.count()


def _answered(route: str) -> float:
    value = REGISTRY.get_sample_value(
        "trustflow_requests_total", {"role": "gateway", "route": route, "status": "200"}
    )
    return value or 0.0


def _route() -> str:
    return f"tally:/r{next(_ROUTES)}"


async def _next_iteration() -> None:
    """Return after the loop has polled once more (two ready-queue turns, as a callback
    scheduled by an I/O callback runs after that poll)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_a_count_is_added_once_the_loop_goes_idle() -> None:
    tally, route = RequestTally("gateway", "tally"), _route()
    tally.request(route, 200, 0.01, 3, 4)
    for _ in range(3):
        await _next_iteration()
    assert _answered(route) == 1


async def test_a_busy_loop_adds_its_counts_in_one_batch_per_interval() -> None:
    """One request counted in each of 50 iterations in a row: the metric does not move while
    they keep coming (a flush per iteration would move it every time) and holds all 50 once
    FLUSH_DELAY has passed."""
    tally, route = RequestTally("gateway", "tally"), _route()
    seen = []
    started = time.monotonic()
    for _ in range(50):
        tally.request(route, 200, 0.001, 1, 1)
        seen.append(_answered(route))
        await asyncio.sleep(0)
    assert time.monotonic() - started < FLUSH_DELAY  # the burst fits the interval
    assert set(seen[2:]) == {seen[2]} and seen[2] <= 2, seen
    await asyncio.sleep(FLUSH_DELAY * 1.5)
    assert _answered(route) == 50


async def test_a_scrape_or_a_stop_adds_what_is_pending_at_once() -> None:
    tally, route = RequestTally("gateway", "tally"), _route()
    for _ in range(5):
        tally.request(route, 200, 0.001, 1, 1)
        await asyncio.sleep(0)
    assert _answered(route) < 5
    _metrics.flush_tallies()  # what exposition() and the gateway's stop call
    assert _answered(route) == 5
    await asyncio.sleep(FLUSH_DELAY * 1.5)  # the pending look and timer add nothing
    assert _answered(route) == 5
    text, _ = _metrics.exposition()
    assert f'route="{route}",status="200"}} 5.0' in text.decode()
