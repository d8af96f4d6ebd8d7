"""``create_app(settings, pm)``: the RA Proxy as an aiohttp application.

Routes: ``POST /RaProxy/GetRaCert`` (and the full-name path) and ``GET /health`` (``OK``);
metrics, probes and ``/-/plugins`` are on the admin listener (:mod:`.._admin`). Errors follow
the brpc proxy: a body that is not valid JSON of ``GetRaCertRequest`` gets 400, a failed report
generation 500; both ``text/plain`` with the reason, plus brpc's error-code header on 500s.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from ...attestation import Attester
from ...errors import BackendNotFound, InvalidInput, TrustflowError
from ...manager import TrustflowPluginManager
from ...registry import ATTESTER, attester_class, backends_of
from ...settings_schema import Node
from .._admin import observe_middleware
from . import handlers
from .keys import SERVICE
from .service import RaCertService
from .settings import RaProxySettings

log = logging.getLogger("trustflow.ra_proxy")
ROLE = "ra-proxy"
#: brpc's error-code header and EINTERNAL, sent with every 500 as the upstream proxy does.
BRPC_ERROR_HEADER = "x-bd-error-code"
BRPC_EINTERNAL = "2001"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except InvalidInput as exc:
        return web.Response(status=400, text=f"{exc}\n", content_type="text/plain")
    except TrustflowError as exc:
        log.error("%s %s failed: %s", request.method, request.path, exc)
        return web.Response(
            status=500,
            text=f"{exc}\n",
            content_type="text/plain",
            headers={BRPC_ERROR_HEADER: BRPC_EINTERNAL},
        )


def attester_class_for(
    pm: TrustflowPluginManager, settings: RaProxySettings
) -> type[Attester] | None:
    """The configured attester; with ``upstream_sim`` it must be simulated (the upstream sim
    proxy sends no report), and an unset ``plat`` needs no attester installed."""
    if settings.upstream_sim and settings.plat is None:
        return None
    cls = attester_class(pm, settings.plat)
    if cls is None:
        raise BackendNotFound(
            "no attester named (--plat) and no development default attester installed; "
            f"installed: {sorted(backends_of(pm, ATTESTER))}. See 'trustflow plugins'"
        )
    if settings.upstream_sim and not cls.simulated:
        raise InvalidInput(f"--upstream-sim needs a simulated attester, got --plat {settings.plat}")
    return cls


def create_app(settings: RaProxySettings, pm: TrustflowPluginManager) -> web.Application:
    """Build the app; the certificate is read and the attester opened at startup (a missing
    backend or unreadable certificate fails startup)."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[observe_middleware(ROLE), error_middleware],
    )

    async def backends(app: web.Application) -> AsyncIterator[None]:
        cert_pem = settings.read_cert()
        cls = attester_class_for(pm, settings)
        if settings.upstream_sim:
            app[SERVICE] = RaCertService(cert_pem, None)
            yield
            return
        assert cls is not None
        async with cls.from_role(settings.attester_settings, pm=pm) as attester:
            app[SERVICE] = RaCertService(cert_pem, attester, settings.report_timeout)
            log.info("RA proxy: attester %r (platform %s)", cls.name, cls.platform)
            yield

    app.cleanup_ctx.append(backends)
    for path in handlers.GET_RA_CERT_PATHS:
        app.router.add_post(path, handlers.get_ra_cert)
    app.router.add_get("/health", handlers.health)
    return app


def check_settings(
    settings: RaProxySettings, pm: TrustflowPluginManager, attester: Node | None = None
) -> None:
    """What is checked before serving (and all ``--check-config`` does) beyond parsing: the
    certificate file reads as PEM, the attester exists (simulated with ``upstream_sim``) and
    builds from its settings (``attester``: where they came from, for errors). No report is
    generated, nothing listens."""
    import asyncio

    settings.read_cert()
    cls = attester_class_for(pm, settings)
    if cls is None or settings.upstream_sim:
        return

    async def build() -> None:
        node = attester or Node.settings(settings.attester_settings, "attester settings")
        async with node.build(lambda value: cls.from_role(value, pm=pm)):
            pass

    asyncio.run(build())
