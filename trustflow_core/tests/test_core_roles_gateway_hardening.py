"""Gateway hardening, through a real gateway on 127.0.0.1 in front of a real app server:
request targets that an app normalising paths would read differently, ``Connection``-named
headers, and 502 replies that must not describe the inside."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import posixpath
import re
import socket
from urllib.parse import unquote

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from trustflow_core.identity import self_signed_cert
from trustflow_core.manager import get_plugin_manager
from trustflow_core.roles.gateway.config import parse_config
from trustflow_core.roles.gateway.server import Gateway


@pytest.fixture(scope="module")
def deploy(tmp_path_factory):
    """An RSA-2048 app key and self-signed cert written as app.key / app.crt."""
    directory = tmp_path_factory.mktemp("deploy")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed_cert(key, "app", backdate=datetime.timedelta(days=1))
    (directory / "app.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "app.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory, key


@pytest.fixture
def pm(monkeypatch):
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "tee_sim,channel_jwe")
    return get_plugin_manager()


class NormalisingApp:
    """A minimal HTTP/1.1 app that, like many frameworks, serves the *normalised* path:
    percent-decoded, slashes merged, dot segments removed. It records what it served and
    answers with a header it names in ``Connection``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], bytes]] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        if hasattr(self.server, "close_clients"):
            self.server.close_clients()

    @staticmethod
    def normalise(target: str) -> str:
        path = re.sub("/+", "/", unquote(target.partition("?")[0]))
        return posixpath.normpath(path)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *fields = head.decode("latin-1").split("\r\n")[:-2]
                target = line.split(" ")[1]
                headers = dict(f.split(": ", 1) for f in fields)
                body = await reader.readexactly(int(headers.get("Content-Length", "0")))
                self.seen.append((self.normalise(target), headers, body))
                reply = b"served " + self.normalise(target).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    b"Connection: keep-alive, X-App-Hop\r\nX-App-Hop: internal\r\n"
                    b"X-App-Kept: yes\r\nContent-Length: %d\r\n\r\n" % len(reply) + reply
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there after close


@contextlib.asynccontextmanager
async def gateway(pm, deploy, app_port, **listener_options):
    directory, _ = deploy
    config = parse_config(
        {
            "listeners": [
                {
                    "name": "public",
                    "address": "127.0.0.1:0",
                    "routes": [
                        {"prefix": "/sealed", "cluster": "app", "require_jwe": True},
                        {"prefix": "/down", "cluster": "down"},
                        {"prefix": "/", "cluster": "app"},
                    ],
                    "jwe": {"cert_path": "app.crt", "private_key_path": "app.key"},
                    **listener_options,
                }
            ],
            "clusters": {
                "app": {"endpoints": [f"127.0.0.1:{app_port}"]},
                "down": {"endpoints": [f"127.0.0.1:{free_port()}"], "connect_timeout": 1},
            },
        },
        base=directory,
    )
    async with Gateway(config, pm) as gw:
        yield gw.addresses["public"]


async def exchange(address, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one raw request (which must ask to close the connection); return the reply."""
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (f.split(": ", 1) for f in fields)}
    return int(line.split(" ")[1]), headers, body


def post(target: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode() + body


# ---- finding 6: require_jwe cannot be bypassed with a non-normal target -------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "target",
    [
        "/./sealed",
        "/x/../sealed",
        "//sealed",
        "/%2e/sealed",
        "/x/%2E%2E/sealed",
        "/x/..;/sealed",
        "/x%2F..%2Fsealed",
        "/x/..\\sealed",
    ],
)
async def test_a_non_normal_target_never_reaches_a_require_jwe_resource(pm, deploy, target):
    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        status, _, body = await exchange(address, post(target, b"plaintext secret"))
    assert status == 400, body
    assert b"refused request target" in body
    assert app.seen == []


@pytest.mark.asyncio
async def test_normal_targets_are_routed_on_the_decoded_path_and_forwarded_as_sent(pm, deploy):
    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        status, _, body = await exchange(address, post("/se%61led", b"plaintext"))
        assert status == 415 and b"accepts only JWE envelopes" in body
        status, _, body = await exchange(address, post("/open/a%20b/?x=/../y", b"hi"))
        assert (status, body) == (200, b"served /open/a b")
        status, _, body = await exchange(
            address, b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        )
        assert (status, body) == (200, b"OK\n")
    assert [path for path, _, _ in app.seen] == ["/open/a b"]


# ---- finding 11: headers named in Connection are hop-by-hop ----------------------------------


@pytest.mark.asyncio
async def test_headers_named_in_connection_are_dropped_both_ways(pm, deploy):
    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        status, headers, body = await exchange(
            address,
            post(
                "/open",
                b"hi",
                "X-Client-Hop: secret\r\nX-Kept: yes\r\nConnection: X-Client-Hop, x-other\r\n"
                "X-Other: 1\r\n",
            ),
        )
    assert (status, body) == (200, b"served /open")
    ((_, seen, _),) = app.seen
    assert seen["X-Kept"] == "yes"
    assert "X-Client-Hop" not in seen and "X-Other" not in seen
    assert headers["x-app-kept"] == "yes"
    assert "x-app-hop" not in headers


# ---- finding 12: a 502 says nothing about the inside ------------------------------------------


@pytest.mark.asyncio
async def test_a_502_does_not_tell_the_client_the_upstream_address(pm, deploy, caplog):
    caplog.set_level(logging.WARNING, logger="trustflow.gateway")
    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        status, _, body = await exchange(
            address, b"GET /down HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        )
    assert (status, body) == (502, b"upstream unreachable\n")
    assert "127.0.0.1" in caplog.text and "down" in caplog.text  # the operator gets the detail
