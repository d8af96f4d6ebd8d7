"""Gateway hardening, through a real gateway on 127.0.0.1 in front of a real app server:
slow and idle connections and connection caps (also under a low descriptor limit), request
targets that an app normalising paths would read differently, ``Connection``-named headers,
and 502 replies that must not describe the inside."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import logging
import os
import posixpath
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from trustflow_core.identity import self_signed_cert
from trustflow_core.roles.gateway.config import parse_config
from trustflow_core.roles.gateway.server import Gateway
from trustflow_core.testing.fixtures import free_port

pytestmark = pytest.mark.plugins("tee_sim", "channel_jwe")


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


class LoopbackApp:
    """An app's server on 127.0.0.1 for the length of an ``async with`` (the port as its
    value); subclasses answer in ``serve``."""

    server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        if hasattr(self.server, "close_clients"):
            self.server.close_clients()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class NormalisingApp(LoopbackApp):
    """A minimal HTTP/1.1 app that, like many frameworks, serves the *normalised* path:
    percent-decoded, slashes merged, dot segments removed. It records what it served and
    answers with a header it names in ``Connection``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], bytes]] = []
        self.connections = 0
        self.release = asyncio.Event()  # answers to /hold wait for it

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
                if self.normalise(target) == "/hold":
                    await self.release.wait()
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


# ---- finding 4: slow, idle and too many connections -------------------------------------------

ENVOY_DIR = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "envoy"


def test_connection_limits_in_the_native_and_envoy_configs(tmp_path):
    from trustflow_core.errors import InvalidInput
    from trustflow_core.roles.gateway.config import load_config

    native = {
        "listeners": [
            {"name": "h", "address": "127.0.0.1:0", "routes": [{"prefix": "/", "cluster": "a"}]},
            {"name": "t", "address": "127.0.0.1:0", "tcp_proxy": "a", "idle_timeout": "0s"},
        ],
        "clusters": {"a": {"endpoints": ["127.0.0.1:9"]}},
    }
    http, tcp = parse_config(native).listeners
    assert (http.request_headers_timeout, http.idle_timeout, http.max_connections) == (10, 60, None)
    assert (tcp.request_headers_timeout, tcp.idle_timeout) == (0, 0)  # 0 = off
    for change, fragment in (
        ({"max_connections": 0}, "listeners[1].max_connections: expected a positive integer"),
        ({"idle_timeout": -1}, "listeners[1].idle_timeout: expected a duration"),
        ({"request_headers_timeout": 1}, "request_headers_timeout is for HTTP listeners"),
    ):
        listeners = [native["listeners"][0], {**native["listeners"][1], **change}]
        with pytest.raises(InvalidInput, match=re.escape(fragment)):
            parse_config({**native, "listeners": listeners})

    text = (ENVOY_DIR / "online-envoy.yml").read_text()
    old = "    - filters:\n      - name: envoy.filters.network.http_connection_manager\n"
    assert old in text
    text = text.replace(
        old,
        "    - filters:\n      - name: envoy.filters.network.connection_limit\n"
        "        typed_config: {stat_prefix: cl, max_connections: 300}\n"
        "      - name: envoy.filters.network.http_connection_manager\n",
    ).replace(
        "          codec_type: AUTO\n",
        "          codec_type: AUTO\n          request_headers_timeout: 2.5s\n"
        "          common_http_protocol_options: {idle_timeout: 30s}\n",
    )
    (tmp_path / "envoy.yml").write_text(text)
    (listener,) = load_config(tmp_path / "envoy.yml").listeners
    assert (listener.request_headers_timeout, listener.idle_timeout) == (2.5, 30)
    assert listener.max_connections == 300
    (tcp_listener, _) = load_config(ENVOY_DIR / "interact-bob-envoy.yml").listeners
    assert tcp_listener.idle_timeout == 3600  # Envoy's tcp_proxy default


HALF_SENT = b"GET /open HTTP/1.1\r\nHost: gw\r\nX-Slow: "


async def half_sent(address, count):
    """``count`` connections that each sent part of a request head and then nothing."""
    connections = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(HALF_SENT)
        # drained at once: on a busy machine the first connections may already have been
        # answered and closed by the time the last one is open
        await writer.drain()
        connections.append((reader, writer))
    return connections


async def closed_by_peer(reader, timeout) -> bytes:
    """What the peer sent before closing; fails if it does not close within ``timeout``."""
    return await asyncio.wait_for(reader.read(), timeout)


@pytest.mark.asyncio
async def test_half_sent_connections_are_closed_after_the_headers_timeout(pm, deploy):
    app = NormalisingApp()
    async with (
        app as app_port,
        gateway(pm, deploy, app_port, request_headers_timeout=0.5) as address,
    ):
        connections = await half_sent(address, 200)
        started = time.monotonic()
        replies = await asyncio.gather(*(closed_by_peer(r, 10) for r, _ in connections))
        assert time.monotonic() - started < 8
        for reply in replies:
            assert reply.startswith(b"HTTP/1.1 408 Request Timeout")
            assert reply.endswith(b"request headers not received within 0.5 s\n")
        for _, writer in connections:
            writer.close()
        status, _, body = await exchange(address, post("/open", b"still served"))
        assert (status, body) == (200, b"served /open")
    assert [path for path, _, _ in app.seen] == ["/open"]


@pytest.mark.asyncio
async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(pm, deploy):
    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port, idle_timeout=0.5) as address:
        reader, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(b"GET /open HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await closed_by_peer(reader, 5) == b"served /open"
        writer.close()


@pytest.mark.asyncio
async def test_at_the_cap_idle_connections_make_room_and_busy_ones_do_not(pm, deploy):
    app = NormalisingApp()
    async with (
        app as app_port,
        gateway(pm, deploy, app_port, max_connections=20, request_headers_timeout=60) as address,
    ):
        connections = await half_sent(address, 20)
        await asyncio.sleep(0.2)
        # a real request still gets through: the oldest half-sent connection makes room
        status, _, body = await exchange(address, post("/open", b"x"))
        assert (status, body) == (200, b"served /open")
        assert await closed_by_peer(connections[0][0], 5) == b""
        for _, writer in connections:
            writer.close()
        await asyncio.sleep(0.2)
        # twenty requests in progress: the next connection is refused with a reason
        held = [asyncio.create_task(exchange(address, post("/hold", b"x"))) for _ in range(20)]
        while len([p for p, _, _ in app.seen if p == "/hold"]) < 20:
            await asyncio.sleep(0.05)
        status, _, body = await exchange(address, post("/open", b"x"))
        assert (status, body) == (503, b"too many connections, try again\n")
        app.release.set()
        assert {status for status, _, _ in await asyncio.gather(*held)} == {200}
    assert [p for p, _, _ in app.seen].count("/open") == 1


class TcpEcho:
    """A TCP app that echoes and counts its open connections."""

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0

    async def serve(self, reader, writer):
        self.open += 1
        self.accepted += 1
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            writer.close()


@contextlib.asynccontextmanager
async def tcp_gateway(pm, **listener_options):
    echo = TcpEcho()
    server = await asyncio.start_server(echo.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = parse_config(
        {
            "listeners": [
                {"name": "tcp", "address": "127.0.0.1:0", "tcp_proxy": "echo", **listener_options}
            ],
            "clusters": {"echo": {"endpoints": [f"127.0.0.1:{port}"]}},
        }
    )
    try:
        async with Gateway(config, pm) as gw:
            yield gw.addresses["tcp"], echo
    finally:
        server.close()


@pytest.mark.asyncio
async def test_idle_tcp_clients_are_closed_with_their_app_connection(pm):
    async with tcp_gateway(pm, idle_timeout=0.5) as (address, echo):
        clients = []
        for i in range(5):
            reader, writer = await asyncio.open_connection(address.host, address.port)
            writer.write(b"ping %d" % i)
            assert await asyncio.wait_for(reader.readexactly(6), 5) == b"ping %d" % i
            clients.append((reader, writer))
        assert echo.open == 5
        for reader, _ in clients:
            assert await closed_by_peer(reader, 5) == b""
        await asyncio.sleep(0.2)
        assert echo.open == 0  # the app connections are released too
        for _, writer in clients:
            writer.close()


@pytest.mark.asyncio
async def test_a_busy_tcp_tunnel_outlives_the_idle_timeout(pm):
    async with tcp_gateway(pm, idle_timeout=0.5) as (address, _):
        reader, writer = await asyncio.open_connection(address.host, address.port)
        for _ in range(8):  # 1.6 s of traffic, never 0.5 s of silence
            writer.write(b"beat")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"beat"
            await asyncio.sleep(0.2)
        writer.close()


@pytest.mark.asyncio
async def test_tcp_connections_over_the_cap_are_closed_before_reaching_the_app(pm):
    async with tcp_gateway(pm, max_connections=3) as (address, echo):
        clients = [await asyncio.open_connection(address.host, address.port) for _ in range(5)]
        for i, (reader, writer) in enumerate(clients[:3]):
            writer.write(b"ok %d" % i)
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ok %d" % i
        for reader, _ in clients[3:]:
            assert await closed_by_peer(reader, 5) == b""
        assert echo.accepted == 3
        for _, writer in clients:
            writer.close()


TRUSTFLOW = shutil.which("trustflow", path=str(Path(sys.executable).parent)) or "trustflow"


def test_with_few_descriptors_healthz_answers_through_a_connection_flood(tmp_path):
    """A gateway process limited to 200 descriptors, 300 half-sent connections: it keeps
    accepting, and /healthz answers at once."""
    port = free_port()
    (tmp_path / "gw.yaml").write_text(
        f"listeners: [{{name: public, address: '127.0.0.1:{port}', "
        "routes: [{prefix: /, cluster: app}]}]\n"
        f"clusters: {{app: {{endpoints: ['127.0.0.1:{free_port()}']}}}}\n"
    )

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    log = (tmp_path / "gw.log").open("w")
    proc = subprocess.Popen(
        [TRUSTFLOW, "gateway", "-c", str(tmp_path / "gw.yaml")],
        preexec_fn=low_limit,
        stderr=log,
    )
    flood = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(HALF_SENT)
            flood.append(sock)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.settimeout(5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"OK\n")
        assert proc.poll() is None
    finally:
        for sock in flood:
            sock.close()
        proc.terminate()
        proc.wait(10)
        log.close()


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


@pytest.mark.asyncio
async def test_clients_cannot_make_the_gateway_keep_their_long_header_names(pm, deploy):
    """The relay remembers the lower-case form of header names it has seen; a client sending
    ever new 4 KiB names gets its requests relayed, and none of its names is kept."""
    from trustflow_core.roles.gateway import relay

    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        for i in range(20):
            name = f"X-{i:04d}-" + "a" * 4096
            status, _, body = await exchange(address, post("/open", b"hi", f"{name}: {i}\r\n"))
            assert (status, body) == (200, b"served /open")
    assert len(app.seen) == 20 and app.seen[-1][1][f"X-0019-{'a' * 4096}"] == "19"
    assert max(map(len, relay._LOWER)) <= 64 and len(relay._LOWER) <= 512


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


# ---- finding 16: replayed and stale RFC envelopes ----------------------------------------------


def rfc_envelope(public_key, plaintext: bytes, **claims) -> bytes:
    """An RFC 7516 envelope with ``claims`` in its (authenticated) protected header, built with
    jwcrypto as any client could."""
    from jwcrypto.jwe import JWE
    from jwcrypto.jwk import JWK

    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", **claims}
    token = JWE(plaintext, protected=json.dumps(header), algs=["RSA-OAEP-256", "A256GCM"])
    token.add_recipient(JWK.from_pyca(public_key))
    return token.serialize().encode()


def post_jwe(target: str, body: bytes, content_type: str = "application/jose+json") -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


@pytest.mark.asyncio
async def test_a_replayed_rfc_envelope_is_refused_and_a_fresh_one_passes(pm, deploy):
    from trustflow_core.registry import ENVELOPE_CHANNEL, backend_class

    _, key = deploy
    channel = backend_class(pm, ENVELOPE_CHANNEL, "jwe").from_settings({"profile": "rfc"})
    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        captured = json.dumps(channel.seal(b"pay 100", key.public_key()).jwe.to_dict()).encode()
        status, _, _ = await exchange(address, post_jwe("/sealed", captured))
        assert status == 200
        status, _, body = await exchange(address, post_jwe("/sealed", captured))
        assert (status, body) == (409, b"replayed JWE: this jti was already accepted\n")
        fresh = json.dumps(channel.seal(b"pay 100", key.public_key()).jwe.to_dict()).encode()
        status, _, _ = await exchange(address, post_jwe("/sealed", fresh))
        assert status == 200
        # the claims are authenticated: a replay with a new jti does not open
        members = json.loads(captured)
        header = json.loads(base64.urlsafe_b64decode(members["protected"] + "=="))
        header["jti"] = "another"
        members["protected"] = base64.urlsafe_b64encode(json.dumps(header).encode()).decode()
        status, _, body = await exchange(address, post_jwe("/sealed", json.dumps(members).encode()))
        assert status == 400 and b"JWE envelope rejected (rfc profile)" in body
    assert [b for _, _, b in app.seen] == [b"pay 100", b"pay 100"]


@pytest.mark.asyncio
async def test_stale_or_future_iat_and_malformed_claims_are_refused(pm, deploy):
    _, key = deploy
    now = int(time.time())
    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        for claims, status_want, message in (
            ({"iat": now - 3600, "jti": "a"}, 400, b"stale JWE: iat is 36"),
            ({"iat": now + 3600, "jti": "b"}, 400, b"s in the future"),
            ({"iat": "yesterday", "jti": "c"}, 400, b"'iat' must be a number"),
            ({"iat": now, "jti": ""}, 400, b"'jti' must be a string"),
            ({"iat": now}, 400, b"'jti' must be a string"),
            ({"iat": 10**400, "jti": "e"}, 400, b"'iat' must be a number"),  # beyond floats
            ({"iat": now - 5, "jti": "d"}, 200, b""),
        ):
            body = rfc_envelope(key.public_key(), b"x", **claims)
            status, _, reply = await exchange(address, post_jwe("/sealed", body))
            assert status == status_want and message in reply, (claims, reply)
    assert len(app.seen) == 1


@pytest.mark.asyncio
async def test_a_deeply_nested_protected_header_is_a_clear_400(pm, deploy):
    """Found by fuzzing: the header JSON nested past the parser's recursion limit."""
    deep = base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).rstrip(b"=").decode()
    members = {"protected": deep, "encrypted_key": "", "iv": "", "ciphertext": "", "tag": ""}
    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        status, _, reply = await exchange(
            address, post_jwe("/sealed", json.dumps(members).encode(), "application/json")
        )
    assert status == 400 and b"Traceback" not in reply, (status, reply)
    assert app.seen == []


@pytest.mark.asyncio
@pytest.mark.parametrize("value", [b"NaN", b"-Infinity"])
async def test_an_envelope_with_a_json_constant_is_a_clear_400_not_forwarded(pm, deploy, value):
    """Strict JSON (trustflow_core.jose): before, an envelope whose member was ``NaN`` parsed
    as JSON of another shape and went to the app as a plain body."""
    body = b'{"protected": "eyJhbGciOiJSU0EtT0FFUCJ9", "ciphertext": ' + value + b"}"
    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        status, _, reply = await exchange(address, post_jwe("/plain", body, "application/json"))
    assert status == 400 and b"malformed or truncated JWE envelope" in reply, (status, reply)
    assert value + b" is not valid JSON" in reply, reply
    assert app.seen == []


@pytest.mark.asyncio
async def test_freshness_modes_and_the_unchanged_upstream_profile(pm, deploy):
    from trustflow_core.registry import ENVELOPE_CHANNEL, backend_class

    _, key = deploy
    upstream = backend_class(pm, ENVELOPE_CHANNEL, "jwe").from_settings(
        {"profile": "upstream", "alg": "RSA-OAEP-256"}
    )
    old_style = rfc_envelope(key.public_key(), b"no claims")  # an RFC client without iat/jti
    sealed = json.dumps(upstream.seal(b"upstream", key.public_key()).jwe.to_dict()).encode()
    app = NormalisingApp()
    async with app as app_port:
        async with gateway(pm, deploy, app_port) as address:  # optional (default)
            for body, content_type in ((old_style, "application/jose+json"),) + (
                (sealed, "application/json"),
            ) * 2:  # upstream has no freshness: a resent upstream envelope still passes
                status, _, _ = await exchange(address, post_jwe("/sealed", body, content_type))
                assert status == 200
        jwe = {
            "cert_path": "app.crt",
            "private_key_path": "app.key",
            "freshness": {"mode": "required"},
        }
        async with gateway(pm, deploy, app_port, jwe=jwe) as address:
            status, _, body = await exchange(address, post_jwe("/sealed", old_style))
            assert status == 400 and b"'iat' must be a number" in body
            status, _, body = await exchange(
                address, post_jwe("/sealed", sealed, "application/json")
            )
            assert status == 400 and b"requires replay-protected envelopes" in body
        jwe["freshness"] = "off"
        async with gateway(pm, deploy, app_port, jwe=jwe) as address:
            replayable = rfc_envelope(key.public_key(), b"x", iat=int(time.time()), jti="z")
            for _ in range(2):
                status, _, _ = await exchange(address, post_jwe("/sealed", replayable))
                assert status == 200


@pytest.mark.asyncio
async def test_a_full_replay_cache_raises_its_floor_instead_of_forgetting(pm, deploy):
    _, key = deploy
    now = int(time.time())
    jwe = {
        "cert_path": "app.crt",
        "private_key_path": "app.key",
        "freshness": {"mode": "required", "cache_size": 3, "window": 120},
    }
    envelopes = [
        rfc_envelope(key.public_key(), b"%d" % i, iat=now - age, jti=f"id{i}")
        for i, age in enumerate((30, 20, 10, 0))
    ]
    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port, jwe=jwe) as address:
        for body in envelopes:  # the fourth evicts id0 (the oldest iat): floor = now - 30
            status, _, _ = await exchange(address, post_jwe("/sealed", body))
            assert status == 200
        status, _, reply = await exchange(address, post_jwe("/sealed", envelopes[0]))
        assert status == 400 and b"older than the replay cache can vouch for" in reply
        for body in envelopes[1:]:
            status, _, reply = await exchange(address, post_jwe("/sealed", body))
            assert status == 409
        late = rfc_envelope(key.public_key(), b"late", iat=now - 40, jti="new")
        status, _, reply = await exchange(address, post_jwe("/sealed", late))
        assert status == 400 and b"older than the replay cache" in reply
        fresh = rfc_envelope(key.public_key(), b"fresh", iat=now, jti="fresh")
        status, _, _ = await exchange(address, post_jwe("/sealed", fresh))
        assert status == 200
    assert [b for _, _, b in app.seen] == [b"0", b"1", b"2", b"3", b"fresh"]


def test_freshness_config():
    from trustflow_core.errors import InvalidInput

    base = {
        "listeners": [
            {
                "address": "127.0.0.1:0",
                "routes": [{"prefix": "/", "cluster": "a"}],
                "jwe": {"cert_path": "c", "private_key_path": "k"},
            }
        ],
        "clusters": {"a": {"endpoints": ["127.0.0.1:9"]}},
    }

    def freshness(value):
        listener = {**base["listeners"][0]}
        listener["jwe"] = {**listener["jwe"], "freshness": value}
        return parse_config({**base, "listeners": [listener]}).listeners[0].jwe.freshness

    default = parse_config(base).listeners[0].jwe.freshness
    assert (default.mode, default.window, default.cache_size) == ("optional", 300, 1_000_000)
    assert freshness("required").mode == "required"
    got = freshness({"mode": "off", "window": "90s", "cache_size": 10})
    assert (got.mode, got.window, got.cache_size) == ("off", 90, 10)
    for bad, fragment in (
        ("sometimes", "listeners[0].jwe.freshness: expected one of off, optional, required"),
        ({"cache_size": 0}, "freshness.cache_size: expected a positive integer, got 0"),
        ({"window": 0}, "freshness.window: expected a duration"),
        ({"ttl": 1}, "freshness: unknown key(s) ttl; known: cache_size, mode, window"),
    ):
        with pytest.raises(InvalidInput, match=re.escape(fragment)):
            freshness(bad)


# ---- request smuggling: what the relay's parser (llhttp, strict) refuses --------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(
            b"POST /open HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            400,
            id="CL+TE",
        ),
        pytest.param(
            b"POST /open HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\n"
            b"abc",
            400,
            id="two Content-Length",
        ),
        pytest.param(
            b"POST /open HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
            400,
            id="TE not ending in chunked",
        ),
        pytest.param(
            b"POST /open HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            400,
            id="TE lookalike",
        ),
        pytest.param(
            b"POST /open HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3x\r\nabc\r\n0\r\n\r\n",
            400,
            id="bad chunk size",
        ),
        pytest.param(
            b"POST /open HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3x\r\nabc\r\n0\r\n\r\n",
            400,
            id="bad chunk size after Upgrade",
        ),
        pytest.param(
            b"POST /open HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\nabc\n0\r\n\r\n",
            400,
            id="bare LF in chunks",
        ),
        pytest.param(
            b"POST /open HTTP/1.1\r\nHost: gw\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
            400,
            id="obs-fold",
        ),
        pytest.param(b"POST /open HTTP/1.1\nHost: gw\nContent-Length: 0\n\n", 400, id="bare LF"),
        pytest.param(
            b"POST /open HTTP/1.1\r\nHost : gw\r\nContent-Length: 0\r\n\r\n",
            400,
            id="space before colon",
        ),
        pytest.param(
            b"GET /open HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
            431,
            id="head too large",
        ),
    ],
)
async def test_ambiguous_requests_are_refused_and_never_reach_the_app(
    pm, deploy, request_bytes, status
):
    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        got, headers, _ = await exchange(address, request_bytes)
    assert got == status
    assert headers["connection"] == "close"
    assert app.seen == []


@pytest.mark.asyncio
async def test_pipelined_requests_are_answered_in_order(pm, deploy):
    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        reader, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(
            b"POST /one HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\n\r\n1"
            b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\n\r\n2"
            b"GET /three HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        )
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    bodies = re.findall(rb"\r\n\r\n(served /[a-z]+|OK\n)", data)
    assert bodies == [b"served /one", b"OK\n", b"served /two", b"served /three"]
    assert [(path, body) for path, _, body in app.seen] == [
        ("/one", b"1"),
        ("/two", b"2"),
        ("/three", b""),
    ]


@pytest.mark.asyncio
async def test_local_replies_keep_the_connection_alive(pm, deploy):
    """Answered while the request head is being parsed, healthz and 404 must not close."""
    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        reader, writer = await asyncio.open_connection(address.host, address.port)
        for _ in range(2):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head
            assert await reader.readexactly(3) == b"OK\n"
        writer.write(b"GET /sealed HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 415") and b"Connection: close" not in head
        writer.close()


@pytest.mark.asyncio
async def test_an_upstream_leaving_mid_reply_cuts_the_reply_and_nothing_else(pm, deploy, caplog):
    """The reply head was relayed: the client gets a short body and a closed connection (no
    well-formed reply claims more than was sent), the gateway logs why, the next request
    is served."""
    caplog.set_level(logging.WARNING, logger="trustflow.gateway")

    async def leaving(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(leaving, "127.0.0.1", 0)
    try:
        async with gateway(pm, deploy, server.sockets[0].getsockname()[1]) as address:
            reader, writer = await asyncio.open_connection(address.host, address.port)
            writer.write(b"GET /open HTTP/1.1\r\nHost: gw\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 10)  # the gateway closes
            writer.close()
            assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 100\r\n" in data
            assert data.endswith(b"\r\n\r\n" + b"x" * 10)
            status, _, body = await exchange(
                address, b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
            )
            assert (status, body) == (200, b"OK\n")
    finally:
        server.close()
    assert "upstream reply to /open broke off" in caplog.text


@pytest.mark.asyncio
async def test_large_bodies_relayed_past_the_parser_keep_their_framing(pm, deploy):
    """``Content-Length`` bodies of 16 KiB and more are relayed past the parser
    (``relay.RAW_MIN``): byte for byte whether the body shares a segment with its head, with
    the next pipelined request, or arrives in pieces after a head split at its blank line,
    and the request after each one is parsed as a request."""
    one, two, three = os.urandom(100_000), os.urandom(300_000), os.urandom(40_000)
    app = NormalisingApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        reader, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(
            b"POST /one HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(one)
            + one
            + b"POST /two HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(two)
            + two
            + b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
        )
        writer.write(b"POST /three HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n" % len(three))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"\r\n" + three[:20_000])
        await writer.drain()
        await asyncio.sleep(0.05)
        for start in range(20_000, len(three), 7_000):
            writer.write(three[start : start + 7_000])
            await writer.drain()
        writer.write(b"GET /four HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    bodies = re.findall(rb"\r\n\r\n(served /[a-z]+|OK\n)", data)
    assert bodies == [b"served /one", b"served /two", b"OK\n", b"served /three", b"served /four"]
    assert [(path, body) for path, _, body in app.seen] == [
        ("/one", one),
        ("/two", two),
        ("/three", three),
        ("/four", b""),
    ]


@pytest.mark.asyncio
async def test_a_large_body_to_a_slow_upstream_arrives_intact(pm, deploy):
    """A body relayed past the parser in pieces (views of the segments read) while the
    upstream's socket is full: the client is not read meanwhile, every byte arrives once."""
    body = os.urandom(2 * 1024 * 1024)
    got: list[bytes] = []

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))
        received = bytearray()
        while len(received) < length:
            await asyncio.sleep(0.01)  # the gateway's writes to it fill its socket
            received += await reader.read(min(length - len(received), 48 * 1024))
        got.append(bytes(received))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    try:
        async with gateway(pm, deploy, server.sockets[0].getsockname()[1]) as address:
            status, _, reply = await exchange(address, post("/upload", body))
    finally:
        server.close()
    assert (status, reply) == (200, b"ok")
    assert len(got) == 1 and len(got[0]) == len(body) and got[0] == body


class ChunkAwareApp(LoopbackApp):
    """A minimal HTTP/1.1 app that reads ``Content-Length`` and chunked bodies, records
    (target, headers, body) and answers ``got <n> bytes``; it closes when the request asks."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], bytes]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *fields = head.decode("latin-1").split("\r\n")[:-2]
                headers = {k.lower(): v for k, v in (f.split(": ", 1) for f in fields)}
                if headers.get("transfer-encoding") == "chunked":
                    body = b""
                    while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
                        body += await reader.readexactly(size)
                        assert await reader.readexactly(2) == b"\r\n"
                    assert await reader.readuntil(b"\r\n") == b"\r\n"
                else:
                    body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen.append((line.split(" ")[1], headers, body))
                reply = b"got %d bytes" % len(body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(reply) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("framing", "body"),
    [
        pytest.param("length", b"hello", id="Content-Length"),
        pytest.param("length", os.urandom(100_000), id="large Content-Length"),
        pytest.param("chunked", b"hello", id="chunked"),
        pytest.param("chunked", os.urandom(100_000), id="large chunked"),
    ],
)
async def test_an_upgrade_request_with_a_body_is_served_whole_then_closed(
    pm, deploy, framing, body, caplog
):
    """llhttp stops at an ``Upgrade`` request's head (httptools skips its body): the relay
    reads the body itself, the app gets it whole, the client its reply, then the connection
    closes. What follows the body is neither parsed as a request nor relayed."""
    after = b"GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
    if framing == "length":
        request = b"POST /up HTTP/1.1\r\nHost: gw\r\n%sContent-Length: %d\r\n\r\n%s" % (
            UPGRADE,
            len(body),
            body,
        )
    else:
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 7000]), body[i : i + 7000])
            for i in range(0, len(body), 7000)
        )
        request = (
            b"POST /up HTTP/1.1\r\nHost: gw\r\n%sTransfer-Encoding: chunked\r\n\r\n" % UPGRADE
            + chunks
            + b"0\r\n\r\n"
        )
    app = ChunkAwareApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        for split in (None, len(request) // 2):  # one segment, and two
            reader, writer = await asyncio.open_connection(address.host, address.port)
            try:
                if split is None:
                    writer.write(request + after)
                else:
                    writer.write(request[:split])
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.write(request[split:] + after)
                data = await asyncio.wait_for(reader.read(), 5)  # the gateway closes
            finally:
                writer.close()
            assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:200]
            assert b"Connection: close\r\n" in data
            assert data.endswith(b"\r\n\r\ngot %d bytes" % len(body))
    assert [(target, got) for target, _, got in app.seen] == [("/up", body), ("/up", body)]
    assert all("upgrade" not in headers for _, headers, _ in app.seen)
    assert "relay failed" not in caplog.text  # the body's end is no internal error


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "upgrade",
    [
        pytest.param(b"GET /up HTTP/1.1\r\nHost: gw\r\n%s\r\n" % UPGRADE, id="no body"),
        pytest.param(
            b"POST /up HTTP/1.1\r\nHost: gw\r\n%sContent-Length: 5\r\n\r\nhello" % UPGRADE,
            id="Content-Length body",
        ),
    ],
)
async def test_an_upgrade_request_pipelined_behind_another_is_answered_too(
    pm, deploy, upgrade, caplog
):
    """Requests pipelined before an ``Upgrade`` request keep their keep-alive: each is answered
    in order, the ``Upgrade`` request last (with ``Connection: close``), then the connection
    closes; what follows it is neither parsed nor relayed."""
    first = b"GET /first HTTP/1.1\r\nHost: gw\r\n\r\n"
    after = b"GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
    app = ChunkAwareApp()
    async with app as app_port, gateway(pm, deploy, app_port) as address:
        reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            writer.write(first + upgrade + after)
            data = await asyncio.wait_for(reader.read(), 5)  # the gateway closes
        finally:
            writer.close()
    replies = data.split(b"HTTP/1.1 200 OK\r\n")
    assert replies[0] == b"" and len(replies) == 3, data
    assert b"Connection: close\r\n" not in replies[1]
    assert replies[1].endswith(b"\r\n\r\ngot 0 bytes")
    assert b"Connection: close\r\n" in replies[2]
    assert [target for target, _, _ in app.seen] == ["/first", "/up"]
    assert "relay failed" not in caplog.text
