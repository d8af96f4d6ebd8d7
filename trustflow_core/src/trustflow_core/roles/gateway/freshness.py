"""Replay protection for RFC 7516 envelopes: ``iat`` and ``jti`` in the protected header.

The upstream JWE dialect does not authenticate its protected header
(docs/compat.md#jwe-aad-is-the-aad-member), so it cannot carry freshness claims and is left exactly
as upstream has it: a captured upstream envelope can be resent. In the RFC profile every header byte
is authenticated, and our client (``trustflow_channel_jwe``) writes ``iat`` (seconds since the
epoch) and ``jti`` (a random id) into every envelope it seals. After an envelope has opened,
:class:`~.replay.ReplayGuard` checks them:

* ``off``: nothing is checked.
* ``optional`` (default): an RFC envelope that carries ``iat``/``jti`` is checked; one without
  them, and every upstream-profile envelope, passes unchecked.
* ``required``: only RFC envelopes with both claims are accepted.

Checked means: ``iat`` not older than ``window`` seconds nor more than :data:`FUTURE_SKEW`
seconds ahead, and ``jti`` not seen before within the window. The cache of seen ids is bounded
(``cache_size`` slots, in buckets): an entry leaves when its ``iat`` falls out of the window.
When an id's bucket is full, the entry it has held longest is evicted and the bucket's
*floor* rises to that entry's ``iat``: from then on any envelope of that bucket with ``iat`` at
or below the floor is refused as too old. So a flood of fresh envelopes can shorten the effective
window but never makes the guard forget an id it would still accept, and honest clients
sending fresh envelopes keep getting through (:mod:`.replay`).

With ``trustflow gateway --workers N`` every worker uses the same cache
(:mod:`.shared_replay`), so a replay is refused whichever worker receives it.

This module holds the settings and the refusal; the guard, on every envelope's path, is compiled
with the gateway's request path (:mod:`.replay`), while :class:`FreshnessConfig` stays
interpreted: it is pickled to spawned workers, which a frozen dataclass compiled by mypyc cannot
be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ...errors import TrustflowError

MODES = ("off", "optional", "required")
DEFAULT_MODE = "optional"
DEFAULT_WINDOW = 300.0
DEFAULT_CACHE_SIZE = 1_000_000
#: Seconds an ``iat`` may lie in the future (clock skew between client and gateway).
FUTURE_SKEW: Final = 60.0
MAX_JTI_LENGTH: Final = 128


@dataclass(frozen=True)
class FreshnessConfig:
    """``mode`` (one of :data:`MODES`), ``window`` seconds, ``cache_size`` remembered ids."""

    mode: str = DEFAULT_MODE
    window: float = DEFAULT_WINDOW
    cache_size: int = DEFAULT_CACHE_SIZE


DEFAULT_FRESHNESS = FreshnessConfig()


class NotFresh(TrustflowError):
    """The envelope is refused; ``status`` is the HTTP status, ``str()`` the client message,
    ``cause`` the metrics label (``jwe_filter.CAUSES``)."""

    def __init__(self, message: str, status: int = 400, cause: str = "not_fresh") -> None:
        super().__init__(message)
        self.status = status
        self.cause = cause
