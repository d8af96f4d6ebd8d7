"""Replay protection for RFC 7516 envelopes: ``iat`` and ``jti`` in the protected header.

The upstream JWE dialect does not authenticate its protected header
(docs/compat.md#jwe-aad-is-the-aad-member), so it cannot carry freshness claims and is left exactly
as upstream has it: a captured upstream envelope can be resent. In the RFC profile every header byte
is authenticated, and our client (``trustflow_channel_jwe``) writes ``iat`` (seconds since the
epoch) and ``jti`` (a random id) into every envelope it seals. After an envelope has opened,
:class:`ReplayGuard` checks them:

* ``off``: nothing is checked.
* ``optional`` (default): an RFC envelope that carries ``iat``/``jti`` is checked; one without
  them, and every upstream-profile envelope, passes unchecked.
* ``required``: only RFC envelopes with both claims are accepted.

Checked means: ``iat`` not older than ``window`` seconds nor more than :data:`FUTURE_SKEW`
seconds ahead, and ``jti`` not seen before within the window. The cache of seen ids is bounded
(``cache_size``): an entry leaves when its ``iat`` falls out of the window. When the cache is
full, the entry with the oldest ``iat`` is evicted and the guard's *floor* rises to that
``iat``: from then on any envelope with ``iat`` at or below the floor is refused as too old.
So a flood of fresh envelopes can shorten the effective window but never makes the guard
forget an id it would still accept, and honest clients sending fresh envelopes keep getting
through.

The cache is per process: with ``trustflow gateway --workers N`` a replay that the kernel
hands to another worker is not recognised (see docs/online.md).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import TrustflowError

MODES = ("off", "optional", "required")
DEFAULT_MODE = "optional"
DEFAULT_WINDOW = 300.0
DEFAULT_CACHE_SIZE = 100_000
#: Seconds an ``iat`` may lie in the future (clock skew between client and gateway).
FUTURE_SKEW = 60.0
MAX_JTI_LENGTH = 128


@dataclass(frozen=True)
class FreshnessConfig:
    """``mode`` (one of :data:`MODES`), ``window`` seconds, ``cache_size`` remembered ids."""

    mode: str = DEFAULT_MODE
    window: float = DEFAULT_WINDOW
    cache_size: int = DEFAULT_CACHE_SIZE


DEFAULT_FRESHNESS = FreshnessConfig()


class NotFresh(TrustflowError):
    """The envelope is refused; ``status`` is the HTTP status, ``str()`` the client message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ReplayGuard:
    """Checks and records the freshness claims of opened envelopes (module docstring)."""

    def __init__(self, config: FreshnessConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._by_age: list[tuple[float, str]] = []  # heap of (iat, jti)
        self.floor = -math.inf

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, profile: str, header: Mapping[str, Any]) -> None:
        """Refuse (:class:`NotFresh`) or accept and remember one opened envelope."""
        mode = self.config.mode
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
        if isinstance(iat, bool) or not isinstance(iat, (int, float)) or not math.isfinite(iat):
            raise NotFresh("JWE protected header member 'iat' must be a number (NumericDate)")
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
            raise NotFresh(
                f"JWE protected header member 'jti' must be a string of 1..{MAX_JTI_LENGTH} "
                "characters"
            )
        now = self._clock()
        if iat < now - self.config.window:
            raise NotFresh(
                f"stale JWE: iat is {now - iat:.0f} s old, envelopes are accepted for "
                f"{self.config.window:g} s"
            )
        if iat > now + FUTURE_SKEW:
            raise NotFresh(f"JWE iat lies {iat - now:.0f} s in the future")
        if jti in self._seen:
            raise NotFresh("replayed JWE: this jti was already accepted", status=409)
        if iat <= self.floor:
            raise NotFresh(
                "JWE iat is older than the replay cache can vouch for while it is full; "
                "send a newly sealed envelope"
            )
        self._remember(iat, jti, now)

    def _remember(self, iat: float, jti: str, now: float) -> None:
        horizon = now - self.config.window
        while self._by_age and self._by_age[0][0] < horizon:
            self._forget()
        if len(self._seen) >= self.config.cache_size:
            self.floor = max(self.floor, self._forget())
        self._seen[jti] = iat
        heapq.heappush(self._by_age, (iat, jti))

    def _forget(self) -> float:
        """Drop the entry with the oldest ``iat``; return that ``iat``."""
        iat, jti = heapq.heappop(self._by_age)
        del self._seen[jti]
        return iat
