"""A loopback stand-in for the Hygon KDS (``GET /hsk_cek?snumber=<chip>``) for tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class KdsStandIn:
    """Serves ``bundles[chip]``; 404 for unknown chips. ``delay`` stalls every answer;
    ``chunk`` > 0 streams the body in pieces of that size."""

    bundles: Mapping[str, bytes]
    delay: float = 0.0
    chunk: int = 0
    requests: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        chip = request.query.get("snumber", "")
        self.requests.append(chip)
        if self.delay:
            await asyncio.sleep(self.delay)
        body = self.bundles.get(chip)
        if body is None:
            return web.Response(status=404, text=f"no certificate for {chip}")
        if not self.chunk:
            return web.Response(body=body, content_type="application/octet-stream")
        response = web.StreamResponse()
        await response.prepare(request)
        for start in range(0, len(body), self.chunk):
            await response.write(body[start : start + self.chunk])
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response


@asynccontextmanager
async def serve_kds(stand_in: KdsStandIn) -> AsyncIterator[KdsStandIn]:
    """Run ``stand_in`` on 127.0.0.1 with a free port; sets ``stand_in.url``."""
    app = web.Application()
    app.router.add_get("/hsk_cek", stand_in.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        stand_in.url = f"http://127.0.0.1:{port}"
        yield stand_in
    finally:
        await runner.cleanup()
