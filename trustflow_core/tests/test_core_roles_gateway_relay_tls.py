"""The relay (``roles/gateway/relay.py``) when a client ends its side first, on real
listeners on 127.0.0.1: over TLS (``close_notify``) the exchange ends like a client that
leaves, without asyncio's "returning true from eof_received() has no effect" warning; over
TCP a half-closed client still gets the reply to its request. The TLS transport is closed
when the connection is lost (asyncio before 3.11 leaves it open after ``close_notify``)."""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
import socket
import ssl
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trustflow_core.identity import self_signed_cert
from trustflow_core.roles.gateway.guard import HttpGuard
from trustflow_core.roles.gateway.relay import Exchange, RelayListener


class HoldingApp:
    """An application that answers nothing itself: it keeps each exchange open."""

    def __init__(self) -> None:
        self.served = threading.Event()
        self.ended: asyncio.Event = asyncio.Event()
        self.exchanges: list[Exchange] = []

    def serve(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)
        self.served.set()

    def done(self, exchange: Exchange) -> None:
        self.ended.set()

    def failed(self, exchange: Exchange, error: Exception) -> None:
        raise AssertionError(f"no upstream here: {error}")


def server_context(tmp_path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_cert(key, "localhost", backdate=datetime.timedelta(days=1))
    (tmp_path / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    return context


def request_then_close_notify(port: int, served: threading.Event) -> bytes:
    """Send a request over TLS, wait until it is being served, end TLS (``close_notify``,
    then the server's), and return what arrived on the plain socket afterwards."""
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with client.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /held HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert served.wait(10)
        try:
            plain = tls.unwrap()
        except ssl.SSLEOFError:  # asyncio before 3.11 closes without its own close_notify
            return b""
        with plain:
            rest = b""
            while chunk := plain.recv(4096):
                rest += chunk
            return rest


@pytest.mark.asyncio
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
async def test_a_tls_client_ending_tls_mid_request_ends_the_exchange_without_warning(
    tmp_path, caplog
):
    app = HoldingApp()
    listener = RelayListener(
        app,
        HttpGuard("tls", 16, 0.0),
        "127.0.0.1",
        0,
        request_timeout=10.0,
        ssl_context=server_context(tmp_path),
    )
    port = await listener.open(reuse_port=False)
    try:
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            after = await asyncio.to_thread(request_then_close_notify, port, app.served)
            await asyncio.wait_for(app.ended.wait(), 10)
        (exchange,) = app.exchanges
        assert exchange.finished
        assert after == b""  # nothing can follow the close_notify on this transport
        assert not listener.connections
        assert not [r for r in caplog.records if "eof_received" in r.getMessage()]
        del exchange
        app.exchanges.clear()
        gc.collect()  # an unclosed transport warns here (ResourceWarning, an error above)
    finally:
        await listener.close()


@pytest.mark.asyncio
async def test_over_tcp_a_client_that_half_closes_still_gets_its_reply():
    app = HoldingApp()
    listener = RelayListener(app, HttpGuard("tcp", 16, 0.0), "127.0.0.1", 0, request_timeout=10.0)
    port = await listener.open(reuse_port=False)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /held HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(asyncio.to_thread(app.served.wait, 10), 15)
        writer.write_eof()
        (exchange,) = app.exchanges
        for _ in range(500):  # the relay sees the EOF: answer, then close
            if not exchange.keep_alive:
                break
            await asyncio.sleep(0.01)
        assert not exchange.keep_alive
        exchange.respond(200, b"late\n")
        reply = await asyncio.wait_for(reader.read(), 10)  # to the end: the relay closes
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Connection: close\r\n" in reply and reply.endswith(b"\r\n\r\nlate\n")
        writer.close()
    finally:
        await listener.close()
