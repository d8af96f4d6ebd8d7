"""Request ids: what an incoming ``x-request-id`` may be, and fresh ids for the rest.

Compiled with the gateway's request path (``roles/gateway/compiled.py``): the gateway takes or
makes one per request. :mod:`._logging` re-exports both functions for every role.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets

#: What an incoming request id may look like; anything else is replaced by a new id, so a
#: client cannot write arbitrary text (newlines, escapes, megabytes) into the logs.
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
#: The counter's 48 bits, and the bit above them: ``hex(_TOP | n)[3:]`` is ``n`` as 12 hex
#: digits with leading zeros, a third of the time of ``"%012x" % n``.
_MASK = (1 << 48) - 1
_TOP = 1 << 48

_id_prefix = ""
_id_count = itertools.count()


def _draw_id_prefix() -> None:
    global _id_prefix, _id_count
    _id_prefix = secrets.token_hex(10)
    _id_count = itertools.count()


_draw_id_prefix()
os.register_at_fork(after_in_child=_draw_id_prefix)


def new_request_id() -> str:
    """A fresh request id: 32 hex digits, a random prefix of the process (80 bits, drawn at
    start and again in a forked child) and a counter (48 bits), so ids are unique across
    processes and restarts without a ``getrandom`` per request. An id names a request in the
    logs; it is not secret nor unpredictable (clients choose their own ids anyway), and
    nothing may rely on it being so."""
    return _id_prefix + hex(_TOP | (next(_id_count) & _MASK))[3:]


def accept_request_id(incoming: str | None) -> str:
    """``incoming`` (an ``x-request-id`` value) when it is a well-formed id (at most 128
    characters of letters, digits and ``._:@/+=-``), else a new one."""
    if incoming and REQUEST_ID.fullmatch(incoming):
        return incoming
    return new_request_id()
