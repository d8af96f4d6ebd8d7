"""The gateway's upstream HTTP/1.1 client against raw sockets that answer exactly as scripted:
framing (Content-Length, chunked, until close, no-body statuses, interim 1xx), keep-alive
reuse, the stale-connection retry, and malformed replies."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from trustflow_core.roles.gateway.config import Address
from trustflow_core.roles.gateway.h1client import (
    H1Client,
    UpstreamError,
    UpstreamTimeout,
)

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def scripted(replies: list[bytes], *, close_after_each: bool = False):
    """A server that reads one request head (+ Content-Length body) per reply and answers."""
    requests: list[bytes] = []
    connections = 0

    async def handle(reader, writer):
        nonlocal connections
        connections += 1
        try:
            while replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                if b"chunked" in head.lower():
                    while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) != 0:
                        body += await reader.readexactly(size)
                        await reader.readexactly(2)
                    await reader.readexactly(2)
                requests.append(head + body)
                writer.write(replies.pop(0))
                await writer.drain()
                if close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    address = Address("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        yield address, requests, lambda: connections
    finally:
        server.close()
        await server.wait_closed()


async def call(client, address, method="POST", body=b"hi", **kw):
    return await client.request(
        address,
        method,
        "/x?y=1",
        [("Host", "h"), ("X-A", "1")],
        body,
        content_length=kw.pop("content_length", None),
        connect_timeout=2,
        read_timeout=kw.pop("read_timeout", 2),
    )


async def test_content_length_chunked_and_keep_alive():
    replies = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-R: a\r\n\r\nhello",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: v\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    ]
    client = H1Client()
    async with scripted(replies) as (address, requests, connections):
        r = await call(client, address)
        assert (r.status, r.reason, r.headers["X-R"], await r.read(100)) == (
            200,
            "OK",
            "a",
            b"hello",
        )
        r.release()

        async def body():
            yield b"ab"
            yield b"cd"

        r = await call(client, address, body=body())
        assert r.status == 201 and r.content_length is None
        assert b"".join([c async for c in r.iter_chunks()]) == b"abcde"
        r.release()
        r = await call(client, address, method="GET", body=None)
        assert (r.status, await r.read(10)) == (204, b"")
        r.release()
        assert connections() == 1
    client.close()
    assert requests[0].startswith(b"POST /x?y=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nContent-Length: 2")
    assert requests[0].endswith(b"\r\n\r\nhi")
    assert b"Transfer-Encoding: chunked" in requests[1] and requests[1].endswith(b"abcd")
    assert b"Content-Length" not in requests[2]


async def test_read_until_close_and_connection_close_are_not_reused():
    replies = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    ]
    client = H1Client()
    async with scripted(replies, close_after_each=True) as (address, _, connections):
        r = await call(client, address)
        assert await r.read(10) == b"ok"
        r.release()
        r = await call(client, address)
        assert await r.read(100) == b"until close"
        r.release()
        assert connections() == 2
    client.close()


async def test_a_stale_pooled_connection_is_retried_once():
    replies = [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"]
    client = H1Client()
    async with scripted(replies, close_after_each=True) as (address, _, connections):
        r = await call(client, address)
        assert await r.read(1) == b"a"
        r.release()  # pooled, but the server closes it
        await asyncio.sleep(0.05)
        replies.append(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        r = await call(client, address)
        assert await r.read(1) == b"b"
        r.release()
        assert connections() == 2
    client.close()


async def test_a_burst_of_200_reuses_every_connection_of_the_previous_burst():
    """Keep-alive connections beyond the pool size are closed after their reply and opened again
    by the next burst: the default pool keeps 200 busy connections (it used to keep 128)."""
    burst = 200
    replies = [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"] * (2 * burst)
    client = H1Client()
    async with scripted(replies) as (address, _, connections):
        for _ in range(2):
            responses = await asyncio.gather(*(call(client, address) for _ in range(burst)))
            for r in responses:
                assert await r.read(1) == b"a"
                r.release()
        assert connections() == burst
        client.close()


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        (b"HTTP/1.1 OK\r\n\r\n", "malformed status line"),
        (b"SMTP 220 hi\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
    ],
)
async def test_malformed_replies(reply, fragment):
    client = H1Client()
    async with scripted([reply]) as (address, _, _):
        with pytest.raises(UpstreamError, match=fragment):
            await call(client, address)
    client.close()


async def test_truncated_body_and_silence():
    client = H1Client()
    async with scripted(
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], close_after_each=True
    ) as (
        address,
        _,
        _,
    ):
        r = await call(client, address)
        with pytest.raises(UpstreamError, match="broke off"):
            await r.read(100)
        r.release()

    async def silent(reader, writer):
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    address = Address("127.0.0.1", server.sockets[0].getsockname()[1])
    with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.2 s"):
        await call(client, address, read_timeout=0.2)
    server.close()
    await server.wait_closed()
    with pytest.raises(UpstreamError, match="unreachable"):
        await call(client, Address("127.0.0.1", 9))
    client.close()


async def test_a_content_length_body_in_pieces_keeps_the_connection():
    """Past the first segment a Content-Length body is relayed without the parser; the
    connection is reused after it, and one that sends more than it announced is not."""
    connections = 0

    async def pieces(reader, writer):
        nonlocal connections
        connections += 1
        try:
            for extra in (b"", b"", b"surplus"):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nabc")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"de")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"fgh" + extra)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(pieces, "127.0.0.1", 0)
    address = Address("127.0.0.1", server.sockets[0].getsockname()[1])
    client = H1Client()
    try:
        for _ in range(3):
            r = await call(client, address, method="GET", body=None)
            assert [c async for c in r.iter_chunks()] == [b"abc", b"de", b"fgh"]
            r.release()
        assert connections == 1
        r = await call(client, address, method="GET", body=None)
        r.release()
        assert connections == 2  # the surplus closed the first connection
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_a_head_and_a_large_body_in_one_segment():
    """A head followed by 16 KiB or more in one segment is parsed alone and the
    ``Content-Length`` body after it relayed as is (``RAW_MIN``): exact bytes, an interim
    reply before it, a body with more bytes than announced (not reused), a HEAD reply, a
    chunked body of the same size still parsed."""
    big = bytes(range(256)) * 256
    replies = [
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big)
        + big,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(big)
        + big
        + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big + b"surplus" * 3000,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    ]
    client = H1Client()
    async with scripted(replies) as (address, _, connections):
        for _ in range(4):
            r = await call(client, address, method="GET", body=None)
            assert await r.read(1 << 20) == big
            r.release()
        assert connections() == 1
        r = await call(client, address, method="GET", body=None)
        assert await r.read(100) == b"hello"
        r.release()
        assert connections() == 2  # the surplus closed the first connection
    client.close()
