"""Run a Data Capsule Proxy on 127.0.0.1 inside the current event loop (tests, demos,
benchmarks)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from ..manager import TrustflowPluginManager
from ..roles._server import start_site
from ..roles.data_capsule_proxy.app import create_app
from ..roles.data_capsule_proxy.settings import DataCapsuleProxySettings


@contextlib.asynccontextmanager
async def running_proxy(
    settings: DataCapsuleProxySettings, pm: TrustflowPluginManager
) -> AsyncIterator[str]:
    """Start the proxy on ``settings.host`` and a free port; yield its base URL."""
    runner, port = await start_site(create_app(settings, pm), settings.host, 0)
    try:
        yield f"http://{settings.host}:{port}"
    finally:
        await runner.cleanup()
