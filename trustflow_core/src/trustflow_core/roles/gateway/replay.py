"""The replay cache of RFC 7516 envelopes: :class:`ReplayGuard` checks the ``iat`` and ``jti``
claims of each opened envelope (the rules are in :mod:`.freshness`) and records them in a
:class:`ReplayTable`. Compiled with the gateway's request path (:mod:`.compiled`): it runs on
every RFC envelope.

**The table** is a fixed block of memory, so that the ``--workers`` of one gateway can share it
(:mod:`.shared_replay` maps one block into every worker, with one lock): ``cache_size`` slots
in buckets of :data:`MAX_WIDTH`. A keyed BLAKE2b-128 hash of the ``jti`` (the key is random
per gateway, so nobody can aim ids at one bucket) picks its bucket (first half) and is its
*tag* there (second half); a slot holds a tag and the ``iat`` it came with. A bucket writes
its slots in turn, each new id over the one it has held longest. An id whose ``iat`` left the
window no longer counts; overwriting one that still counts raises the bucket's *floor* to its
``iat``, and an envelope whose ``iat`` is at or below its bucket's floor is refused. So an
evicted id can never come back (its ``iat`` is at or below the floor of the bucket its hash
picks), and a flood of fresh envelopes shortens the effective window instead of making the
guard forget an id it would still accept. All bytes zero is an empty table (``iat`` 0.0 is
older than any window).

Layout of a bucket of ``width`` slots (little-endian): the floor (double), the next slot to
write (unsigned 64-bit), ``width`` ``iat`` values (doubles), ``width`` tags (:data:`TAG_SIZE`
bytes each).
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from .freshness import FUTURE_SKEW, MAX_JTI_LENGTH, FreshnessConfig, NotFresh

TAG_SIZE: Final = 8
KEY_SIZE: Final = 16
MAX_WIDTH: Final = 16
#: Seconds a worker waits for the shared table's lock before refusing the envelope (503): the
#: lock is held for microseconds, unless a worker died holding it (the gateway then stops).
LOCK_TIMEOUT: Final = 2.0

_DOUBLE: Final = struct.Struct("<d")
_HEADER: Final = struct.Struct("<dQ")  # a bucket's floor, and the slot to write next
_blake2b: Final = hashlib.blake2b
_NOT_A_DATE: Final = "JWE protected header member 'iat' must be a number (NumericDate)"


class Lock(Protocol):
    """What the table needs of a lock shared by processes (``multiprocessing.Lock``)."""

    def acquire(self, block: bool, timeout: float) -> bool: ...

    def release(self) -> None: ...


def geometry(cache_size: int) -> tuple[int, int, int]:
    """``(buckets, width, bytes)`` of a table of ``cache_size`` slots (``cache_size`` ≥ 1)."""
    width = min(MAX_WIDTH, cache_size)
    buckets = -(-cache_size // width)
    return buckets, width, buckets * (_HEADER.size + (8 + TAG_SIZE) * width)


class ReplayTable:
    """The ids of accepted envelopes in ``buffer`` (memory of :func:`geometry`'s size, all
    zeros when new; module docstring), hashed with ``key``; ``lock`` (None: one process)
    serialises :meth:`add` between processes. Two ids of one bucket share a tag with a
    chance of 1 in 2**64 per pair (the later one would be refused as a replay)."""

    def __init__(
        self, buffer: mmap.mmap, cache_size: int, key: bytes, lock: Lock | None = None
    ) -> None:
        buckets, width, size = geometry(cache_size)
        if len(buffer) < size or len(key) != KEY_SIZE:
            raise ValueError("replay table: buffer or key of the wrong size")
        self._buffer = buffer
        self._buckets = buckets
        self._width = width
        self._stride = size // buckets
        self._bucket = struct.Struct(f"<dQ{width}d")  # _HEADER, then each slot's iat
        self._hasher = _blake2b(digest_size=16, key=key)
        self._lock = lock

    @classmethod
    def private(cls, cache_size: int) -> ReplayTable:
        """A table for one process (anonymous memory: pages are taken as buckets fill)."""
        memory = mmap.mmap(-1, geometry(cache_size)[2])
        return cls(memory, cache_size, os.urandom(KEY_SIZE))

    def add(self, jti: str, iat: float, horizon: float) -> None:
        """Record ``jti`` with ``iat``, unless it is already recorded with an ``iat`` at or
        after ``horizon`` (:class:`NotFresh`, 409) or ``iat`` is at or below its bucket's floor
        (400)."""
        hasher = self._hasher.copy()
        hasher.update(jti.encode())
        digest = hasher.digest()
        base = int.from_bytes(digest[:8], "little") % self._buckets * self._stride
        tag = digest[8:]
        lock = self._lock
        if lock is None:
            self._add(tag, base, iat, horizon)
            return
        if not lock.acquire(True, LOCK_TIMEOUT):
            raise NotFresh(
                "the replay cache shared by the workers did not answer",
                503,
                "replay_cache_unavailable",
            )
        try:
            self._add(tag, base, iat, horizon)
        finally:
            lock.release()

    def _add(self, tag: bytes, base: int, iat: float, horizon: float) -> None:
        buffer = self._buffer
        width = self._width
        values = self._bucket.unpack_from(buffer, base)  # floor, next slot, each slot's iat
        tags = base + self._bucket.size
        end = tags + TAG_SIZE * width
        at = buffer.find(tag, tags, end)
        while at >= 0:
            slot, misaligned = divmod(at - tags, TAG_SIZE)
            if not misaligned and values[2 + slot] >= horizon:
                raise NotFresh("replayed JWE: this jti was already accepted", 409, "replay")
            at = buffer.find(tag, at + 1, end)
        floor: float = values[0]
        if iat <= floor:
            raise NotFresh(
                "JWE iat is older than the replay cache can vouch for while it is full; "
                "send a newly sealed envelope",
                cause="replay_cache_full",
            )
        victim: int = values[1] % width  # the slot written longest ago
        held: float = values[2 + victim]
        if held >= horizon:  # a live id leaves: nothing at or below its iat gets in again
            floor = max(floor, held)
        _HEADER.pack_into(buffer, base, floor, victim + 1)
        _DOUBLE.pack_into(buffer, base + _HEADER.size + 8 * victim, iat)
        start = tags + TAG_SIZE * victim
        buffer[start : start + TAG_SIZE] = tag


class ReplayGuard:
    """Checks and records the freshness claims of opened envelopes (module docstring); ``table``
    (default: a private one of ``config.cache_size`` slots) is where the ids are kept."""

    def __init__(
        self,
        config: FreshnessConfig,
        table: ReplayTable | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._mode = config.mode
        self._window = float(config.window)
        self._clock = clock
        if table is None and config.mode != "off":
            table = ReplayTable.private(config.cache_size)
        self._table = table

    def check(self, profile: str, header: Mapping[str, Any]) -> None:
        """Refuse (:class:`NotFresh`) or accept and remember one opened envelope."""
        mode = self._mode
        if mode == "off":
            return
        if profile != "rfc":
            if mode == "required":
                raise NotFresh(
                    "this listener requires replay-protected envelopes: the RFC 7516 profile "
                    "(Content-Type: application/jose+json) with iat and jti in the protected header"
                )
            return
        iat, jti = header.get("iat"), header.get("jti")
        if iat is None and jti is None and mode == "optional":
            return
        if isinstance(iat, bool) or not isinstance(iat, (int, float)):
            raise NotFresh(_NOT_A_DATE)
        try:
            moment = float(iat)
        except OverflowError:  # an integer beyond every float
            moment = math.inf
        if not math.isfinite(moment):
            raise NotFresh(_NOT_A_DATE)
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
            raise NotFresh(
                f"JWE protected header member 'jti' must be a string of 1..{MAX_JTI_LENGTH} "
                "characters"
            )
        now = self._clock()
        horizon = now - self._window
        if moment < horizon:
            raise NotFresh(
                f"stale JWE: iat is {now - moment:.0f} s old, envelopes are accepted for "
                f"{self._window:g} s"
            )
        if moment > now + FUTURE_SKEW:
            raise NotFresh(f"JWE iat lies {moment - now:.0f} s in the future")
        table = self._table
        assert table is not None  # made for every mode but "off"
        table.add(jti, moment, horizon)
