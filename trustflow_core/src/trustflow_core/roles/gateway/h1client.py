"""The gateway's upstream HTTP/1.1 client: an :class:`asyncio.Protocol` per connection with
llhttp (``httptools``) parsing the replies, keep-alive pools per endpoint.

A request is a head (bytes, built by the caller with its framing header) and a body given
whole (bytes) or streamed afterwards (:meth:`UpstreamConnection.send_body`, re-framed as
chunks when the connection was opened for a chunked body). The reply goes to a
:class:`ReplySink` as it is parsed (head, body pieces, end, or failure) from the protocol's
callbacks: nothing is buffered here, and :meth:`ReplySink.flush` is called once per received
segment so that the sink can write what it got in one piece. A ``Content-Length`` body goes
to the sink as received (the segments, or ``memoryview`` slices of them), past llhttp, from
the first segment on when its head is followed by :data:`RAW_MIN` bytes or more.
Framing follows RFC 9112 (llhttp): ``Content-Length``, ``chunked`` (trailers dropped), or
read-until-close; no body for ``HEAD``, 1xx, 204 and 304; interim 1xx replies are skipped. A
connection goes back to its pool only when the reply was read completely, the request was
sent completely and neither side asked to close it. A request whose reused connection turns
out to be closed before any byte of the answer arrived is retried once on a new connection
when its body is replayable (:meth:`H1Client.exchange`).

Timeouts: ``read_timeout`` seconds for the reply head once the request is sent, and between
two received segments of the reply; while a streamed request body waits for the upstream to
read it (write buffer above its high-water mark), the same bound applies. Deadlines are
checked by a :class:`~.deadlines.Sweeper`, not a timer per request.

Why not ``aiohttp.ClientSession``: relaying needs none of its features (cookies, redirects,
decompression, tracing) and it costs several times the CPU per request (``benchmarks/
gateway.py`` measures both). :meth:`H1Client.request` is a small awaitable front end (whole or
iterated bodies) for callers that are not relays, and for that measurement.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Final, Protocol, cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)
from multidict import CIMultiDict

from ...errors import TrustflowError
from .config import Address
from .deadlines import Sweeper

log = logging.getLogger("trustflow.gateway")

#: Bytes a connection's write buffer holds before the other side is no longer read: a whole
#: socket read (uvloop reads up to 256 KiB), so that streaming a body does not stop and
#: start reading the other side (two epoll_ctl calls) after every read. The relay's client
#: connections use it too.
WRITE_BUFFER: Final = 256 * 1024
#: A head followed by at least this many bytes in one segment is fed to llhttp alone, so that
#: a ``Content-Length`` body after it is relayed without llhttp's copy for ``on_body``.
RAW_MIN: Final = 16 * 1024


class UpstreamError(TrustflowError):
    """The upstream could not be used (refused, reset, malformed reply)."""


class UpstreamConnectTimeout(UpstreamError):
    """No connection within the cluster's connect timeout."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer (or stopped sending) within the request timeout."""


class StaleConnection(UpstreamError):
    """A reused connection was closed before the answer started."""


class _Abandoned(UpstreamError):
    """The caller gave the request up (its client left)."""


class Reply:
    """A reply head as received: ``headers`` are the raw (name, value) pairs in order.
    ``body`` says whether a body follows; ``until_close`` that it ends with the connection.

    A plain class, not a dataclass: one is made per relayed reply, and in the compiled
    build a dataclass's ``__init__`` stays the interpreted function ``dataclasses`` wrote
    (2.4 k instructions of a 96 k small request), where this one is compiled."""

    __slots__ = ("body", "chunked", "content_length", "headers", "reason", "status", "until_close")

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        content_length: int | None,
        chunked: bool,
        body: bool,
        until_close: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.body = body
        self.until_close = until_close


class ReplySink(Protocol):
    """Where an :class:`UpstreamConnection` delivers a reply (called from its callbacks)."""

    def bind(self, conn: UpstreamConnection) -> None:
        """``conn`` carries the request from now on (it may be aborted through it)."""

    def reply_head(self, reply: Reply) -> None: ...

    def reply_body(self, data: bytes | memoryview) -> None: ...

    def reply_end(self) -> None:
        """The reply is complete (the connection is already pooled or closed)."""

    def reply_failed(self, error: UpstreamError) -> None:
        """The reply broke off after :meth:`reply_head`."""

    def request_failed(self, error: UpstreamError) -> None:
        """No reply head came (only when :meth:`UpstreamConnection.send` was asked for no
        waiter; else the waiter gets the error)."""

    def flush(self) -> None:
        """End of one received segment."""

    def pause_source(self) -> None:
        """The upstream does not read the streamed request body fast enough: stop reading it
        from the client."""

    def resume_source(self) -> None: ...


_NO_BODY_STATUS: Final = frozenset({204, 304})


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream endpoint, serving one request at a time."""

    deadline: float

    def __init__(self, pool: Pool, sweeper: Sweeper) -> None:
        self.pool = pool
        self.sweeper = sweeper
        self.deadline = 0.0
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.reused = False
        self.closed = False
        self.timed_out = False
        self.sink: ReplySink | None = None
        self.waiter: asyncio.Future[Reply] | None = None
        self.read_timeout = 15.0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_request = False
        self._reply: Reply | None = None
        self._headed = False  # the sink got the reply head
        self._got = False  # a byte of the current reply arrived
        self._body_seen = 0  # body bytes of the current reply the parser passed on
        self._raw_left = 0  # body bytes still expected past the parser
        self._sending = False  # a streamed request body is not finished
        self._chunked_body = False
        self._reset_parser = False

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.set_write_buffer_limits(WRITE_BUFFER)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # an idle connection does not talk
            self.close()
            return
        self._got = True
        if self._raw_left:
            self._raw_body(data, sink)
        else:
            rest: bytes | memoryview = b""
            if self._reply is None and len(data) > RAW_MIN:  # a head, then a large body?
                end = data.find(b"\r\n\r\n") + 4
                if 4 <= end <= len(data) - RAW_MIN:  # fed alone: the body is not copied
                    data, rest = data[:end], memoryview(data)[end:]
            self._parse(data)
            if rest and self.sink is sink:  # (else a HEAD reply, a failure: dropped)
                if self._raw_left:
                    self._raw_body(rest, sink)
                else:
                    self._parse(rest)
        if self.sink is sink and not self._sending:  # the reply goes on: wait for more
            self.sweeper.arm(self, self.read_timeout)
        sink.flush()

    def _raw_body(self, data: bytes | memoryview, sink: ReplySink) -> None:
        """The rest of a ``Content-Length`` body: relayed as received, no parser copy."""
        left = self._raw_left
        size = len(data)
        if size > left:  # more than announced: not HTTP, the connection is not reused
            data = data[:left]
        self._raw_left = max(0, left - size)
        sink.reply_body(data)
        if size >= left:
            keep_alive = size == left and self.parser.should_keep_alive()
            self.parser = HttpResponseParser(self)  # it still expects the body
            self._complete(keep_alive)

    def _parse(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self._fail(UpstreamError("upstream switched protocols"))
        except HttpParserCallbackError as exc:  # a sink failed: a bug, not the upstream's
            log.error("relaying a reply failed", exc_info=exc.__context__)
            self._fail(UpstreamError("reply could not be relayed"))
        except HttpParserError as exc:
            self._fail(UpstreamError(self._malformed(exc)))
        if self._reset_parser:
            self._reset_parser = False
            self.parser = HttpResponseParser(self)
        reply = self._reply
        if (
            reply is not None
            and reply.body
            and reply.content_length is not None
            and not reply.chunked
        ):
            self._raw_left = reply.content_length - self._body_seen

    def eof_received(self) -> bool:
        if self.sink is None:
            self.closed = True  # not to be taken from the pool any more
        return False  # close; connection_lost ends or fails the reply

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.sweeper.forget(self)
        sink = self.sink
        if sink is None:
            return
        reply = self._reply
        if reply is not None and reply.until_close and not self.timed_out:
            self._complete(False)
            sink.flush()
            return
        if self.timed_out:
            what = "no answer" if reply is None else "upstream stalled mid-reply: no data"
            error: UpstreamError = UpstreamTimeout(f"{what} within {self.read_timeout:g} s")
        elif self.reused and not self._got:
            error = StaleConnection("reused connection closed")
        elif reply is None:
            error = UpstreamError(
                "upstream closed the connection before answering"
                + (f": {exc.strerror or exc!r}" if isinstance(exc, OSError) else "")
            )
        else:
            error = UpstreamError("upstream reply broke off (connection closed mid-body)")
        self._fail(error)
        sink.flush()

    def pause_writing(self) -> None:
        if self.sink is not None and self._sending:
            self.sweeper.arm(self, self.read_timeout)
            self.sink.pause_source()

    def resume_writing(self) -> None:
        if self.sink is not None and self._sending:
            self.deadline = 0.0
            self.sink.resume_source()

    # ---- llhttp callbacks ------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        headers, reason = self._headers, self._reason
        self._headers, self._reason = [], b""
        if status < 200 and status != 101:
            return  # interim reply
        length: int | None = None
        chunked = False
        for name, value in headers:
            size = len(name)
            if size == 14 and name.lower() == b"content-length":
                length = int(value)  # llhttp checked it
            elif size == 17 and name.lower() == b"transfer-encoding":
                chunked = value.lower().rstrip().endswith(b"chunked")
        body = not (self._head_request or status in _NO_BODY_STATUS)
        reply = self._reply = Reply(
            status,
            reason,
            headers,
            length,
            chunked,
            body,
            body and length is None and not chunked,
        )
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)
        assert self.sink is not None
        self._headed = True
        self.sink.reply_head(reply)
        if self._head_request:  # llhttp would wait for the body Content-Length announces
            self._reset_parser = True
            self._complete(self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        sink = self.sink
        if sink is not None:
            sink.reply_body(body)

    def on_message_complete(self) -> None:
        if self._reply is not None:  # else an interim reply, or a HEAD reply already done
            self._complete(self.parser.should_keep_alive())

    # ---- requests --------------------------------------------------------------------------

    def send(
        self,
        head: bytes,
        body: bytes | None,
        sink: ReplySink,
        *,
        head_request: bool,
        read_timeout: float,
        streamed: bool = False,
        chunked: bool = False,
        waiter: bool = True,
    ) -> asyncio.Future[Reply] | None:
        """Send ``head`` (and ``body``); the returned future resolves with the reply head
        (which ``sink`` also gets), or fails with :class:`UpstreamError`; without ``waiter``
        there is no future and the sink hears of a failure before the head through
        :meth:`ReplySink.request_failed`. With ``streamed`` the body follows through
        :meth:`send_body` and :meth:`end_body` (as chunks when ``chunked``)."""
        assert self.transport is not None
        self.sink = sink
        self.read_timeout = read_timeout
        self._head_request = head_request
        self._got = False
        self._headed = False
        self._body_seen = self._raw_left = 0
        self._reply = None
        future = asyncio.get_running_loop().create_future() if waiter else None
        self.waiter = future
        sink.bind(self)
        if streamed:
            self._sending = True
            self._chunked_body = chunked
            self.transport.write(head)
        else:
            self.transport.write(head + body if body else head)
            self.sweeper.arm(self, read_timeout)
        return future

    def send_body(self, data: bytes | memoryview) -> None:
        """One more piece of a streamed request body."""
        if self.closed or not data:
            return
        assert self.transport is not None
        if self._chunked_body:
            self.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self.transport.write(data)

    def end_body(self) -> None:
        """The streamed request body is complete."""
        if not self._sending:
            return
        self._sending = False
        if self.closed:
            return
        assert self.transport is not None
        if self._chunked_body:
            self.transport.write(b"0\r\n\r\n")
        if self.sink is not None:
            self.sweeper.arm(self, self.read_timeout)

    def abort(self) -> None:
        """Give the request up: drop the connection, tell the sink nothing more."""
        self.sink = None
        self._reply = None
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(_Abandoned("request abandoned"))
            waiter.exception()  # retrieved: the caller may be gone
        self.close(abort=True)

    def close(self, abort: bool = False) -> None:
        self.closed = True
        self.sweeper.forget(self)
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def expired(self) -> None:
        self.timed_out = True
        if self.transport is not None:
            self.transport.abort()

    # ---- ends ------------------------------------------------------------------------------

    def _complete(self, keep_alive: bool) -> None:
        sink = self.sink
        self.sink = None
        self._reply = None
        self._raw_left = 0
        self.deadline = 0.0
        if keep_alive and not self._sending and not self.closed:
            self.pool.put(self)
        else:
            self.close()
        if sink is not None:
            sink.reply_end()

    def _fail(self, error: UpstreamError) -> None:
        sink = self.sink
        self.sink = None
        self._reply = None
        self._raw_left = 0
        self.close(abort=True)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        elif sink is not None:
            if self._headed:
                sink.reply_failed(error)
            else:
                sink.request_failed(error)

    def _malformed(self, exc: HttpParserError) -> str:
        reason = str(exc)
        if self._reply is not None:
            return f"upstream sent a malformed body: {reason}"
        if "Content-Length" in reason:
            return f"upstream sent a bad Content-Length: {reason}"
        if not self.parser.get_status_code():
            return f"upstream sent a malformed status line: {reason}"
        return f"upstream sent a malformed header line: {reason}"


class Pool:
    """Idle keep-alive connections to one endpoint (the newest first)."""

    def __init__(self, address: Address, size: int) -> None:
        self.address = address
        self.size = size
        self._idle: collections.deque[UpstreamConnection] = collections.deque()

    def get(self) -> UpstreamConnection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    def put(self, conn: UpstreamConnection) -> None:
        if len(self._idle) < self.size:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class H1Client:
    """Keep-alive HTTP/1.1 connections to endpoints (one pool each)."""

    def __init__(self, pool_size: int = 1024) -> None:
        self.pool_size = pool_size
        self._pools: dict[Address, Pool] = {}
        self._sweeper: Sweeper | None = None

    def _pool(self, address: Address) -> Pool:
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = Pool(address, self.pool_size)
        return pool

    def pooled(self, address: Address) -> UpstreamConnection | None:
        """An idle connection to ``address``, None when there is none."""
        pool = self._pools.get(address)
        return pool.get() if pool is not None else None

    async def connect(self, address: Address, timeout: float) -> UpstreamConnection:
        """A new connection; :class:`UpstreamConnectTimeout` or :class:`UpstreamError`."""
        loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = Sweeper()
        pool, sweeper = self._pool(address), self._sweeper
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamConnection(pool, sweeper), address.host, address.port
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise UpstreamConnectTimeout(f"connect timed out after {timeout:g} s") from None
        except OSError as exc:
            raise UpstreamError(f"unreachable: {exc.strerror or exc!r}") from None
        return conn

    async def exchange(
        self,
        address: Address,
        head: bytes,
        body: bytes | None,
        sink: ReplySink,
        *,
        head_request: bool,
        connect_timeout: float,
        read_timeout: float,
    ) -> Reply:
        """Send a request with a replayable body on a pooled (else new) connection; return
        the reply head once ``sink`` got it. A reused connection found closed is replaced
        once."""
        for attempt in (0, 1):
            conn = self.pooled(address) if attempt == 0 else None
            if conn is None:
                conn = await self.connect(address, connect_timeout)
            waiter = conn.send(
                head, body, sink, head_request=head_request, read_timeout=read_timeout
            )
            assert waiter is not None
            try:
                return await waiter
            except StaleConnection:
                if attempt:
                    raise UpstreamError("connection closed before answering") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def request(
        self,
        address: Address,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None,
        *,
        content_length: int | None,
        connect_timeout: float,
        read_timeout: float,
    ) -> UpstreamResponse:
        """Send the request; return once the status line and headers arrived.

        ``headers`` must not contain framing headers: ``Content-Length`` (from ``body`` or
        ``content_length``) or ``Transfer-Encoding: chunked`` (streamed body of unknown length)
        is added here.
        """
        if isinstance(body, bytes):
            framing, chunked = f"Content-Length: {len(body)}", False
        elif body is None:
            has_body = method not in ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE")
            framing, chunked = ("Content-Length: 0" if has_body else ""), False
        elif content_length is not None:
            framing, chunked = f"Content-Length: {content_length}", False
        else:
            framing, chunked = "Transfer-Encoding: chunked", True
        lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
        if framing:
            lines.append(framing)
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        collector = _Collector()
        if body is None or isinstance(body, bytes):
            reply = await self.exchange(
                address,
                head,
                body,
                collector,
                head_request=method == "HEAD",
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            )
        else:
            conn = self.pooled(address) or await self.connect(address, connect_timeout)
            waiter = conn.send(
                head,
                None,
                collector,
                head_request=method == "HEAD",
                read_timeout=read_timeout,
                streamed=True,
                chunked=chunked,
            )
            assert waiter is not None
            try:
                async for chunk in body:
                    conn.send_body(chunk)
                    await collector.writable()
                conn.end_body()
            except BaseException:
                conn.abort()
                raise
            reply = await waiter
        return UpstreamResponse(reply, collector)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        if self._sweeper is not None:
            self._sweeper.close()


class _Collector:
    """A :class:`ReplySink` that keeps the reply for :class:`UpstreamResponse`."""

    def __init__(self) -> None:
        self.conn: UpstreamConnection | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.done = False
        self.error: UpstreamError | None = None
        self._wake: asyncio.Future[None] | None = None
        self._paused: asyncio.Future[None] | None = None

    def bind(self, conn: UpstreamConnection) -> None:
        self.conn = conn

    def reply_head(self, reply: Reply) -> None:
        self.done = not reply.body

    def reply_body(self, data: bytes | memoryview) -> None:
        self.chunks.append(data if type(data) is bytes else bytes(data))

    def reply_end(self) -> None:
        self.done = True

    def reply_failed(self, error: UpstreamError) -> None:
        self.error = error

    def request_failed(self, error: UpstreamError) -> None:
        self.error = error  # not reached: request() always has a waiter

    def flush(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def pause_source(self) -> None:
        self._paused = asyncio.get_running_loop().create_future()

    def resume_source(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        self._paused = None

    async def writable(self) -> None:
        if self._paused is not None:
            await self._paused

    async def next(self) -> bytes:
        """The next piece of the body, b"" at its end."""
        while not self.chunks:
            if self.error is not None:
                raise self.error
            if self.done:
                return b""
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
        return self.chunks.popleft()


class _BodyChunks:
    """The pieces of a reply body, in order, until its end (an iterator class rather than an
    async generator, which the compiled build cannot express: roles/gateway/compiled.py)."""

    __slots__ = ("_collector",)

    def __init__(self, collector: _Collector) -> None:
        self._collector = collector

    def __aiter__(self) -> _BodyChunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._collector.next()
        if not chunk:
            raise StopAsyncIteration
        return chunk


@dataclass
class UpstreamResponse:
    """Status line and headers; the body is read with :meth:`read` or :meth:`iter_chunks`,
    then :meth:`release` must be called (it drops a connection whose reply was not read)."""

    reply: Reply
    _collector: _Collector = field(repr=False)

    @property
    def status(self) -> int:
        return self.reply.status

    @property
    def reason(self) -> str:
        return self.reply.reason.decode("latin-1")

    @property
    def headers(self) -> CIMultiDict[str]:
        return CIMultiDict(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in self.reply.headers
        )

    @property
    def content_length(self) -> int | None:
        if not self.reply.body:
            return 0
        return None if self.reply.chunked else self.reply.content_length

    def iter_chunks(self) -> AsyncIterator[bytes]:
        return _BodyChunks(self._collector)

    async def read(self, limit: int) -> bytes:
        """The whole body; :class:`OverflowError` beyond ``limit`` bytes."""
        buf = bytearray()
        async for chunk in self.iter_chunks():
            buf += chunk
            if len(buf) > limit:
                raise OverflowError(len(buf))
        return bytes(buf)

    def release(self) -> None:
        collector = self._collector
        if not collector.done and collector.error is None and collector.conn is not None:
            collector.conn.abort()
