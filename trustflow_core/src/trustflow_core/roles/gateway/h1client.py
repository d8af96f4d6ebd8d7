"""A small HTTP/1.1 client for the gateway's upstream side: keep-alive pools per endpoint,
bytes or streamed request bodies, responses read whole or streamed.

Why not ``aiohttp.ClientSession``: relaying needs none of its features (cookies, redirects,
decompression, tracing) and it costs about four times the CPU per request, which halves the
gateway's throughput. Framing follows RFC 9112: ``Content-Length``, ``chunked``, or
read-until-close; no body for ``HEAD``, 1xx, 204 and 304; interim 1xx replies are skipped.
A connection goes back to its pool only when the response was read completely and neither
side asked to close it. A request whose reused connection turns out to be closed before any
byte of the answer arrived is retried once on a new connection, when its body is replayable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

from multidict import CIMultiDict

from ...errors import TrustflowError
from .config import Address

MAX_HEAD = 64 * 1024
CHUNK = 64 * 1024


class UpstreamError(TrustflowError):
    """The upstream could not be used (refused, reset, malformed reply)."""


class UpstreamConnectTimeout(UpstreamError):
    """No connection within the cluster's connect timeout."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer (or stopped sending) within the request timeout."""


class _StaleConnection(UpstreamError):
    """A reused connection was closed before the answer started."""


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False
    timed_out: bool = False

    def close(self) -> None:
        self.writer.close()

    def _expire(self) -> None:
        self.timed_out = True
        self.writer.transport.abort()

    def deadline(self, seconds: float) -> asyncio.TimerHandle:
        """Abort the connection unless the returned timer is cancelled within ``seconds``
        (cheaper than ``asyncio.wait_for``, which creates a task per call)."""
        return asyncio.get_running_loop().call_later(seconds, self._expire)


@dataclass
class UpstreamResponse:
    """Status line and headers; the body is read with :meth:`read` or :meth:`iter_chunks`,
    then :meth:`release` must be called (it pools or closes the connection)."""

    status: int
    reason: str
    headers: CIMultiDict[str]
    content_length: int | None
    _conn: _Conn = field(repr=False)
    _pool: Pool = field(repr=False)
    _chunked: bool = False
    _until_close: bool = False
    _keep_alive: bool = True
    _timeout: float = 15.0
    _done: bool = False

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        reader = self._conn.reader
        try:
            if self.content_length is not None:
                left = self.content_length
                while left:
                    data = await self._wait(reader.read(min(left, CHUNK)))
                    if not data:
                        raise UpstreamError("upstream closed the connection mid-body")
                    left -= len(data)
                    yield data
            elif self._chunked:
                while True:
                    line = await self._wait(reader.readuntil(b"\r\n"))
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise UpstreamError("upstream sent a bad chunk size") from None
                    if size == 0:
                        while (await self._wait(reader.readuntil(b"\r\n"))) != b"\r\n":
                            pass  # trailers are dropped
                        break
                    left = size
                    while left:
                        data = await self._wait(reader.read(min(left, CHUNK)))
                        if not data:
                            raise UpstreamError("upstream closed the connection mid-chunk")
                        left -= len(data)
                        yield data
                    if await self._wait(reader.readexactly(2)) != b"\r\n":
                        raise UpstreamError("upstream chunk not followed by CRLF")
            elif self._until_close:
                while data := await self._wait(reader.read(CHUNK)):
                    yield data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            raise UpstreamError(f"upstream reply broke off: {exc!r}") from None
        self._done = True

    async def read(self, limit: int) -> bytes:
        """The whole body; :class:`OverflowError` beyond ``limit`` bytes."""
        if self.content_length is not None and self.content_length > limit:
            raise OverflowError(self.content_length)
        if self.content_length is not None and self.content_length <= CHUNK:
            try:
                data: bytes = await self._wait(self._conn.reader.readexactly(self.content_length))
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise UpstreamError(f"upstream reply broke off: {exc!r}") from None
            self._done = True
            return data
        buf = bytearray()
        async for chunk in self.iter_chunks():
            buf += chunk
            if len(buf) > limit:
                raise OverflowError(len(buf))
        return bytes(buf)

    async def _wait(self, aw):  # type: ignore[no-untyped-def]
        timer = self._conn.deadline(self._timeout)
        try:
            return await aw
        except (asyncio.IncompleteReadError, ConnectionError):
            if self._conn.timed_out:
                raise UpstreamTimeout(f"no data within {self._timeout:g} s") from None
            raise
        finally:
            timer.cancel()

    def release(self) -> None:
        if self._done and self._keep_alive and not self._until_close:
            self._pool.put(self._conn)
        else:
            self._conn.close()


class Pool:
    """Idle keep-alive connections to one endpoint."""

    def __init__(self, address: Address, size: int) -> None:
        self.address = address
        self.size = size
        self._idle: collections.deque[_Conn] = collections.deque()

    def get(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                conn.reused = True
                return conn
            conn.close()
        return None

    def put(self, conn: _Conn) -> None:
        if len(self._idle) < self.size:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


async def _connect(address: Address, timeout: float) -> _Conn:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address.host, address.port, limit=MAX_HEAD), timeout
        )
    except asyncio.TimeoutError:
        raise UpstreamConnectTimeout(f"connect timed out after {timeout:g} s") from None
    except OSError as exc:
        raise UpstreamError(f"unreachable: {exc.strerror or exc!r}") from None
    return _Conn(reader, writer)


def _head(method: str, target: str, headers: list[tuple[str, str]], framing: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    if framing:
        lines.append(framing)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send(
    conn: _Conn, head: bytes, body: bytes | AsyncIterable[bytes] | None, chunked: bool
) -> None:
    writer = conn.writer
    if body is None or isinstance(body, bytes):
        writer.write(head + body if body else head)
    else:
        writer.write(head)
        async for chunk in body:
            if not chunk:
                continue
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
    await writer.drain()


async def _read_head(conn: _Conn) -> tuple[int, str, CIMultiDict[str]]:
    while True:
        try:
            raw = await conn.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and conn.reused:
                raise _StaleConnection("reused connection closed") from None
            raise UpstreamError("upstream closed the connection before answering") from None
        except asyncio.LimitOverrunError:
            raise UpstreamError(f"upstream reply head larger than {MAX_HEAD} bytes") from None
        lines = raw[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise UpstreamError(f"upstream sent a malformed status line {lines[0][:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            continue  # interim reply
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise UpstreamError(f"upstream sent a malformed header line {line[:80]!r}")
            headers.add(name, value.strip())
        return status, parts[2] if len(parts) > 2 else "", headers


class H1Client:
    """Keep-alive HTTP/1.1 requests to endpoints (one pool each)."""

    def __init__(self, pool_size: int = 1024) -> None:
        self.pool_size = pool_size
        self._pools: dict[Address, Pool] = {}

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
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = Pool(address, self.pool_size)
        if isinstance(body, bytes):
            framing, chunked = f"Content-Length: {len(body)}", False
        elif body is None:
            has_body = method not in ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE")
            framing, chunked = ("Content-Length: 0" if has_body else ""), False
        elif content_length is not None:
            framing, chunked = f"Content-Length: {content_length}", False
        else:
            framing, chunked = "Transfer-Encoding: chunked", True
        head = _head(method, target, headers, framing)
        replayable = body is None or isinstance(body, bytes)
        for attempt in (0, 1):
            conn = pool.get() if attempt == 0 else None
            if conn is None:
                conn = await _connect(address, connect_timeout)
            timer = conn.deadline(read_timeout)
            try:
                await _send(conn, head, body, chunked)
                status, reason, reply_headers = await _read_head(conn)
            except (UpstreamError, ConnectionError, OSError) as exc:
                conn.close()
                if conn.timed_out:
                    raise UpstreamTimeout(f"no answer within {read_timeout:g} s") from None
                stale = isinstance(exc, _StaleConnection) or (
                    conn.reused and not isinstance(exc, UpstreamError)
                )
                if stale and replayable and attempt == 0:
                    continue
                if isinstance(exc, UpstreamError) and not isinstance(exc, _StaleConnection):
                    raise
                raise UpstreamError(f"connection failed: {exc!r}") from None
            except BaseException:
                conn.close()
                raise
            finally:
                timer.cancel()
            return _response(conn, pool, method, status, reason, reply_headers, read_timeout)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()


def _response(
    conn: _Conn,
    pool: Pool,
    method: str,
    status: int,
    reason: str,
    headers: CIMultiDict[str],
    timeout: float,
) -> UpstreamResponse:
    keep_alive = "close" not in headers.get("Connection", "").lower()
    no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
    chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
    length: int | None = None
    if no_body:
        length = 0
    elif not chunked and "Content-Length" in headers:
        with contextlib.suppress(ValueError):
            length = int(headers["Content-Length"])
        if length is None or length < 0:
            conn.close()
            raise UpstreamError(f"upstream sent a bad Content-Length {headers['Content-Length']!r}")
    response = UpstreamResponse(
        status=status,
        reason=reason,
        headers=headers,
        content_length=length if not chunked else None,
        _conn=conn,
        _pool=pool,
        _chunked=chunked and not no_body,
        _until_close=length is None and not chunked,
        _keep_alive=keep_alive,
        _timeout=timeout,
    )
    if length == 0:
        response._done = True
    return response
