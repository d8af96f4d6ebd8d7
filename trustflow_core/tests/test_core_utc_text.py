"""``utc_seconds_text``: the same text as ``strftime`` for any moment, although it keeps the
last second's text."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from trustflow_core.utc_text import utc_seconds_text

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def test_the_text_is_strftime_of_the_moment_in_utc() -> None:
    rng = random.Random(18)
    base = datetime(1971, 1, 1, tzinfo=timezone.utc)
    moments = []
    for _ in range(2000):
        moment = base + timedelta(seconds=rng.uniform(0, 4e9), microseconds=rng.randrange(10**6))
        zone = timezone(timedelta(minutes=rng.randrange(-12 * 60, 14 * 60)))
        moments += [moment, moment.astimezone(zone)]
    # the same second twice (served from the kept entry), then the next one
    second = datetime(2026, 12, 3, 8, 0, 0, 999999, tzinfo=timezone.utc)
    moments += [second, second.replace(microsecond=0), second + timedelta(microseconds=1)]
    for moment in moments:
        assert utc_seconds_text(moment) == moment.astimezone(timezone.utc).strftime(FORMAT)


def test_a_naive_moment_is_utc_and_none_is_now() -> None:
    naive = datetime(2026, 12, 3, 8, 1, 2, 500000)
    assert utc_seconds_text(naive) == "2026-12-03T08:01:02Z"
    before = datetime.now(timezone.utc).replace(microsecond=0)
    now = datetime.strptime(utc_seconds_text(), FORMAT).replace(tzinfo=timezone.utc)
    after = datetime.now(timezone.utc)
    assert before <= now <= after
