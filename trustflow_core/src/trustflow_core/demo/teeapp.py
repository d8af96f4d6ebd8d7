"""The online demo's TEE app (same behaviour as ``examples/online/demo_http_server.py``):
``POST /teeapp`` answers ``I got your message: <body>\\n``."""

from __future__ import annotations

from aiohttp import web


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(
        body=b"I got your message: " + body + b"\n", content_type="application/json"
    )


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/teeapp", _echo)
    return app
