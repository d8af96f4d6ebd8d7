"""Deadlines checked by one periodic timer, instead of a timer armed and cancelled per request.

A connection of the relay (:mod:`.relay`) or of the upstream client (:mod:`.h1client`) has at
most one deadline at a time (idle, request body, upstream answer). Arming it is an attribute
write and a set insertion; a :class:`Sweeper` wakes every :data:`TICK` seconds while anything is
armed and calls ``expired()`` on each item whose deadline has passed. A deadline therefore
fires up to :data:`TICK` seconds late, which no timeout of the gateway needs to be finer than.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

#: Seconds between two checks (the resolution of every deadline).
TICK: Final = 0.05


class Expiring(Protocol):
    """Anything with a ``deadline`` (event-loop time; 0: none) and an ``expired()`` action."""

    deadline: float

    def expired(self) -> None: ...


class Sweeper:
    """The armed items of one event loop (create it in the loop that serves them)."""

    def __init__(self, tick: float = TICK) -> None:
        self.tick = tick
        self._loop = asyncio.get_running_loop()
        self.time = self._loop.time
        self._armed: set[Expiring] = set()
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, item: Expiring, seconds: float) -> None:
        """Call ``item.expired()`` once ``seconds`` have passed, unless re-armed or disarmed
        (``item.deadline = 0``) before."""
        item.deadline = self.time() + seconds
        self._armed.add(item)
        if self._handle is None:
            self._handle = self._loop.call_later(self.tick, self._sweep)

    def forget(self, item: Expiring) -> None:
        """Drop ``item`` (its connection is gone)."""
        item.deadline = 0.0
        self._armed.discard(item)

    def _sweep(self) -> None:
        now = self.time()
        due = [i for i in self._armed if i.deadline <= now]
        for item in due:
            self._armed.discard(item)
            if item.deadline:  # 0: disarmed since
                item.deadline = 0.0
                item.expired()
        self._handle = self._loop.call_later(self.tick, self._sweep) if self._armed else None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed.clear()
