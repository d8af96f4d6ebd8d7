"""The HTTP listener: prefix routing, the JWE filter, streaming pass-through.

* ``GET /healthz`` → ``OK`` (answered by the gateway itself, before routing; metrics, probes
  and the plugin listing are on the admin listener, :mod:`.._admin`).
* Every request is served under a request id: the client's ``x-request-id`` when well formed,
  else a new one (:mod:`.._logging`); it is sent to the app in ``x-request-id`` and returned
  to the client in the reply's ``x-request-id``. Requests, latency and relayed bytes are
  counted per listener and route (:mod:`.._metrics`).
* A target whose path is not in normal form (dot segments, ``//``, encoded ``/``; see
  :mod:`.paths`) → 400; routes match the percent-decoded path, the target is forwarded as sent.
* No matching prefix → 404. Upstream unreachable → 502; no answer within ``request_timeout``
  → 504; the upstream's address and the OS error go to the log, not to the client. All local
  replies are ``text/plain`` with the reason.
* Headers named by ``Connection`` are dropped with the hop-by-hop ones, both ways.
* On a listener with the JWE filter, a body starting with ``{`` is buffered (at most
  ``max_body_bytes``, else 413) and classified (:mod:`.jwe_filter`): envelopes are opened
  (400 when they do not open — the app never sees them), the plaintext is forwarded and the
  app's reply is sealed under the request's content key (also at most ``max_body_bytes``, else
  502). A route with ``require_jwe`` answers 415 to anything but an envelope. Every other
  body, and every body on a listener without the filter, is streamed through unbuffered, and
  so is the reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import HttpVersion11, web
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict, CIMultiDictProxy

from ...errors import TrustflowError
from .. import _metrics
from .._logging import REQUEST_ID_HEADER, accept_request_id, current_request_id, request_context
from .config import Cluster, GatewayConfig, Listener
from .guard import MAX_DEFAULT_CONNECTIONS, HttpGuard
from .h1client import UpstreamConnectTimeout, UpstreamError, UpstreamResponse, UpstreamTimeout
from .jwe_filter import JOSE_JSON, EnvelopeRejected, JweFilter, OpenedRequest, classify
from .paths import BadTarget, routing_path
from .upstreams import Upstreams

log = logging.getLogger("trustflow.gateway")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)
_WS = b" \t\r\n"
CHUNK = 64 * 1024
#: Bodies of known length up to this size are relayed in one piece instead of streamed.
SMALL = 64 * 1024
#: aiohttp's keep-alive timeout when the listener's idle timeout is off.
NEVER = 10.0**9


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain")


def _forward_headers(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> list[tuple[str, str]]:
    """The end-to-end headers, in order: hop-by-hop and framing headers dropped, and so is
    every header the message's ``Connection`` header names (RFC 9110 §7.6.1)."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
    }
    drop = HOP_BY_HOP | named if named else HOP_BY_HOP
    return [(k, v) for k, v in headers.items() if k.lower() not in drop]


class BodyTooLarge(TrustflowError):
    pass


class BodyTimeout(TrustflowError):
    """The client stopped sending its request body."""


class ClientGone(TrustflowError):
    """The client closed the connection before its request body was complete."""


async def _readany(stream: aiohttp.StreamReader, timeout: float) -> bytes:
    """The next chunk of a request body, waiting at most ``timeout`` seconds."""
    try:
        if stream.is_eof():  # everything already received: no wait, no timer
            return await stream.readany()
        return await asyncio.wait_for(stream.readany(), timeout)
    except asyncio.TimeoutError:
        raise BodyTimeout from None
    except (ConnectionError, aiohttp.ClientPayloadError) as exc:
        raise ClientGone(str(exc)) from None


async def _read_limited(
    stream: aiohttp.StreamReader, head: bytes, limit: int, timeout: float
) -> bytes:
    buf = bytearray(head)
    if len(buf) > limit:
        raise BodyTooLarge
    while chunk := await _readany(stream, timeout):
        buf += chunk
        if len(buf) > limit:
            raise BodyTooLarge
    return bytes(buf)


async def _chain(head: bytes, stream: aiohttp.StreamReader, timeout: float) -> AsyncIterator[bytes]:
    if head:
        yield head
    while chunk := await _readany(stream, timeout):
        yield chunk


class HttpProxy:
    """Request handler of one HTTP listener."""

    def __init__(
        self,
        listener: Listener,
        config: GatewayConfig,
        upstreams: Upstreams,
        jwe: JweFilter | None,
        max_connections: int = MAX_DEFAULT_CONNECTIONS,
    ) -> None:
        self.listener = listener
        self.guard = HttpGuard(
            listener.name,
            listener.max_connections or max_connections,
            listener.request_headers_timeout or 0.0,
        )
        self.config = config
        self.upstreams = upstreams
        self.jwe = jwe
        name = listener.name
        self._to_upstream = _metrics.PROXY_BYTES.labels(name, "upstream")
        self._to_downstream = _metrics.PROXY_BYTES.labels(name, "downstream")

    def _route_label(self, request: web.BaseRequest) -> str:
        """``<listener>:<route prefix>`` (or ``/healthz``, ``unrouted``, ``bad_target``)."""
        try:
            path = routing_path(request.raw_path)
        except BadTarget:
            return f"{self.listener.name}:bad_target"
        if path == "/healthz":
            return f"{self.listener.name}:/healthz"
        route = self.listener.route_for(path)
        return f"{self.listener.name}:{route.prefix if route else 'unrouted'}"

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.guard.busy(request.transport)
        started = time.perf_counter()
        status = 500
        rid = accept_request_id(request.headers.get(REQUEST_ID_HEADER))
        try:
            with request_context(rid):
                response = await self._serve(request)
            status = response.status
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = rid
            return response
        finally:
            self.guard.idle(request.transport)
            elapsed = time.perf_counter() - started
            route = self._route_label(request)
            _metrics.observe_request("gateway", route, status, elapsed)
            if log.isEnabledFor(logging.DEBUG):
                with request_context(rid):
                    log.debug(
                        "%s %s -> %d in %.1f ms", request.method, route, status, elapsed * 1e3
                    )

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except BodyTimeout:
            return _text(408, f"request body not received within {self.config.request_timeout:g} s")
        except ClientGone as exc:
            log.info("%s %s: client left mid-body: %s", request.method, request.path, exc)
            return _text(400, "incomplete request body")

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        timeout = self.config.request_timeout
        try:
            path = routing_path(request.raw_path)
        except BadTarget as exc:
            return _text(400, f"refused request target: {exc}")
        if request.method == "GET" and path == "/healthz":
            return web.Response(text="OK\n", content_type="text/plain")
        route = self.listener.route_for(path)
        if route is None:
            return _text(404, f"no route for {path}")
        cluster = self.upstreams.clusters[route.cluster]
        if route.require_jwe and not request.body_exists:
            return _text(415, f"{route.prefix} accepts only JWE envelopes; the request has no body")
        expect = request.headers.get("Expect")
        if expect is not None and request.version == HttpVersion11:  # answered here (hop by hop)
            if expect.lower() != "100-continue":
                return _text(417, f"unsupported Expect: {expect}")
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the reply proper has not started
        if self.jwe is None or not request.body_exists:
            body: Any = None
            if request.body_exists:
                length = request.content_length
                small = length is not None and length <= SMALL
                body = (
                    await _read_limited(request.content, b"", SMALL, timeout)
                    if small
                    else (request.content)
                )
            return await self._forward(request, cluster, body)
        head = await self._peek(request)
        if not head.lstrip(_WS).startswith(b"{"):
            if route.require_jwe:
                return _text(
                    415, f"{route.prefix} accepts only JWE envelopes; the body is not JSON"
                )
            return await self._forward(request, cluster, _chain(head, request.content, timeout))
        limit = self.config.max_body_bytes
        try:
            if (request.content_length or 0) > limit:
                raise BodyTooLarge
            body = await _read_limited(request.content, head, limit, timeout)
        except BodyTooLarge:
            return _text(413, f"request body larger than {limit} bytes")
        try:
            jwe = classify(body)
            if jwe is None:
                if route.require_jwe:
                    return _text(415, f"{route.prefix} accepts only JWE envelopes; got other JSON")
                return await self._forward(request, cluster, body)
            opened = self.jwe.open(jwe, request.content_type)
        except EnvelopeRejected as exc:
            log.info("%s %s: %s", request.method, request.path, exc)
            _metrics.jwe_failure("gateway", exc.cause)
            return _text(exc.status, str(exc))
        return await self._forward(request, cluster, opened.plaintext, opened)

    async def _peek(self, request: web.BaseRequest) -> bytes:
        """Read until the first non-whitespace byte (or EOF, or ``max_body_bytes``)."""
        chunks = []
        size = 0
        while chunk := await _readany(request.content, self.config.request_timeout):
            chunks.append(chunk)
            size += len(chunk)
            if chunk.lstrip(_WS) or size > self.config.max_body_bytes:
                break
        return b"".join(chunks)

    async def _forward(
        self,
        request: web.BaseRequest,
        cluster: Cluster,
        body: bytes | aiohttp.StreamReader | AsyncIterator[bytes] | None,
        opened: OpenedRequest | None = None,
    ) -> web.StreamResponse:
        address = self.upstreams.pick(cluster.name)
        rid = current_request_id()
        headers = [
            (k, v) for k, v in _forward_headers(request.headers) if k.lower() != "x-request-id"
        ]
        if rid is not None:
            headers.append((REQUEST_ID_HEADER, rid))
        prior = request.headers.get("X-Forwarded-For")
        if request.remote:
            headers = [(k, v) for k, v in headers if k.lower() != "x-forwarded-for"]
            headers.append(
                ("X-Forwarded-For", f"{prior}, {request.remote}" if prior else request.remote)
            )
        if not any(k.lower() == "host" for k, _ in headers):
            headers.append(("Host", str(address)))
        if opened is not None:  # the reply is sealed byte for byte
            headers = [(k, v) for k, v in headers if k.lower() != "accept-encoding"]
            headers.append(("Accept-Encoding", "identity"))
        if isinstance(body, aiohttp.StreamReader):
            body = _chain(b"", body, self.config.request_timeout)
        if isinstance(body, bytes):
            self._to_upstream.inc(len(body))
        elif body is not None:
            body = _metrics.counted(body, self._to_upstream)
        try:
            upstream = await self.upstreams.client.request(
                address,
                request.method,
                request.raw_path,
                headers,
                body,
                content_length=request.content_length,
                connect_timeout=cluster.connect_timeout,
                read_timeout=self.config.request_timeout,
            )
        except UpstreamConnectTimeout:
            log.warning("upstream %s (%s): connect timed out", cluster.name, address)
            return _text(502, "upstream unreachable: connect timed out")
        except UpstreamTimeout:
            log.warning("upstream %s (%s): no answer in time", cluster.name, address)
            return _text(504, f"upstream did not answer within {self.config.request_timeout:g} s")
        except UpstreamError as exc:
            log.warning("upstream %s (%s) unreachable: %s", cluster.name, address, exc)
            return _text(502, "upstream unreachable")
        try:
            if opened is not None:
                return await self._sealed_reply(upstream, opened)
            length = upstream.content_length
            if length is not None and length <= SMALL:
                headers = _forward_headers(upstream.headers)
                declared = upstream.headers.get("Content-Length")
                if declared is not None and (request.method == "HEAD" or upstream.status == 304):
                    headers.append(("Content-Length", declared))  # the size of the GET answer
                small = await upstream.read(SMALL)
                self._to_downstream.inc(len(small))
                return web.Response(
                    status=upstream.status,
                    reason=upstream.reason or None,
                    body=small,
                    headers=headers,
                )
            return await self._streamed_reply(request, upstream)
        except UpstreamTimeout:
            log.warning("upstream %s (%s) stalled mid-reply", cluster.name, address)
            return _text(504, "upstream stalled mid-reply")
        except UpstreamError as exc:
            log.warning("upstream %s (%s) failed mid-reply: %s", cluster.name, address, exc)
            return _text(502, "upstream failed mid-reply")
        finally:
            upstream.release()

    async def _sealed_reply(
        self, upstream: UpstreamResponse, opened: OpenedRequest
    ) -> web.StreamResponse:
        assert self.jwe is not None
        limit = self.config.max_body_bytes
        try:
            payload = await upstream.read(limit)
        except OverflowError:
            return _text(502, f"app reply larger than {limit} bytes cannot be sealed")
        headers = CIMultiDict(_forward_headers(upstream.headers))
        if opened.profile == "rfc":
            headers["Content-Type"] = JOSE_JSON
        sealed = self.jwe.seal_reply(opened, payload)
        self._to_downstream.inc(len(sealed))
        return web.Response(
            status=upstream.status,
            reason=upstream.reason or None,
            body=sealed,
            headers=headers,
        )

    async def _streamed_reply(
        self, request: web.BaseRequest, upstream: UpstreamResponse
    ) -> web.StreamResponse:
        reply = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason or None,
            headers=_forward_headers(upstream.headers),
        )
        if upstream.content_length is not None:
            reply.content_length = upstream.content_length
        rid = current_request_id()
        if rid is not None:
            reply.headers[REQUEST_ID_HEADER] = rid
        await reply.prepare(request)
        try:
            async for chunk in upstream.iter_chunks():
                await reply.write(chunk)
                self._to_downstream.inc(len(chunk))
            await reply.write_eof()
        except UpstreamError as exc:
            log.warning("upstream reply to %s broke off: %s", request.path, exc)
            reply.force_close()
        except ConnectionError as exc:  # the client left; the upstream connection is dropped
            log.info("client left during the reply to %s: %s", request.path, exc)
            reply.force_close()
        return reply


class _GuardedServer(web.Server):
    """An aiohttp low-level server that reports each connection to an :class:`HttpGuard`."""

    def __init__(self, guard: HttpGuard, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.guard.opened(transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        transport = handler.transport
        super().connection_lost(handler, exc)
        if transport is not None:
            self.guard.closed(transport)


def create_server(proxy: HttpProxy, max_header_bytes: int = 64 * 1024) -> web.Server:
    """One low-level aiohttp server per HTTP listener: every request goes to ``proxy`` (no
    router, no middlewares, no access log), every connection is watched by ``proxy.guard``
    and closed after the listener's ``idle_timeout`` without a request. Bodies are relayed as
    sent: the server does not decode ``Content-Encoding`` (the app does, or the envelope check
    refuses the body)."""
    idle = proxy.listener.idle_timeout or NEVER
    return _GuardedServer(
        proxy.guard,
        proxy.handle,
        max_field_size=max_header_bytes,
        auto_decompress=False,
        access_log=None,
        keepalive_timeout=idle,
    )
