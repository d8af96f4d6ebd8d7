"""The admin listener of every role (``--admin-port``): metrics, probes and the plugin list,
apart from the public listeners.

Routes (plain HTTP; bind it to 127.0.0.1 or a cluster-internal address only):

* ``GET /metrics`` -- Prometheus text format (:mod:`._metrics`);
* ``GET /-/healthz`` -- liveness: ``200 OK`` while the process serves;
* ``GET /-/readyz`` -- readiness: ``200 ready`` when every check of the role passes, else
  ``503`` with one line per failed check (the Capsule Manager: its database answers; the
  gateway: each cluster has an endpoint that accepts a connection; the Data Capsule Proxy: its
  Capsule Manager accepts a connection);
* ``GET /-/plugins`` -- the installed plugins as JSON (``trustflow plugins --json``).

:func:`observe_middleware` is the public side's counterpart for the aiohttp applications (RA
proxy, Data Capsule Proxy): request id, request count and latency per route and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..manager import TrustflowPluginManager
from . import _metrics
from ._listeners import Service, WebListener
from ._logging import REQUEST_ID_HEADER, accept_request_id, request_context

#: A readiness check: returns None when fine, else one line saying what is wrong.
ReadinessCheck = Callable[[], Awaitable[str | None]]
#: Seconds each readiness check may take before it counts as failed.
CHECK_TIMEOUT = 2.0


def create_admin_app(
    role: str, pm: TrustflowPluginManager, checks: Sequence[ReadinessCheck] = ()
) -> web.Application:
    """The admin application of ``role``; ``checks`` decide readiness (all run at once, each
    within :data:`CHECK_TIMEOUT` seconds)."""

    async def metrics(_request: web.Request) -> web.Response:
        body, content_type = _metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="OK\n", content_type="text/plain")

    async def readyz(_request: web.Request) -> web.Response:
        problems = [p for p in await asyncio.gather(*(_bounded(c) for c in checks)) if p]
        if problems:
            return web.Response(
                status=503, text="not ready\n" + "".join(f"{p}\n" for p in problems)
            )
        return web.Response(text="ready\n", content_type="text/plain")

    async def plugins(_request: web.Request) -> web.Response:
        from ..registry import list_plugins

        return web.json_response([asdict(info) for info in list_plugins(pm)])

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthz", healthz)
    app.router.add_get("/-/readyz", readyz)
    app.router.add_get("/-/plugins", plugins)
    return app


S = TypeVar("S", bound=Service)


def with_admin(service: S, admin: web.Application, host: str, port: int | None) -> S:
    """``service`` with the admin listener (``admin`` on ``host:port``, labelled ``admin``)
    added to its listeners; ``port`` None: no admin listener, ``service`` unchanged."""
    if port is not None:
        service.listeners.add(WebListener(admin, host, port, label="admin"))
    return service


async def _bounded(check: ReadinessCheck) -> str | None:
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except asyncio.TimeoutError:
        return f"{getattr(check, '__name__', 'check')}: no answer within {CHECK_TIMEOUT:g} s"


async def tcp_reachable(host: str, port: int, what: str, timeout: float = 1.0) -> str | None:
    """None when ``host:port`` accepts a TCP connection within ``timeout`` seconds, else a
    line naming ``what`` and the reason."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except asyncio.TimeoutError:
        return f"{what} ({host}:{port}): connect timed out"
    except OSError as exc:
        return f"{what} ({host}:{port}): {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


def observe_middleware(role: str) -> Middleware:
    """An aiohttp middleware (put it first) that serves each request under its request id
    (the incoming ``x-request-id`` when well formed, else a new one; echoed in the reply's
    ``x-request-id``) and records it in ``trustflow_requests_total`` and
    ``trustflow_request_duration_seconds`` by route template (``unmatched`` for no route)
    and status; at DEBUG it logs one line per request (method, route template, status,
    time)."""

    log = logging.getLogger(f"trustflow.{role.replace('-', '_')}")

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        status = 500
        with request_context(accept_request_id(request.headers.get(REQUEST_ID_HEADER))) as rid:
            try:
                response = await handler(request)
                status = response.status
                if not response.prepared:
                    response.headers[REQUEST_ID_HEADER] = rid
                return response
            except web.HTTPException as exc:
                status = exc.status
                exc.headers[REQUEST_ID_HEADER] = rid
                raise
            finally:
                elapsed = time.perf_counter() - started
                _metrics.observe_request(role, route, status, elapsed)
                log.debug("%s %s -> %d in %.1f ms", request.method, route, status, elapsed * 1e3)

    return observe
