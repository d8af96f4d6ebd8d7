"""Run a Capsule Manager on its own event loop in a background thread (tests, benchmarks,
embedding in synchronous programs)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ..roles.capsule_manager.server import CapsuleManager
from ..roles.capsule_manager.settings import CMSettings


class BackgroundCapsuleManager:
    """``with BackgroundCapsuleManager(settings) as cm: ... cm.target ...``"""

    def __init__(self, settings: CMSettings, *, pm: Any = None, start_timeout: float = 60) -> None:
        self.settings = settings
        self._pm = pm
        self._timeout = start_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.cm: CapsuleManager | None = None
        self.port: int | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> BackgroundCapsuleManager:
        self._thread.start()
        self.cm = CapsuleManager(self.settings, pm=self._pm)
        future = asyncio.run_coroutine_threadsafe(self.cm.start(), self._loop)
        try:
            self.port = future.result(self._timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.cm is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self.cm.stop(0.5), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread.is_alive():
            self._thread.join(30)
        self._loop.close()

    def __enter__(self) -> BackgroundCapsuleManager:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
