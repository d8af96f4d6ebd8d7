"""The HTTP listener's policy: prefix routing, the JWE filter, streaming pass-through.

Requests reach :class:`HttpProxy` through the relay (:mod:`.relay`: llhttp parsing, framing,
flow control, keep-alive, timeouts) and go upstream through :mod:`.h1client`.

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
  replies are ``text/plain`` with the reason. A request body that stops for
  ``request_timeout`` → 408; a request that is not HTTP/1.1 (smuggling attempts: both
  ``Content-Length`` and ``Transfer-Encoding``, bad chunks, obs-fold, ...) → 400 and the
  connection closes (:mod:`.relay`).
* Request and reply headers are relayed as received, except: hop-by-hop headers and those
  named by ``Connection`` are dropped both ways; ``x-request-id`` is set; the client's address
  is appended to ``X-Forwarded-For``; ``Host`` is added when missing; ``Expect`` is answered
  here (``100-continue``; anything else → 417); JWE requests ask the app for
  ``Accept-Encoding: identity``.
* On a listener with the JWE filter, a body starting with ``{`` is buffered (at most
  ``max_body_bytes``, else 413) and classified (:mod:`.jwe_filter`): envelopes are opened
  (400 when they do not open — the app never sees them), the plaintext is forwarded and the
  app's reply is sealed under the request's content key (also at most ``max_body_bytes``, else
  502). A route with ``require_jwe`` answers 415 to anything but an envelope. A body of up to
  :data:`SMALL` bytes with a ``Content-Length`` that has arrived whole is classified and opened
  in the protocol callbacks and, when a pooled connection is idle, relayed from there (the
  same rules, no task). Every other
  body, and every body on a listener without the filter, is relayed as it arrives (bodies of
  up to :data:`SMALL` bytes with a ``Content-Length`` are collected first, so that a request
  on a stale pooled connection can be sent again), and so is every reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .. import _metrics
from .._logging import accept_request_id, new_request_id, request_context
from .._request_tally import RequestTally
from .config import Address, Cluster, GatewayConfig, Listener, Route
from .guard import MAX_DEFAULT_CONNECTIONS, HttpGuard
from .h1client import (
    Reply,
    StaleConnection,
    UpstreamConnection,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamTimeout,
)
from .jwe_filter import JOSE_JSON, EnvelopeRejected, JweFilter, OpenedRequest, classify
from .paths import BadTarget, routing_path
from .relay import (
    HOP_BY_HOP,
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    Exchange,
    RelayListener,
    end_to_end,
)
from .upstreams import Upstreams

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("trustflow.gateway")

#: Bodies of known length up to this size are collected before they are sent (replayable).
SMALL: Final = 64 * 1024
_WS: Final = b" \t\r\n"
#: Request headers the gateway writes itself.
_REQUEST_DROP: Final = HOP_BY_HOP | {b"x-request-id", b"x-forwarded-for"}
_JWE_REQUEST_DROP: Final = _REQUEST_DROP | {b"accept-encoding"}
_REPLY_DROP: Final = frozenset({b"x-request-id"})
_SEALED_REPLY_DROP: Final = HOP_BY_HOP | _REPLY_DROP | {b"content-type"}
#: Methods whose requests get ``Content-Length: 0`` when they carry no body.
_BODILESS: Final = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE"})
_STREAM: Final = object()
#: Targets of at most this many bytes have their routing kept, up to this many of them.
_CACHED_TARGET: Final = 256
_ROUTING_CACHE: Final = 1024


class _Routing(NamedTuple):
    """Where a request target routes: its decoded ``path`` (None when refused, ``error``
    says why) and the first matching ``route``."""

    path: str | None
    error: str | None
    route: Route | None


class HttpProxy:
    """The application of one HTTP listener (:class:`~.relay.Application`)."""

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
        self.client = upstreams.client
        self.jwe = jwe
        name = listener.name
        self._labels = {route.prefix: f"{name}:{route.prefix}" for route in listener.routes}
        self._unrouted = f"{name}:unrouted"
        self._bad_target = f"{name}:bad_target"
        self._healthz = f"{name}:/healthz"
        self._routings: dict[bytes, _Routing] = {}
        self._timeout = config.request_timeout
        self._tally: RequestTally | None = None  # made in the serving loop
        self._debug = log.isEnabledFor(logging.DEBUG)

    def relay_listener(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
        label: str = "",
    ) -> RelayListener:
        """The listener serving this proxy on ``host:port``."""
        return RelayListener(
            self,
            self.guard,
            host,
            port,
            request_timeout=self.config.request_timeout,
            idle_timeout=self.listener.idle_timeout or 0.0,
            collect=SMALL,
            reply_drop=_REPLY_DROP,
            request_drop=_REQUEST_DROP,
            ssl_context=ssl_context,
            handshake_timeout=handshake_timeout,
            label=label,
        )

    # ---- relay.Application -----------------------------------------------------------------

    def serve(self, ex: Exchange) -> None:
        """Route ``ex``; answer it locally, or relay it from the protocol callbacks when its
        body is here and a pooled upstream connection is idle (no task; on a JWE listener a
        small body is classified and an envelope opened there too), else in a task."""
        index = ex.index
        incoming = index.get(b"x-request-id")
        rid = accept_request_id(incoming.decode("latin-1")) if incoming else new_request_id()
        ex.extra = b"x-request-id: " + rid.encode() + b"\r\n"
        route = self._route(ex)
        if route is None:
            return
        has_body = ex.has_body
        if (self.jwe is None or not has_body) and b"expect" not in index:
            body: bytes | None = None
            if has_body:
                length = ex.content_length
                ready = ex.complete and length is not None and length <= SMALL
                body = ex.take_body() if ready else None
            if body is not None or not has_body:
                upstreams = self.upstreams
                cluster = upstreams.clusters[route.cluster]
                address = upstreams.pick(cluster.name)
                conn = self.client.pooled(address)
                if conn is not None:
                    head = self._head(ex, address, body, None)
                    ex.context = (rid, cluster, address, body, None)
                    ex.forwarded = len(body) if body else 0
                    conn.send(
                        head,
                        body,
                        ex,
                        head_request=ex.method == b"HEAD",
                        read_timeout=self._timeout,
                        waiter=False,
                    )
                    return
                asyncio.get_running_loop().create_task(
                    self._in_task(ex, rid, self._send(ex, rid, cluster, address, body, None))
                )
                return
        elif ex.complete and b"expect" not in index and (ex.content_length or SMALL + 1) <= SMALL:
            self._serve_whole(ex, rid, route)
            return
        asyncio.get_running_loop().create_task(self._in_task(ex, rid, self._handle(ex, rid, route)))

    def failed(self, ex: Exchange, error: UpstreamError) -> None:
        """No reply came for a request sent by :meth:`serve` itself: send it again on a new
        connection when the pooled one was stale, else answer 502/504."""
        if ex.finished:
            return
        rid, cluster, address, body, opened = ex.context
        with request_context(rid):
            if isinstance(error, StaleConnection):
                again = self._send(ex, rid, cluster, address, body, opened, fresh=True)
                asyncio.get_running_loop().create_task(self._in_task(ex, rid, again))
            else:
                _upstream_failed(ex, cluster, address, error, self.config.request_timeout)

    def done(self, ex: Exchange) -> None:
        elapsed = time.perf_counter() - ex.started
        if not ex.label:  # answered before it was routed (408, client gone)
            ex.label = self._label(ex)
        tally = self._tally
        if tally is None:
            tally = self._tally = RequestTally("gateway", self.listener.name)
        label, status = ex.label or self._unrouted, ex.status or 500
        tally.request(label, status, elapsed, ex.forwarded, ex.sent)
        if self._debug:
            log.debug("%s %s -> %d in %.1f ms", ex.method.decode(), label, status, elapsed * 1e3)

    # ---- requests --------------------------------------------------------------------------

    def _serve_whole(self, ex: Exchange, rid: str, route: Route) -> None:
        """Serve a request on a JWE listener whose ``Content-Length`` body (at most
        :data:`SMALL` bytes) has arrived whole, as :meth:`_handle` would, from the protocol
        callbacks: classify and open it here, then relay the plaintext (sealing the reply) on
        an idle pooled connection without a task; in a task only when a connection must be
        opened."""
        try:
            sent = self._whole(ex, rid, route)
            if sent is None:
                return  # answered here
            body, opened = sent
            cluster = self.upstreams.clusters[route.cluster]
            address = self.upstreams.pick(cluster.name)
            conn = self.client.pooled(address)
            if conn is None:
                work = self._send(ex, rid, cluster, address, body, opened)
                asyncio.get_running_loop().create_task(self._in_task(ex, rid, work))
                return
            ex.context = (rid, cluster, address, body, opened)
            ex.forwarded = len(body)
            conn.send(
                self._head(ex, address, body, opened),
                body,
                ex if opened is None else _Sealer(self, ex, opened),
                head_request=ex.method == b"HEAD",
                read_timeout=self._timeout,
                waiter=False,
            )
        except Exception:
            with request_context(rid):
                log.exception("%s %s failed", ex.method.decode(), ex.path)
            _text(ex, 500, "internal error")

    def _whole(
        self, ex: Exchange, rid: str, route: Route
    ) -> tuple[bytes, OpenedRequest | None] | None:
        """The body to relay for a complete request on a JWE listener (the plaintext and its
        opened envelope, or the body as received), or None when it was answered here (413,
        415, a refused envelope): :meth:`_handle`'s rules."""
        body = ex.take_body()
        if body[:1] != b"{" and not body.lstrip(_WS).startswith(b"{"):
            if route.require_jwe:
                _text(ex, 415, f"{route.prefix} accepts only JWE envelopes; the body is not JSON")
                return None
            return body, None
        limit = self.config.max_body_bytes
        if len(body) > limit:
            _text(ex, 413, f"request body larger than {limit} bytes")
            return None
        return self._open(ex, rid, route, body)

    def _open(
        self, ex: Exchange, rid: str, route: Route, body: bytes
    ) -> tuple[bytes, OpenedRequest | None] | None:
        """A JSON body on a JWE listener: an envelope opened (its plaintext and the opened
        envelope), other JSON as received (None for the envelope), or None when it was
        answered here (415 on a ``require_jwe`` route, the status of a refused envelope)."""
        assert self.jwe is not None
        try:
            jwe = classify(body)
            if jwe is None:
                if route.require_jwe:
                    _text(ex, 415, f"{route.prefix} accepts only JWE envelopes; got other JSON")
                    return None
                return body, None
            content_type = _latin1(ex.index.get(b"content-type")) or ""
            opened = self.jwe.open(jwe, content_type.partition(";")[0].strip())
        except EnvelopeRejected as exc:
            with request_context(rid):
                log.info("%s %s: %s", ex.method.decode(), ex.path, exc)
            _metrics.jwe_failure("gateway", exc.cause)
            _text(ex, exc.status, str(exc))
            return None
        return opened.plaintext, opened

    async def _in_task(self, ex: Exchange, rid: str, work: Coroutine[Any, Any, None]) -> None:
        with request_context(rid):
            try:
                await work
            except BodyTimeout:
                text = f"request body not received within {self.config.request_timeout:g} s"
                _text(ex, 408, text)
            except ClientGone as exc:
                log.info("%s %s: client left mid-body: %s", ex.method.decode(), ex.path, exc)
                _text(ex, 400, "incomplete request body")
            except Exception:
                log.exception("%s %s failed", ex.method.decode(), ex.path)
                _text(ex, 500, "internal error")

    def _routing(self, target: bytes) -> _Routing:
        """How ``target`` routes; kept for targets of at most :data:`_CACHED_TARGET` bytes
        (up to :data:`_ROUTING_CACHE` of them): the same target always routes the same."""
        routing = self._routings.get(target)
        if routing is not None:
            return routing
        try:
            path = routing_path(target.decode("latin-1"))
        except BadTarget as exc:
            routing = _Routing(None, str(exc), None)
        else:
            routing = _Routing(path, None, self.listener.route_for(path))
        if len(target) <= _CACHED_TARGET:
            if len(self._routings) >= _ROUTING_CACHE:
                self._routings.clear()
            self._routings[target] = routing
        return routing

    def _label(self, ex: Exchange) -> str:
        """The metrics route label of ``ex`` (for one answered before :meth:`_route`)."""
        routing = self._routing(ex.target)
        if routing.error is not None:
            return self._bad_target
        if routing.path == "/healthz":
            return self._healthz
        route = routing.route
        return self._labels[route.prefix] if route else self._unrouted

    def _route(self, ex: Exchange) -> Route | None:
        """The route of ``ex``, or None when it was answered here (healthz, 400, 404, 415)."""
        routing = self._routing(ex.target)
        if routing.error is not None:
            ex.label = self._bad_target
            _text(ex, 400, f"refused request target: {routing.error}")
            return None
        if routing.path == "/healthz":
            ex.label = self._healthz
            if ex.method == b"GET":
                _text(ex, 200, "OK")
                return None
        route = routing.route
        if route is None:
            ex.label = ex.label or self._unrouted
            _text(ex, 404, f"no route for {routing.path}")
            return None
        ex.label = self._labels[route.prefix]
        if route.require_jwe and not ex.has_body:
            _text(ex, 415, f"{route.prefix} accepts only JWE envelopes; the request has no body")
            return None
        return route

    async def _handle(self, ex: Exchange, rid: str, route: Route) -> None:
        cluster = self.upstreams.clusters[route.cluster]
        expect = ex.header(b"expect")
        if expect is not None and ex.version == "1.1":  # answered here (hop by hop)
            if expect.lower() != b"100-continue":
                return _text(ex, 417, f"unsupported Expect: {expect.decode('latin-1')}")
            ex.interim(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.jwe is None or not ex.has_body:
            if not ex.has_body:
                return await self._forward(ex, rid, cluster, None)
            length = ex.content_length
            if length is not None and length <= SMALL:
                return await self._forward(ex, rid, cluster, await ex.body(SMALL))
            return await self._forward(ex, rid, cluster, _STREAM)
        limit = self.config.max_body_bytes
        head = await ex.peek(limit)
        if not head.lstrip(_WS).startswith(b"{"):
            if route.require_jwe:
                return _text(
                    ex, 415, f"{route.prefix} accepts only JWE envelopes; the body is not JSON"
                )
            return await self._forward(ex, rid, cluster, _STREAM)
        try:
            if (ex.content_length or 0) > limit:
                raise BodyTooLarge
            body = await ex.body(limit)
        except BodyTooLarge:
            return _text(ex, 413, f"request body larger than {limit} bytes")
        sent = self._open(ex, rid, route, body)
        if sent is not None:
            await self._forward(ex, rid, cluster, *sent)

    def _head(
        self,
        ex: Exchange,
        address: Address,
        body: bytes | object | None,
        opened: OpenedRequest | None,
    ) -> bytes:
        """The request head for the upstream: the client's headers with the gateway's edits
        (module docstring) and the framing of ``body``."""
        parts = [ex.method, b" ", ex.target, b" HTTP/1.1\r\n"]
        lines = ex.lines  # without _REQUEST_DROP (the relay listener's request_drop)
        if lines is None:  # a Connection header named more
            parts += end_to_end(ex.headers, _JWE_REQUEST_DROP if opened else _REQUEST_DROP)
        elif opened is None or b"accept-encoding" not in ex.index:
            parts += lines
        else:  # _JWE_REQUEST_DROP: the one header more it drops
            parts += _without(lines, b"accept-encoding")
        parts.append(ex.extra)  # x-request-id
        index = ex.index
        remote = ex.conn.remote
        prior = index.get(b"x-forwarded-for")
        if remote:
            xff = prior + b", " + remote if prior else remote
            parts += (b"X-Forwarded-For: ", xff, b"\r\n")
        elif prior is not None:
            parts += (b"X-Forwarded-For: ", prior, b"\r\n")
        if b"host" not in index:
            parts.append(b"Host: %s\r\n" % str(address).encode())
        if opened is not None:  # the reply is sealed byte for byte
            parts.append(b"Accept-Encoding: identity\r\n")
        if isinstance(body, bytes):
            parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
        elif body is None:
            parts.append(b"\r\n" if ex.method in _BODILESS else b"Content-Length: 0\r\n\r\n")
        elif ex.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
        else:
            parts.append(b"Content-Length: %d\r\n\r\n" % (ex.content_length or 0))
        return b"".join(parts)

    async def _forward(
        self,
        ex: Exchange,
        rid: str,
        cluster: Cluster,
        body: bytes | object | None,
        opened: OpenedRequest | None = None,
    ) -> None:
        address = self.upstreams.pick(cluster.name)
        await self._send(ex, rid, cluster, address, body, opened)

    async def _send(
        self,
        ex: Exchange,
        rid: str,
        cluster: Cluster,
        address: Address,
        body: bytes | object | None,
        opened: OpenedRequest | None,
        *,
        fresh: bool = False,
    ) -> None:
        """Relay ``ex`` with ``body`` (bytes, None, or :data:`_STREAM`) to ``address``; a
        ``fresh`` connection is opened even when one is pooled."""
        head = self._head(ex, address, body, opened)
        sink: Exchange | _Sealer = ex if opened is None else _Sealer(self, ex, opened)
        head_request = ex.method == b"HEAD"
        timeout = self.config.request_timeout
        try:
            if body is _STREAM or fresh:
                conn = None if fresh else self.client.pooled(address)
                if conn is None:
                    conn = await self.client.connect(address, cluster.connect_timeout)
                if ex.finished:
                    conn.close()
                    return
                streamed = body is _STREAM
                waiter = conn.send(
                    head,
                    None if streamed else body,  # type: ignore[arg-type]
                    sink,
                    head_request=head_request,
                    read_timeout=timeout,
                    streamed=streamed,
                    chunked=ex.chunked,
                )
                if streamed:
                    ex.pipe_to(conn)
                assert waiter is not None
                await waiter
            else:
                assert body is None or isinstance(body, bytes)
                ex.forwarded = len(body) if body else 0
                await self.client.exchange(
                    address,
                    head,
                    body,
                    sink,
                    head_request=head_request,
                    connect_timeout=cluster.connect_timeout,
                    read_timeout=timeout,
                )
        except UpstreamError as exc:
            if ex.finished:  # the client left, or the body timed out: answered already
                return
            _upstream_failed(ex, cluster, address, exc, timeout)

    def sealed(self, ex: Exchange, opened: OpenedRequest, reply: Reply, payload: bytes) -> None:
        """Answer ``ex`` with the app's ``reply`` sealed for the client."""
        assert self.jwe is not None
        headers = end_to_end(reply.headers, _SEALED_REPLY_DROP)
        content_type = JOSE_JSON.encode() if opened.profile == "rfc" else None
        if content_type is None:
            for name, value in reply.headers:
                if name.lower() == b"content-type":
                    content_type = value
                    break
        sealed = self.jwe.seal_reply(opened, payload)
        ex.respond(
            reply.status,
            sealed,
            content_type=content_type or b"",
            headers=headers,
            reason_phrase=reply.reason or None,
        )


def _without(lines: list[bytes], lower_name: bytes) -> list[bytes]:
    """Header ``lines`` (``name``, ``: ``, ``value``, CRLF pieces) without those named
    ``lower_name`` (lower case): a name of another length is not lower-cased."""
    size = len(lower_name)
    kept: list[bytes] = []
    for i in range(0, len(lines), 4):
        name = lines[i]
        if len(name) != size or name.lower() != lower_name:
            kept += lines[i : i + 4]
    return kept


def _latin1(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _text(ex: Exchange, status: int, message: str) -> None:
    ex.respond(status, message.encode() + b"\n")


def _upstream_failed(
    ex: Exchange, cluster: Cluster, address: Address, exc: UpstreamError, timeout: float
) -> None:
    """A local 502/504 for an upstream failure before its reply; the detail goes to the log."""
    if isinstance(exc, UpstreamConnectTimeout):
        log.warning("upstream %s (%s): connect timed out", cluster.name, address)
        _text(ex, 502, "upstream unreachable: connect timed out")
    elif isinstance(exc, UpstreamTimeout):
        log.warning("upstream %s (%s): no answer in time", cluster.name, address)
        _text(ex, 504, f"upstream did not answer within {timeout:g} s")
    else:
        log.warning("upstream %s (%s) unreachable: %s", cluster.name, address, exc)
        _text(ex, 502, "upstream unreachable")


class _Sealer:
    """The reply sink of a JWE request: collects the app's reply (at most
    ``max_body_bytes``), then answers with it sealed."""

    def __init__(self, proxy: HttpProxy, ex: Exchange, opened: OpenedRequest) -> None:
        self.proxy, self.ex, self.opened = proxy, ex, opened
        self.limit = proxy.config.max_body_bytes
        self.reply: Reply | None = None
        self.chunks: list[bytes | memoryview] = []
        self.size = 0

    def bind(self, conn: UpstreamConnection) -> None:
        self.ex.bind(conn)

    def reply_head(self, reply: Reply) -> None:
        self.reply = reply
        if (reply.content_length or 0) > self.limit:
            self._too_large()

    def reply_body(self, data: bytes | memoryview) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > self.limit:
            self._too_large()

    def _too_large(self) -> None:
        if self.ex.upstream is not None:
            self.ex.upstream.abort()
        _text(self.ex, 502, f"app reply larger than {self.limit} bytes cannot be sealed")

    def reply_end(self) -> None:
        self.ex.upstream = None
        if self.ex.finished or self.reply is None:
            return
        try:
            self.proxy.sealed(self.ex, self.opened, self.reply, b"".join(self.chunks))
        except Exception:
            log.exception("sealing the reply to %s failed", self.ex.path)
            _text(self.ex, 500, "internal error")

    def reply_failed(self, error: UpstreamError) -> None:
        self.ex.upstream = None
        if isinstance(error, UpstreamTimeout):
            log.warning("upstream stalled mid-reply to %s: %s", self.ex.path, error)
            _text(self.ex, 504, "upstream stalled mid-reply")
        else:
            log.warning("upstream failed mid-reply to %s: %s", self.ex.path, error)
            _text(self.ex, 502, "upstream failed mid-reply")

    def request_failed(self, error: UpstreamError) -> None:
        """No reply head came for a request sent without a waiter
        (:meth:`HttpProxy._serve_whole`): sent again when the connection was stale, else
        502/504 (:meth:`HttpProxy.failed`)."""
        self.ex.upstream = None
        self.proxy.failed(self.ex, error)

    def flush(self) -> None:
        pass

    def pause_source(self) -> None:
        self.ex.pause_source()

    def resume_source(self) -> None:
        self.ex.resume_source()
