"""Request ids: what an incoming ``x-request-id`` may be, and fresh ids for the rest.

Compiled with the gateway's request path (``roles/gateway/compiled.py``): the gateway takes or
makes one per request. :mod:`._logging` re-exports both functions for every role.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
from typing import Final

#: What an incoming request id may look like; anything else is replaced by a new id, so a
#: client cannot write arbitrary text (newlines, escapes, megabytes) into the logs.
REQUEST_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
#: The counter's 48 bits; the bit above them (``hex(_TOP | n)[3:]`` is ``n`` as 12 hex digits
#: with leading zeros); two hex digits of each byte value.
_MASK: Final = (1 << 48) - 1
_TOP: Final = 1 << 48
_HEX2: Final = tuple(f"{value:02x}" for value in range(256))


class _Ids:
    """The process's id state: a random prefix, a counter, and (n >> 16, the id's first 28
    hex digits) of the last id made, so that its last four digits are two table lookups (a new
    id costs a third of ``"%s%012x" % (prefix, n)`` in the compiled build). One instance,
    reached through a final name: the compiled build reads it without a globals lookup."""

    prefix: str
    count: itertools.count[int]
    block: tuple[int, str]

    def __init__(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        """A new prefix and a counter from 0 (at start, and in a forked child)."""
        self.prefix = secrets.token_hex(10)
        self.count = itertools.count()
        self.block = (-1, "")


_IDS: Final = _Ids()
os.register_at_fork(after_in_child=_IDS.redraw)


def new_request_id() -> str:
    """A fresh request id: 32 hex digits, a random prefix of the process (80 bits, drawn at
    start and again in a forked child) and a counter (48 bits), so ids are unique across
    processes and restarts without a ``getrandom`` per request. An id names a request in the
    logs; it is not secret nor unpredictable (clients choose their own ids anyway), and
    nothing may rely on it being so."""
    ids = _IDS
    n = next(ids.count) & _MASK
    block = ids.block  # read once: another thread may replace it meanwhile
    if block[0] != n >> 16:
        block = ids.block = (n >> 16, ids.prefix + hex(_TOP | n)[3:11])
    return block[1] + _HEX2[(n >> 8) & 255] + _HEX2[n & 255]


def accept_request_id(incoming: str | None) -> str:
    """``incoming`` (an ``x-request-id`` value) when it is a well-formed id (at most 128
    characters of letters, digits and ``._:@/+=-``), else a new one."""
    if incoming and REQUEST_ID.fullmatch(incoming):
        return incoming
    return new_request_id()
