"""The downstream side of an HTTP listener: an :class:`asyncio.Protocol` per client connection,
requests parsed by llhttp (``httptools``), one :class:`Exchange` per request.

The relay knows HTTP/1.1, not the gateway's policy: an :class:`Application`
(:class:`~.http_proxy.HttpProxy`) gets each exchange once its head has arrived and answers it,
locally (:meth:`Exchange.respond`) or by relaying an upstream reply (an exchange is the
upstream connection's :class:`~.h1client.ReplySink`).

* Parsing is llhttp's strict mode: ``Content-Length`` together with ``Transfer-Encoding``,
  duplicate or malformed ``Content-Length``, a ``Transfer-Encoding`` other than ending in
  ``chunked``, bad chunk framing, obs-fold, bare LF line ends and non-ASCII targets are
  refused with 400 and the connection is closed. A request head above :data:`MAX_HEAD`
  bytes → 431. An ``Upgrade`` request is served as a plain request (after any pipelined
  before it), then the connection closes: llhttp stops at its head (httptools skips the
  body of a request llhttp would upgrade), so its body, ``Content-Length`` or chunked, is
  read by a second parser that stops where the body ends; nothing after it is parsed or
  relayed.
* Request bodies: buffered until the application takes them (:meth:`Exchange.body`,
  :meth:`Exchange.peek`) or piped to an upstream connection as they arrive
  (:meth:`Exchange.pipe_to`: ``Content-Length`` bodies byte for byte, chunked bodies
  re-framed). A ``Content-Length`` body with at least :data:`~.h1client.RAW_MIN` bytes to
  come is counted here, not parsed: the segments read (or ``memoryview`` slices of them)
  go on as they are, where llhttp would copy every byte for ``on_body``.
  ``request_timeout`` seconds without a byte of an unfinished body → 408 (or the
  connection closes when the reply has started).
* Replies are written as the upstream sends them, once per received segment: the status line
  and headers as received, minus hop-by-hop headers and those named by ``Connection``;
  ``Content-Length`` kept, chunked or close-delimited bodies re-framed as chunks (or
  close-delimited for HTTP/1.0 clients).
* Flow control: when the upstream's write buffer is full the client is not read; when the
  client's is full the upstream is not read. A whole body is never held in memory on the
  streamed path.
* Keep-alive as the client asks (``Connection``, HTTP version); pipelined requests are served
  in order. A client that half-closes over TCP after a complete request still gets its reply;
  over TLS the connection ends with the client's ``close_notify``. Between requests a
  connection is closed after ``idle_timeout`` seconds (0: never); the first request head is
  bounded by the :class:`~.guard.HttpGuard`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)

from ...errors import TrustflowError
from .._listeners import GRACE, Listener
from .deadlines import Sweeper
from .guard import HttpGuard
from .h1client import RAW_MIN, WRITE_BUFFER

if TYPE_CHECKING:
    import ssl

    from .h1client import Reply, UpstreamConnection, UpstreamError

log = logging.getLogger("trustflow.gateway")

#: Request line and headers of one request, at most.
MAX_HEAD: Final = 64 * 1024
#: Body bytes buffered for an application that has not taken them yet, before the client is
#: no longer read.
BUFFER: Final = 256 * 1024
#: Headers never relayed as they are, both ways (RFC 9110 §7.6.1, plus the framing headers
#: the relay writes itself, and ``Expect``, answered here).
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"content-length",
    }
)
_WS: Final = b" \t\r\n"
_REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}


_STATUS_LINES: Final[dict[tuple[int, bytes], bytes]] = {}


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def _status_line(status: int, phrase: bytes) -> bytes:
    """``HTTP/1.1 <status> <phrase>`` and CRLF (the standard phrase when ``phrase`` is empty);
    the first 256 pairs seen are kept."""
    line = _STATUS_LINES.get((status, phrase))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, phrase or reason(status))
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[status, phrase] = line
    return line


#: Header names as they arrive -> lower case, for the first :data:`_LOWER_NAMES` names seen of
#: at most :data:`_LOWER_LENGTH` bytes (a dict lookup is a third of a ``bytes.lower`` method
#: call in the compiled build; clients choose the names, so the table keeps at most 64 KiB).
_LOWER: Final[dict[bytes, bytes]] = {}
_LOWER_NAMES: Final = 512
_LOWER_LENGTH: Final = 64


def _lower_name(name: bytes) -> bytes:
    """``name.lower()``, remembered for the first :data:`_LOWER_NAMES` short header names."""
    lower = _LOWER.get(name)
    if lower is None:
        lower = name.lower()
        if len(name) <= _LOWER_LENGTH and len(_LOWER) < _LOWER_NAMES:
            _LOWER[name] = lower
    return lower


def _joined(chunks: list[bytes | memoryview]) -> bytes:
    if len(chunks) == 1 and type(chunks[0]) is bytes:
        return chunks[0]
    return b"".join(chunks)


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names the ``Connection`` headers of a message list (lower case)."""
    return frozenset(
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    )


def end_to_end(headers: list[tuple[bytes, bytes]], drop: frozenset[bytes]) -> list[bytes]:
    """The header lines of ``headers`` (``name``, ``: ``, ``value``, CRLF pieces) without
    hop-by-hop headers, those named by ``Connection``, and those in ``drop`` (lower-case
    names; ``drop`` must contain :data:`HOP_BY_HOP`)."""
    lines: list[bytes] = []
    for name, value in headers:
        lower = _lower_name(name)
        if lower in drop:
            if lower == b"connection":
                named = connection_tokens(headers)
                if not named <= drop:  # rare: filter again, without those
                    return end_to_end(headers, drop | named)
            continue
        lines.append(name)  # four appends: no tuple, each a native list operation
        lines.append(b": ")
        lines.append(value)
        lines.append(b"\r\n")
    return lines


class BodyTooLarge(TrustflowError):
    """The request body is larger than the limit the application set."""


class BodyTimeout(TrustflowError):
    """The client stopped sending its request body."""


class ClientGone(TrustflowError):
    """The client closed the connection before its request body was complete."""


class Application(Protocol):
    """What a relay listener serves (the gateway's :class:`~.http_proxy.HttpProxy`)."""

    def serve(self, exchange: Exchange) -> None:
        """Answer ``exchange`` (its head has arrived; the body may follow)."""

    def done(self, exchange: Exchange) -> None:
        """``exchange`` is over (answered, or the client left); called once."""

    def failed(self, exchange: Exchange, error: UpstreamError) -> None:
        """The upstream request sent with ``exchange`` as its sink and no waiter got no
        reply."""


class _HeadTooLarge(TrustflowError):
    pass


class _BodyEnd(TrustflowError):
    """Raised by :class:`_UpgradeBody` to stop llhttp where an ``Upgrade`` request's body
    ends."""


class _UpgradeBody:
    """The llhttp callbacks of the parser that reads an ``Upgrade`` request's body (fed a
    head of its own with the request's framing first): the body goes to ``conn``'s
    ``on_body``, its end to ``on_message_complete``, and parsing stops there."""

    __slots__ = ("_conn", "on_body")

    def __init__(self, conn: Downstream) -> None:
        self._conn = conn
        self.on_body = conn.on_body

    def on_message_complete(self) -> None:
        self._conn.on_message_complete()
        raise _BodyEnd


class Exchange:
    """One request of a client connection and its reply.

    ``method`` and ``target`` are the bytes of the request line, ``headers`` the (name, value)
    pairs as received, ``index`` the first value of each (lower-case) name and ``lines`` those
    to forward (see the attribute). The application reads the body with :meth:`body` or
    :meth:`peek` or hands it to an upstream connection with :meth:`pipe_to`, and answers with
    :meth:`respond` or by passing the exchange as the upstream's reply sink.
    """

    __slots__ = (
        "_chunked_reply",
        "_chunks",
        "_out",
        "_pipe",
        "_size",
        "_waiter",
        "chunked",
        "complete",
        "conn",
        "content_length",
        "context",
        "deferred",
        "extra",
        "finished",
        "forwarded",
        "has_body",
        "headers",
        "index",
        "keep_alive",
        "label",
        "lines",
        "method",
        "reply_started",
        "sent",
        "started",
        "status",
        "target",
        "upstream",
        "version",
    )

    def __init__(
        self,
        conn: Downstream,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        version: str,
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        index: dict[bytes, bytes] | None = None,
        lines: list[bytes] | None = None,
    ) -> None:
        self.conn = conn
        self.method = method
        self.target = target
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.has_body = chunked or bool(content_length)
        self.complete = not self.has_body  #: the whole request has arrived
        self.started = time.perf_counter()
        self.status = 0
        self.reply_started = False
        self.finished = False
        self.sent = 0  #: body bytes written to the client
        self.forwarded = 0  #: body bytes sent upstream
        self.extra = b""  #: header lines added to every reply (the request id)
        self.label = ""  #: the metrics route label, set by the application
        self.context: Any = None  #: the application's
        self.deferred = False  #: the application is called once the body is complete
        #: first value per lower-case header name
        self.index: dict[bytes, bytes] = {} if index is None else index
        #: the header lines to forward (``name``, ``: ``, ``value``, CRLF pieces): the headers
        #: without hop-by-hop ones and the listener's ``request_drop``; None when a
        #: ``Connection`` header names more (then filter with :func:`end_to_end`)
        self.lines = lines
        self.upstream: UpstreamConnection | None = None
        self._chunks: list[bytes | memoryview] = []  # views of segments read: no copy
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._pipe: UpstreamConnection | None = None
        self._out: list[bytes | memoryview] = []
        self._chunked_reply = False

    @property
    def remote(self) -> bytes:
        return self.conn.remote

    def header(self, lower_name: bytes) -> bytes | None:
        """The first value of a header (``lower_name`` in lower case), None when absent."""
        return self.index.get(lower_name)

    # ---- the request body ------------------------------------------------------------------

    def _on_body(self, data: bytes | memoryview) -> None:
        if self._pipe is not None:
            self.forwarded += len(data)
            self._pipe.send_body(data)
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > BUFFER:
            self.conn.pause("buffer")
        if self._waiter is not None:
            self._wake()

    def _on_complete(self) -> None:
        self.complete = True
        if self._pipe is not None:
            self._pipe.end_body()
        if self._waiter is not None:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail_wait(self, error: Exception) -> bool:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return False
        self._waiter = None
        waiter.set_exception(error)
        return True

    async def _more(self) -> None:
        if self.conn.closed:
            raise ClientGone("connection closed")
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        self.conn.resume("buffer")
        await waiter

    async def body(self, limit: int) -> bytes:
        """The whole body; :class:`BodyTooLarge` beyond ``limit`` bytes, :class:`BodyTimeout`,
        :class:`ClientGone`."""
        while not self.complete:
            if self._size > limit:
                raise BodyTooLarge
            await self._more()
        if self._size > limit:
            raise BodyTooLarge
        chunks = self._chunks
        self._chunks, self._size = [], 0
        return _joined(chunks)

    async def peek(self, limit: int) -> bytes:
        """The body received so far, once it holds a byte other than whitespace (or is
        complete, or above ``limit`` bytes); it stays buffered."""
        while not self.complete and self._size <= limit:
            if any(bytes(c).lstrip(_WS) for c in self._chunks):
                break
            await self._more()
        return b"".join(self._chunks)

    def take_body(self) -> bytes:
        """The complete body, at once (only when :attr:`complete`)."""
        chunks = self._chunks
        self._chunks, self._size = [], 0
        return _joined(chunks)

    def pipe_to(self, conn: UpstreamConnection) -> None:
        """Send the body to ``conn`` (what is buffered now, the rest as it arrives)."""
        self._pipe = conn
        chunks = self._chunks
        self._chunks, self._size = [], 0
        for chunk in chunks:
            self.forwarded += len(chunk)
            conn.send_body(chunk)
        self.conn.resume("buffer")
        if self.complete:
            conn.end_body()

    # ---- replies ---------------------------------------------------------------------------

    def interim(self, line: bytes) -> None:
        """Write an interim (1xx) reply, e.g. ``100 Continue``."""
        if not self.reply_started and not self.conn.closed:
            self.conn.write(line)

    def respond(
        self,
        status: int,
        body: bytes,
        *,
        content_type: bytes = b"text/plain; charset=utf-8",
        headers: list[bytes] | None = None,
        reason_phrase: bytes | None = None,
    ) -> None:
        """The whole reply (a no-op once a reply has started or the client left).
        ``headers`` are header lines (``name: value\\r\\n`` pieces) added as they are."""
        if self.reply_started or self.finished:
            return
        self.reply_started = True
        self.status = status
        close = not self.keep_alive or not self.complete or self.conn.closed
        self.keep_alive = not close
        parts = [
            b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase or reason(status)),
            *(headers or ()),
        ]
        if content_type:
            parts.append(b"Content-Type: %s\r\n" % content_type)
        parts.append(b"Content-Length: %d\r\n" % len(body))
        parts.append(self.extra)
        parts.append(b"Connection: close\r\n\r\n" if close else self._keep_alive_line())
        if self.method != b"HEAD":
            parts.append(body)
            self.sent = len(body)
        self.conn.write(b"".join(parts))
        self._finish()

    def _keep_alive_line(self) -> bytes:
        return b"\r\n" if self.version == "1.1" else b"Connection: keep-alive\r\n\r\n"

    # ReplySink: the upstream's reply, relayed

    def bind(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        if self.conn.writing_paused and conn.transport is not None:
            conn.transport.pause_reading()

    def reply_head(self, reply: Reply) -> None:
        if self.finished:
            return
        self.reply_started = True
        self.status = reply.status
        parts = [_status_line(reply.status, reply.reason)]
        parts += end_to_end(reply.headers, self.conn.server.reply_drop)
        if reply.body and (reply.chunked or reply.until_close):
            if self.version == "1.1":
                self._chunked_reply = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False  # the end of the body is the end of the connection
        elif reply.content_length is not None and reply.status != 204:
            parts.append(b"Content-Length: %d\r\n" % reply.content_length)
        parts.append(self.extra)
        parts.append(self._keep_alive_line() if self.keep_alive else b"Connection: close\r\n\r\n")
        self._out.append(b"".join(parts))

    def reply_body(self, data: bytes | memoryview) -> None:
        if self.finished:
            return
        self.sent += len(data)
        if self._chunked_reply:
            self._out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self._out.append(data)

    def flush(self) -> None:
        out = self._out
        if out:
            self._out = []
            if not self.finished:
                self.conn.write_all(out)

    def reply_end(self) -> None:
        if self.finished:
            return
        if self._chunked_reply:
            self._out.append(b"0\r\n\r\n")
        self.flush()
        self.upstream = None
        self._finish()

    def request_failed(self, error: UpstreamError) -> None:
        self.upstream = None
        self.conn.server.app.failed(self, error)

    def reply_failed(self, error: UpstreamError) -> None:
        if self.finished:
            return
        log.warning("upstream reply to %s broke off: %s", self.path, error)
        self.flush()
        self.upstream = None
        self.keep_alive = False
        self._finish()

    def pause_source(self) -> None:
        self.conn.pause("upstream")

    def resume_source(self) -> None:
        self.conn.resume("upstream")

    # ---- ends ------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self.target.decode("latin-1").partition("?")[0]

    def _finish(self) -> None:
        self.finished = True
        self.conn.finished(self)

    def _gone(self, exc: Exception | None) -> None:
        """The client connection closed while this exchange was open."""
        why = str(exc) if exc else "connection closed"
        if not self._fail_wait(ClientGone(why)):
            if not self.complete:
                log.info("%s %s: client left mid-body: %s", self.method.decode(), self.path, why)
            elif self.reply_started:
                log.info("client left during the reply to %s: %s", self.path, why)
        self.finished = True
        for conn in (self._pipe, self.upstream):
            if conn is not None:
                conn.abort()
        self._pipe = self.upstream = None

    def _body_timeout(self) -> None:
        """``request_timeout`` seconds passed without a byte of the unfinished body."""
        if self._fail_wait(BodyTimeout()):
            return  # the application answers
        for conn in (self._pipe, self.upstream):
            if conn is not None:
                conn.abort()
        self._pipe = self.upstream = None
        self.respond(408, self.conn.server.body_timeout_message)
        if not self.finished:  # the reply had started: cut it
            self.keep_alive = False
            self._finish()


class Downstream(asyncio.Protocol):
    """One client connection of a :class:`RelayListener` (see the module docstring)."""

    deadline: float

    def __init__(self, server: RelayListener) -> None:
        self.server = server
        self.deadline = 0.0
        self.transport: asyncio.Transport | None = None
        self.parser = HttpRequestParser(self)
        self.remote = b""
        self.closed = False
        self.writing_paused = False
        self.current: Exchange | None = None
        self._parsing: Exchange | None = None
        self._queue: collections.deque[Exchange] = collections.deque()
        self._paused: set[str] = set()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._index: dict[bytes, bytes] = {}
        self._lines: list[bytes] = []
        self._named = False  # a Connection header: it may name more headers to drop
        self._drop = server.request_drop
        self._head_size = 0
        self._length: int | None = None
        self._chunked = False
        self._dead = False  # the parser stopped (upgrade, error)
        #: an Upgrade request whose body llhttp skips (read by an :class:`_UpgradeBody` parser)
        self._upgrade: Exchange | None = None
        self._raw_left = 0  # bytes of a Content-Length body still to come, past the parser
        self._body_seen = 0  # body bytes of the message being parsed the parser passed on
        self._fed = False  # body bytes of the current request arrived in this segment
        self.sweeper = server.sweeper  # created in the serving loop, as this protocol

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.set_write_buffer_limits(WRITE_BUFFER)
        peer = transport.get_extra_info("peername")
        if peer:
            self.remote = str(peer[0]).encode()
        server = self.server
        server.connections.add(self)
        server.guard.opened(transport)
        if transport.is_closing():  # refused by the guard
            return
        if server.idle_timeout:
            self.sweeper.arm(self, server.idle_timeout)

    def data_received(self, data: bytes) -> None:
        rest: bytes | memoryview = data
        while rest and not self._dead:
            rest = self._raw_body(rest) if self._raw_left else self._parse(rest)
        if self._fed:  # once per segment, not per piece of body
            self._fed = False
            ex = self.current
            if ex is not None and not ex.complete and self.deadline:
                self.sweeper.arm(self, self.server.request_timeout)

    def _parse(self, data: bytes | memoryview) -> bytes | memoryview:
        """Feed ``data`` to llhttp; return what follows a request head whose
        ``Content-Length`` body is then relayed past the parser (:meth:`_raw_body`), else
        nothing. A head that ends inside ``data`` is fed alone, so that the body bytes after it
        are not copied by the parser's ``on_body``."""
        if isinstance(data, memoryview):
            data = bytes(data)  # rare: a pipelined request after a body in one segment
        rest: bytes | memoryview = b""
        if not self._body_seen and len(data) > RAW_MIN:  # a head, then a large body?
            end = data.find(b"\r\n\r\n") + 4
            if 4 <= end <= len(data) - RAW_MIN:
                data, rest = data[:end], memoryview(data)[end:]
        if not self._feed(data):
            return b""
        if self._to_raw():
            return rest
        if rest and self._feed(rest):
            self._to_raw()
        return b""

    def _to_raw(self) -> bool:
        """When the parser is inside a ``Content-Length`` body with at least :data:`RAW_MIN`
        bytes to come, relay them past the parser from now on."""
        ex = self._parsing
        if (
            ex is None
            or ex.complete
            or not ex.content_length
            or ex.content_length - self._body_seen < RAW_MIN
        ):
            return False
        self._raw_left = ex.content_length - self._body_seen
        return True

    def _raw_body(self, data: bytes | memoryview) -> bytes | memoryview:
        """Relay the next bytes of a ``Content-Length`` body as received (``on_body``
        without the parser, which never sees them); return what follows the body."""
        left = self._raw_left
        rest: bytes | memoryview = b""
        if len(data) > left:
            view = memoryview(data)
            data, rest = view[:left], view[left:]
        self._raw_left = left - len(data)
        try:
            self.on_body(data)
            if not self._raw_left:
                self.parser = HttpRequestParser(self)  # the old one still expects the body
                self.on_message_complete()
                if self._upgrade is not None:
                    self._dead = True  # nothing after an Upgrade request is parsed
        except Exception:
            log.error("relay failed on a request body", exc_info=True)
            self._refuse(500, "internal error")
            return b""
        return rest

    def _feed(self, data: bytes | memoryview) -> bool:
        """Feed ``data`` to llhttp; False when the connection stops being parsed."""
        upgrade_at: int | None = None
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:  # served as a plain request, then closed
            upgrade_at = exc.args[0]
        except HttpParserCallbackError as exc:  # raised by one of the callbacks below
            if isinstance(exc.__context__, _BodyEnd):
                self._dead = True  # nothing after an Upgrade request is parsed
            elif isinstance(exc.__context__, _HeadTooLarge):
                self._refuse(431, f"request head larger than {MAX_HEAD} bytes")
            else:
                log.error("relay failed on a request", exc_info=exc.__context__)
                self._refuse(500, "internal error")
        except HttpParserError as exc:
            self._refuse(400, f"malformed request: {exc}")
        if upgrade_at is not None:  # outside the handler: a later error keeps its own context
            return self._upgraded(data[upgrade_at:])
        return not self._dead

    def _upgraded(self, rest: bytes | memoryview) -> bool:
        """llhttp stopped after the head of an ``Upgrade`` request, before ``rest``: it is
        answered after those pipelined before it (which keep their keep-alive), then the
        connection closes; its body, if any, is read by :meth:`_upgrade_body`."""
        if self._parsing is not None:  # the Upgrade request
            self._parsing.keep_alive = False
        if self._upgrade is not None:  # its body is still to be read
            return self._upgrade_body(self._upgrade, rest)
        self._dead = True
        return False

    def _upgrade_body(self, ex: Exchange, rest: bytes | memoryview) -> bool:
        """llhttp stopped after the head of ``ex``, an ``Upgrade`` request with a body, before
        ``rest``: parse the body from now on with a parser of its own that stops where it ends
        (:class:`_UpgradeBody`, told the framing by a head of the same ``Content-Length`` or
        chunked framing); feed it ``rest``. False when the connection stops being parsed."""
        self.parser = HttpRequestParser(_UpgradeBody(self))
        if ex.chunked:
            framing = b"Transfer-Encoding: chunked"
        else:
            framing = b"Content-Length: %d" % (ex.content_length or 0)
        self.parser.feed_data(b"POST / HTTP/1.1\r\n%s\r\n\r\n" % framing)
        return self._feed(rest) if rest else True

    def eof_received(self) -> bool | None:
        """The client half-closed: over TCP its complete open request is still answered,
        then the connection closes. A TLS transport cannot stay half-open (asyncio's closes
        itself after the client's ``close_notify`` and ignores a true return): there the
        client is gone, as when it closes the connection."""
        ex = self.current
        if ex is not None and ex.complete and not ex.finished and self.server.ssl_context is None:
            ex.keep_alive = False  # answer, then close
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        server = self.server
        server.connections.discard(self)
        self.sweeper.forget(self)
        if self.transport is not None:
            server.guard.closed(self.transport)
            self.transport.close()  # asyncio < 3.11 leaves a TLS transport open after close_notify
        ex = self.current
        if ex is not None and not ex.finished:
            ex._gone(exc)
            server.app.done(ex)
        self.current = self._parsing = None
        self._queue.clear()

    def pause_writing(self) -> None:
        self.writing_paused = True
        upstream = self.current.upstream if self.current is not None else None
        if upstream is not None and upstream.transport is not None:
            upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        upstream = self.current.upstream if self.current is not None else None
        if upstream is not None and upstream.transport is not None and not upstream.closed:
            upstream.transport.resume_reading()

    # ---- llhttp callbacks ------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD:
            raise _HeadTooLarge
        lower = _lower_name(name)
        index = self._index
        if lower not in index:
            index[lower] = value
        if lower not in self._drop:
            lines = self._lines
            lines.append(name)
            lines.append(b": ")
            lines.append(value)
            lines.append(b"\r\n")
        elif lower == b"content-length":  # the framing headers are hop-by-hop
            self._length = int(value)  # llhttp checked it
        elif lower == b"transfer-encoding":
            self._chunked = True  # llhttp refuses anything not ending in chunked
        elif lower == b"connection":
            self._named = True

    def on_headers_complete(self) -> None:
        parser = self.parser
        method = parser.get_method()
        keep_alive = parser.should_keep_alive()
        ex = Exchange(
            self,
            method,
            self._url,
            self._headers,
            # llhttp takes HTTP/0.9, 1.0, 1.1 and 2.0 and keeps only 1.1 alive by default: so
            # the version without get_http_version's str.format (~2 % of a small request)
            "1.1" if keep_alive and not self._named else parser.get_http_version(),
            keep_alive,
            self._length,
            self._chunked,
            self._index,
            None if self._named else self._lines,
        )
        self._parsing = ex
        if (self._length or self._chunked) and method != b"CONNECT" and parser.should_upgrade():
            self._upgrade = ex  # llhttp skips the body: read it past llhttp (_upgrade_body)
        # the next message starts empty (no on_message_begin: one callback less per request)
        self._url = b""
        self._headers = []
        self._index = {}
        self._lines = []
        self._named = False
        self._head_size = 0
        self._length = None
        self._chunked = False
        if self.current is None:
            self._start(ex)
        else:  # pipelined: served after the current one
            self._queue.append(ex)
            self.pause("pipeline")

    def on_body(self, body: bytes | memoryview) -> None:
        self._body_seen += len(body)
        ex = self._parsing
        if ex is not None:
            if ex is self.current:
                self._fed = True  # the deadline moves on at the end of the segment
            ex._on_body(body)

    def on_message_complete(self) -> None:
        ex = self._parsing
        if ex is not None and ex is self._upgrade and self.parser.should_upgrade():
            return  # llhttp skipped the body: its end is still to come (_upgrade_body)
        self._body_seen = 0
        if ex is not None:
            if ex is self.current:
                self.deadline = 0.0
            ex._on_complete()
            if ex.deferred and ex is self.current and not ex.finished:
                ex.deferred = False
                self.server.app.serve(ex)

    # ---- serving ---------------------------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        self.current = ex
        server = self.server
        assert self.transport is not None
        server.guard.busy(self.transport)
        if ex.has_body and not ex.complete and "upstream" not in self._paused:
            self.sweeper.arm(self, server.request_timeout)
            length = ex.content_length
            if length is not None and length <= server.collect and b"expect" not in ex.index:
                ex.deferred = True  # small: served whole, from on_message_complete
                return
        else:
            self.deadline = 0.0
        server.app.serve(ex)

    def finished(self, ex: Exchange) -> None:
        """``ex`` is answered: serve the next request, or wait for one, or close."""
        server = self.server
        server.app.done(ex)
        if ex is not self.current:
            return
        self.current = None
        if self.closed:
            return
        assert self.transport is not None
        if not ex.keep_alive or not ex.complete or (self._dead and not self._queue):
            self.deadline = 0.0
            self.transport.close()
            return
        server.guard.idle(self.transport)
        if self._paused:
            self.resume("upstream")
            self.resume("buffer")
        if self._queue:
            ex = self._queue.popleft()
            if not self._queue:
                self.resume("pipeline")
            self._start(ex)
        elif server.idle_timeout:
            self.sweeper.arm(self, server.idle_timeout)
        else:
            self.deadline = 0.0

    def expired(self) -> None:
        ex = self.current
        if ex is None:  # idle
            if self.transport is not None:
                self.transport.close()
        elif not ex.complete:
            ex._body_timeout()

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def write_all(self, pieces: list[bytes | memoryview]) -> None:
        if not self.closed and self.transport is not None:
            if len(pieces) == 1:
                self.transport.write(pieces[0])
            else:
                self.transport.writelines(pieces)  # uvloop: one writev

    def pause(self, reason: str) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(reason)
        if reason == "upstream":
            self.deadline = 0.0  # the upstream's deadline applies meanwhile

    def resume(self, reason: str) -> None:
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if not self._paused and not self.closed and self.transport is not None:
            self.transport.resume_reading()
            ex = self.current
            if reason == "upstream" and ex is not None and not ex.complete:
                self.sweeper.arm(self, self.server.request_timeout)

    def _refuse(self, status: int, message: str) -> None:
        """The client sent something that is not HTTP/1.1: answer (if nothing of a reply was
        written yet) and close."""
        self._dead = True
        ex = self.current
        if ex is not None and not ex.finished:
            ex.keep_alive = False
            if ex.complete:  # a later (pipelined) request is bad: close after this one
                return
            if ex._fail_wait(ClientGone(message)):
                return  # the application answers and the connection closes
            for conn in (ex._pipe, ex.upstream):
                if conn is not None:
                    conn.abort()
            ex._pipe = ex.upstream = None
            ex.respond(status, message.encode() + b"\n")
            if not ex.finished:  # the reply had started: cut it
                ex._finish()
            return
        if self.transport is not None and not self.closed:
            body = message.encode() + b"\n"
            self.transport.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (status, reason(status), len(body), body)
            )
            self.transport.close()


class RelayListener(Listener):
    """An HTTP listener served by :class:`Downstream` connections for ``app``; ``guard``
    watches its connections. ``app.serve`` is called once a request head has arrived, or,
    for a ``Content-Length`` body of at most ``collect`` bytes without ``Expect``, once the
    body has arrived too (the common small request is then relayed without waiting). On close
    it stops accepting, closes idle connections at once and gives open requests ``grace``
    seconds. ``reply_drop`` and ``request_drop`` name headers (lower case) not relayed
    besides the hop-by-hop ones (:attr:`Exchange.lines` leaves out ``request_drop``)."""

    def __init__(
        self,
        app: Application,
        guard: HttpGuard,
        host: str,
        port: int,
        *,
        request_timeout: float,
        idle_timeout: float = 0.0,
        collect: int = 64 * 1024,
        reply_drop: frozenset[bytes] = HOP_BY_HOP,
        request_drop: frozenset[bytes] = HOP_BY_HOP,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
        label: str = "",
        grace: float = GRACE,
    ) -> None:
        scheme = "https" if ssl_context is not None else "http"
        super().__init__(host, port, label=label, scheme=scheme, grace=grace)
        self.app, self.guard = app, guard
        self.request_timeout, self.idle_timeout = request_timeout, idle_timeout
        self.collect = collect
        self.body_timeout_message = (
            f"request body not received within {request_timeout:g} s\n".encode()
        )
        self.reply_drop = HOP_BY_HOP | reply_drop
        self.request_drop = HOP_BY_HOP | request_drop
        self.ssl_context, self.handshake_timeout = ssl_context, handshake_timeout
        self.connections: set[Downstream] = set()
        self.server: asyncio.Server | None = None
        self._sweeper: Sweeper | None = None

    @property
    def sweeper(self) -> Sweeper:
        if self._sweeper is None:
            self._sweeper = Sweeper()
        return self._sweeper

    async def open(self, reuse_port: bool) -> int:
        loop = asyncio.get_running_loop()
        extra: dict[str, Any] = {}
        if self.ssl_context is not None:
            extra = {"ssl": self.ssl_context, "ssl_handshake_timeout": self.handshake_timeout}
        self.server = await loop.create_server(
            lambda: Downstream(self),
            self.host,
            self.port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            **extra,
        )
        # untyped: uvloop's Server.sockets is a list where typeshed says tuple, a type the
        # compiled build (compiled.py) would check
        server: Any = self.server
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        server.close()
        deadline = time.monotonic() + self.grace
        while True:
            for conn in list(self.connections):
                if conn.current is None and conn.transport is not None:
                    conn.transport.close()
            if not self.connections or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), self.grace)
        if self._sweeper is not None:
            self._sweeper.close()
            self._sweeper = None
