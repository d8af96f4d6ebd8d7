"""``create_app(settings, pm)``: the Data Capsule Proxy as an aiohttp application.

Routes: ``POST /DataCapsuleProxy/GetInputData``, ``POST /DataCapsuleProxy/PutResultData`` (also
under the full service name) and ``GET /health`` (``OK``); metrics, probes and ``/-/plugins``
are on the admin listener (:func:`readiness_checks`, :mod:`.._admin`). Each request is served
under its ``x-request-id`` (or a new id), which goes on to the Capsule Manager.

Errors (``text/plain``, the reason as body): malformed request 400, path or endpoint outside
what is allowed 403, missing input 404, input that is no valid data capsule or fails
authentication (wrong key, tampering) 422; everything else 500 with brpc's error-code header,
as upstream answers every failure. Tracebacks are logged, never sent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from cryptography import x509

from ...errors import AccessDenied, CapsuleFormatError, InvalidInput, ObjectNotFound, TrustflowError
from ...identity import load_pem_chain, party_id_of_chain, party_id_of_key
from ...manager import TrustflowPluginManager
from ...registry import KEY_EXCHANGE, attester_class, backend_class
from .._admin import ReadinessCheck, observe_middleware, tcp_reachable
from . import handlers
from .appkeys import SERVICE, TLS_FETCHER
from .cm_init import TlsAssetFetcher
from .keysource import ENDPOINT_BACKENDS, KeySource
from .service import DataCapsuleProxy
from .settings import DataCapsuleProxySettings, local_storage_class

log = logging.getLogger("trustflow.data_capsule_proxy")
ROLE = "data-capsule-proxy"
BRPC_ERROR_HEADER = "x-bd-error-code"
BRPC_EINTERNAL = "2001"
STATUS = (
    (InvalidInput, 400),
    (AccessDenied, 403),
    (ObjectNotFound, 404),
    (CapsuleFormatError, 422),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _plain(status: int, text: str) -> web.Response:
    headers = {BRPC_ERROR_HEADER: BRPC_EINTERNAL} if status >= 500 else None
    return web.Response(status=status, text=f"{text}\n", content_type="text/plain", headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except TrustflowError as exc:
        status = next((code for cls, code in STATUS if isinstance(exc, cls)), 500)
        log.log(
            logging.ERROR if status >= 500 else logging.WARNING,
            "%s %s: %s",
            request.method,
            request.path,
            exc,
        )
        return _plain(status, str(exc))
    except OSError as exc:
        log.error("%s %s: I/O error: %s", request.method, request.path, exc)
        return _plain(500, f"I/O error: {exc.strerror or exc}")
    except Exception:
        log.exception("%s %s: internal error", request.method, request.path)
        return _plain(500, "internal error (see the proxy log)")


class CmInitError(TrustflowError):
    """Start-up failed fetching or writing the ``--cm-init-config`` TLS asset; the cause is
    chained."""


async def _start_cm_init(
    settings: DataCapsuleProxySettings, keys: KeySource, chain: list[x509.Certificate]
) -> TlsAssetFetcher | None:
    config = settings.cm_init
    if config is None:
        return None
    fetcher = TlsAssetFetcher(
        keys.tls_asset,
        config,
        party_id_of_chain(chain),
        member_id=party_id_of_key(chain[0].public_key()),
        refresh_fraction=settings.tls_refresh_fraction,
        retry_interval=settings.tls_retry_interval,
    )
    try:
        await fetcher.fetch(startup=True)
    except TrustflowError as exc:
        raise CmInitError(
            f"{config.source}: cannot get the TLS asset for {config.describe()}: {exc}"
        ) from exc
    fetcher.start()
    return fetcher


def create_app(settings: DataCapsuleProxySettings, pm: TrustflowPluginManager) -> web.Application:
    """Build the app. At startup the certificate is read (party id), the key exchange and the
    local storage (``settings.local_storage``) are chosen through the registry (object stores
    per request, from ``settings.object_stores``), and with ``settings.cm_init`` the TLS asset
    is fetched and written (then refreshed in the background); a failure there fails startup
    (:class:`CmInitError` for the TLS asset)."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[observe_middleware(ROLE), error_middleware],
    )

    async def backends(app: web.Application) -> AsyncIterator[None]:
        chain = load_pem_chain(settings.read_cert())
        party_id = party_id_of_chain(chain)
        exchange_cls = backend_class(pm, KEY_EXCHANGE, settings.key_exchange)
        default_attester = None if settings.plat else attester_class(pm, None)
        keys = KeySource(
            exchange_cls,
            settings.exchange_settings(default_attester.name if default_attester else None),
            cm_endpoint=settings.cm_endpoint,
            allowed_endpoints=settings.allowed_cm_endpoints,
            party_id=party_id,
            pm=pm,
            timeout=settings.key_timeout,
        )
        local_cls = local_storage_class(pm, settings.local_storage)
        local = local_cls.from_role(
            {"roots": list(settings.allowed_roots), "chunk_size": settings.chunk_size}, pm=pm
        )
        async with local:
            fetcher = None
            try:
                await keys.open_default()
                fetcher = await _start_cm_init(settings, keys, chain)
                if fetcher is not None:
                    app[TLS_FETCHER] = fetcher
                app[SERVICE] = DataCapsuleProxy(settings, pm, local, keys)
                log.info(
                    "data capsule proxy: key exchange %r, local storage %r, roots %s, "
                    "result format %s",
                    exchange_cls.name,
                    local_cls.name,
                    list(settings.allowed_roots),
                    settings.result_format,
                )
                if not settings.allowed_object_store_endpoints:
                    log.info("object storage off: no --allowed-object-store-endpoint given")
                yield
            finally:
                if fetcher is not None:
                    await fetcher.aclose()
                await keys.aclose()

    app.cleanup_ctx.append(backends)
    for service in handlers.SERVICE_NAMES:
        app.router.add_post(f"/{service}/GetInputData", handlers.get_input_data)
        app.router.add_post(f"/{service}/PutResultData", handlers.put_result_data)
    app.router.add_get("/health", handlers.health)
    return app


def readiness_checks(settings: DataCapsuleProxySettings) -> list[ReadinessCheck]:
    """The proxy is ready when its default Capsule Manager (``--cm-endpoint``) accepts a
    connection; a key exchange without a Capsule Manager (``static``) needs nothing."""
    if settings.key_exchange not in ENDPOINT_BACKENDS:
        return []
    host, _, port = settings.cm_endpoint.rpartition(":")

    async def capsule_manager() -> str | None:
        if not port.isdigit():
            return f"capsule manager endpoint {settings.cm_endpoint!r} has no port"
        return await tcp_reachable(host.strip("[]"), int(port), "capsule manager")

    return [capsule_manager]
