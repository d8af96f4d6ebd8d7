"""RFC 3339 UTC timestamps at second resolution (``2026-12-03T08:00:00Z``), as the policy
``env.request_time`` and the verified time of a report carry them.

Formatting one costs ~10 µs (``strftime``) and a busy server formats the same second hundreds of
times; the last second's text is kept (one entry: a tuple swapped atomically, so any thread
may call this)."""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone

_last: tuple[int, str] = (-1, "")


def utc_seconds_text(moment: datetime | None = None) -> str:
    """``moment`` (now when None; a naive datetime is taken as UTC) in UTC as
    ``YYYY-MM-DDTHH:MM:SSZ``, the fraction of a second dropped (as ``strftime`` does)."""
    if moment is None:
        seconds = math.floor(time.time())
    else:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        seconds = math.floor(moment.timestamp())
    last = _last
    if last[0] == seconds:
        return last[1]
    text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    _set_last((seconds, text))
    return text


def _set_last(entry: tuple[int, str]) -> None:
    global _last
    _last = entry
