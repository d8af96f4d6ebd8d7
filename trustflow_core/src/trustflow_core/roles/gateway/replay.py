"""The replay cache of RFC 7516 envelopes: :class:`ReplayGuard` checks and records the ``iat`` and
``jti`` claims of each opened envelope (the rules are in :mod:`.freshness`). Compiled with the
gateway's request path (:mod:`.compiled`): it runs on every RFC envelope."""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from .freshness import FUTURE_SKEW, MAX_JTI_LENGTH, FreshnessConfig, NotFresh


class ReplayGuard:
    """Checks and records the freshness claims of opened envelopes (module docstring)."""

    def __init__(self, config: FreshnessConfig, clock: Callable[[], float] = time.time) -> None:
        self._mode = config.mode
        self._window = float(config.window)
        self._cache_size = config.cache_size
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._by_age: list[tuple[float, str]] = []  # heap of (iat, jti)
        self.floor = -math.inf

    def __len__(self) -> int:
        return len(self._seen)

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
        if isinstance(iat, bool) or not isinstance(iat, (int, float)) or not math.isfinite(iat):
            raise NotFresh("JWE protected header member 'iat' must be a number (NumericDate)")
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
            raise NotFresh(
                f"JWE protected header member 'jti' must be a string of 1..{MAX_JTI_LENGTH} "
                "characters"
            )
        now = self._clock()
        if iat < now - self._window:
            raise NotFresh(
                f"stale JWE: iat is {now - iat:.0f} s old, envelopes are accepted for "
                f"{self._window:g} s"
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
        horizon = now - self._window
        while self._by_age and self._by_age[0][0] < horizon:
            self._forget()
        if len(self._seen) >= self._cache_size:
            self.floor = max(self.floor, self._forget())
        self._seen[jti] = iat
        heapq.heappush(self._by_age, (iat, jti))

    def _forget(self) -> float:
        """Drop the entry with the oldest ``iat``; return that ``iat``."""
        iat, jti = heapq.heappop(self._by_age)
        del self._seen[jti]
        return iat
