"""The interact demo's TEE app (same behaviour as ``examples/interact/app.py`` and the upstream
``interact-sample`` apps): ``POST /teeapp`` answers ``Hi, I'm <name>. I got your message:
<body>\\n``; :func:`say_hello` posts ``{"message": "Hello from <name>!"}`` to the peer through
the local gateway's plain egress listener and returns the ``response:  ...`` line upstream
prints."""

from __future__ import annotations

import json

import aiohttp
from aiohttp import web

TIMEOUT = 10.0


def create_app(name: str) -> web.Application:
    """The app of party ``name`` (``Bob``, ``Carol``)."""

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(
            body=f"Hi, I'm {name}. I got your message: ".encode() + body + b"\n",
            content_type="text/plain",
        )

    app = web.Application()
    app.router.add_post("/teeapp", answer)
    return app


def hello(name: str) -> bytes:
    """``{"message": "Hello from <name>!"}`` as upstream's ``json.dumps`` writes it."""
    return json.dumps({"message": f"Hello from {name}!"}).encode()


async def say_hello(name: str, egress_url: str, timeout: float = TIMEOUT) -> str:
    """POST the hello of ``name`` to ``egress_url`` (``http://host:port/teeapp``); return
    ``response:  <peer's answer>`` (upstream ``print("response: ", text)``), raising
    :class:`aiohttp.ClientError` on transport failures or a non-200 answer."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(timeout=client_timeout, connector=connector) as http,
        http.post(
            egress_url, data=hello(name), headers={"Connection": "close"}, raise_for_status=True
        ) as reply,
    ):
        text = await reply.text()
    return f"response:  {text.rstrip(chr(10))}"
