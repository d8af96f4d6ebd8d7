"""Gateway role: config parsing (native and the upstream Envoy files), the JWE filter rules, and
the proxy over real loopback sockets with a recording upstream app."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gzip
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from trustflow_core.channel import Jwe
from trustflow_core.errors import BackendNotFound, InvalidInput, UnsupportedOperation
from trustflow_core.identity import self_signed_cert
from trustflow_core.manager import get_plugin_manager
from trustflow_core.registry import ENVELOPE_CHANNEL, backend_class
from trustflow_core.roles._server import start_site
from trustflow_core.roles.gateway.config import load_config, parse_config
from trustflow_core.roles.gateway.jwe_filter import (
    EnvelopeRejected,
    OpenedRequest,
    choose_profile,
    classify,
    reply_json,
)
from trustflow_core.roles.gateway.server import Gateway
from trustflow_core.settings_schema import ConfigError

pytestmark = pytest.mark.plugins("tee_sim", "channel_jwe")

ENVOY_DIR = Path(os.environ.get("TRUSTFLOW_ENVOY_SAMPLES", "/work/shared/testdata/envoy"))
if not (ENVOY_DIR / "online-envoy.yml").is_file():  # next to the repository, wherever it is
    ENVOY_DIR = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "envoy"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    """An RSA-2048 app key and self-signed cert written as carol.key / carol.crt."""
    directory = tmp_path_factory.mktemp("deploy")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed_cert(key, "carol", backdate=datetime.timedelta(days=1))
    (directory / "carol.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "carol.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory, key


# ---- configuration -----------------------------------------------------------------------------


def test_online_envoy_sample_parses_with_rewrites():
    config = load_config(
        ENVOY_DIR / "online-envoy.yml",
        address_map={"0.0.0.0": "127.0.0.1", "ra-proxy": "127.0.0.1:1111", "teeapp": "127.0.0.2"},
        path_map={"/shared/deploy": "/tmp/deploy"},
    )
    (listener,) = config.listeners
    assert listener.kind == "http"
    assert (listener.address.host, listener.address.port) == ("127.0.0.1", 50001)
    assert [(r.prefix, r.cluster) for r in listener.routes] == [
        ("/RaProxy", "ra_proxy_cluster"),
        ("/teeapp", "teeapp_cluster"),
    ]
    assert listener.jwe is not None
    assert listener.jwe.cert_path == Path("/tmp/deploy/carol.crt")
    assert listener.jwe.private_key_path == Path("/tmp/deploy/carol.key")
    assert str(config.clusters["ra_proxy_cluster"].endpoints[0]) == "127.0.0.1:1111"
    assert str(config.clusters["teeapp_cluster"].endpoints[0]) == "127.0.0.2:8000"
    assert config.clusters["teeapp_cluster"].connect_timeout == 0.25
    assert listener.route_for("/teeapp/x").cluster == "teeapp_cluster"
    assert listener.route_for("/other") is None


@pytest.mark.parametrize("name", ["interact-bob-envoy.yml", "interact-carol-envoy.yml"])
def test_interact_envoy_samples_parse_tcp_proxy_and_tls(name):
    config = load_config(
        ENVOY_DIR / name,
        address_map={"0.0.0.0": "127.0.0.1"},
        path_map={"/shared/deploy": "/tmp/group"},
    )
    ingress, egress = config.listeners
    assert (ingress.kind, egress.kind) == ("tcp", "tcp")
    assert ingress.tls is not None and ingress.tls["require_client_certificate"] is True
    common = ingress.tls["common_tls_context"]
    assert common["tls_certificates"][0]["certificate_chain"]["filename"] == "/tmp/group/tls.crt"
    assert common["tls_certificates"][0]["private_key"]["filename"] == "/tmp/group/tls.key"
    assert common["validation_context"]["trusted_ca"]["filename"] == "/tmp/group/tls.crt"
    assert egress.tls is None
    assert config.clusters[egress.tcp_cluster].tls is not None
    assert config.clusters[ingress.tcp_cluster].tls is None


NATIVE = {
    "listeners": [
        {
            "name": "public",
            "address": "127.0.0.1:0",
            "routes": [{"prefix": "/teeapp", "cluster": "app"}],
        }
    ],
    "clusters": {"app": {"endpoints": ["127.0.0.1:9"]}},
}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"clusters": {}}, "<memory>: listener 'public' routes to unknown cluster 'app'"),
        ({"extra": 1}, "<memory>: unknown key(s) extra; known: clusters, "),
        ({"request_timeout": "soon"}, "<memory>: request_timeout: expected a duration"),
        ({"max_body_bytes": 0}, "<memory>: max_body_bytes: expected a positive integer, got 0"),
        ({"listeners": []}, "<memory>: no listeners"),
        (
            {"clusters": {"app": {"endpoints": ["nohost"]}}},
            "<memory>: clusters.app.endpoints[0]: expected 'host:port', got 'nohost'",
        ),
        (
            {"clusters": {"app": {"endpoints": ["h:99999"]}}},
            "<memory>: clusters.app.endpoints[0]: expected an integer 0..65535, got '99999'",
        ),
        (
            {
                "listeners": [
                    {"address": "127.0.0.1:0", "routes": [{"prefix": "x", "cluster": "app"}]}
                ]
            },
            "<memory>: listeners[0].routes[0].prefix: expected a path prefix starting with '/'",
        ),
        (
            {
                "listeners": [
                    {
                        "address": "127.0.0.1:0",
                        "routes": [{"prefix": "/", "cluster": "app", "require_jwe": True}],
                    }
                ]
            },
            "<memory>: listener 'listener0' has require_jwe routes but no jwe filter",
        ),
    ],
)
def test_native_config_errors_name_the_problem(change, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config({**NATIVE, **change})
    assert str(info.value).startswith(fragment)


def test_envoy_config_refuses_what_it_cannot_honour(tmp_path):
    text = (ENVOY_DIR / "online-envoy.yml").read_text()
    for old, new, fragment in [
        (
            '{ prefix: "/teeapp" }',
            '{ safe_regex: {regex: ".*"} }',
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
            ".virtual_hosts[0].routes[1].match: unknown key(s) safe_regex; known: prefix",
        ),
        (
            "name: envoy.filters.http.router",
            "name: envoy.filters.http.lua",
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
            ".http_filters[1].name: expected the jwe filter or envoy.filters.http.router, "
            "got 'envoy.filters.http.lua'",
        ),
        (
            "connect_timeout: 0.25s",
            "connect_timeout: fast",
            "static_resources.clusters[0].connect_timeout: expected a duration",
        ),
    ]:
        assert old in text
        path = tmp_path / "envoy.yml"
        path.write_text(text.replace(old, new, 1))
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value).startswith(f"{path}: {fragment}"), str(info.value)


# ---- JWE filter rules --------------------------------------------------------------------------


def test_classify_follows_the_upstream_rule_and_rejects_damaged_envelopes():
    assert classify(b'{"nonce": "abc"}') is None
    assert classify(b'{"protected": "x", "extra": 1}') is None  # foreign key: plain
    assert classify(b"[1, 2]") is None
    assert classify(b"{not json") is None
    assert classify(b"{}") == Jwe("", "", "", "", "", "")  # upstream: {} is an envelope
    jwe = classify(b'{"protected_header": "p", "iv": "i", "aad": null}')
    assert (jwe.protected, jwe.iv, jwe.aad) == ("p", "i", "")
    for damaged in (b'{"protected": "eyJ", "encrypted_key": "ab', b'{"iv": "a", "iv": "b"}'):
        with pytest.raises(EnvelopeRejected, match="malformed or truncated JWE"):
            classify(damaged)


def test_reply_json_is_the_compact_json_of_the_members_on_random_values():
    """The reply body is built without a dict or encoder object; it must be byte for byte the
    ``json.dumps(..., separators=(",", ":"))`` of the members, empty ones dropped for rfc."""
    import random

    rng = random.Random(18)
    alphabet = 'AZaz09-_"\\/\x00\x1f\x7fé\u2028\ud800😀 '
    for _ in range(3000):
        values = [
            "".join(rng.choice(alphabet) for _ in range(rng.choice((0, 0, 1, 5, 40))))
            for _ in range(6)
        ]
        jwe = Jwe(*values)
        for drop_empty in (False, True):
            members = {k: v for k, v in jwe.to_dict().items() if v or not drop_empty}
            expected = json.dumps(members, separators=(",", ":")).encode("ascii")
            assert reply_json(jwe, drop_empty) == expected, values
    assert repr(OpenedRequest("rfc", b"secret", b"k" * 16)) == "OpenedRequest(profile='rfc')"


def test_profile_choice():
    upstream = b64u(json.dumps({"alg": "RSA-OAEP-256", "enc": "A128GCM"}).encode())
    rfc = b64u(b'{"alg":"RSA-OAEP-256","enc":"A256GCM"}')
    assert choose_profile(Jwe(upstream, "", "", "", ""), "application/json") == "upstream"
    assert choose_profile(Jwe(upstream, "", "", "", ""), "application/jose+json") == "rfc"
    assert choose_profile(Jwe(rfc, "", "", "", ""), "application/json") == "rfc"
    assert choose_profile(Jwe("%%%", "", "", "", ""), "") == "upstream"


# ---- the proxy over loopback ------------------------------------------------------------------


class Recorder:
    """The upstream app: records what reaches it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.peers: set[tuple] = set()
        self.header_lines: list[list[tuple[str, str]]] = []  # per request, repeats kept

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/teeapp{tail:.*}", self.echo)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/big", self.big)
        app.router.add_post("/big", self.big)
        return app

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, request.path_qs, dict(request.headers), body))
        self.header_lines.append(list(request.headers.items()))
        self.peers.add(request.transport.get_extra_info("peername"))
        status = int(request.query.get("status", "200"))
        return web.Response(
            status=status,
            body=b"I got your message: " + body,
            headers={"X-App": "yes"},
            content_type="application/json",
        )

    async def slow(self, request: web.Request) -> web.Response:
        self.requests.append(("GET", "/slow", {}, b""))
        await asyncio.sleep(1.5)
        return web.Response(text="late")

    async def big(self, request: web.Request) -> web.StreamResponse:
        reply = web.StreamResponse()
        await reply.prepare(request)
        for i in range(int(request.query.get("n", "64"))):
            await reply.write(bytes([i]) * 65536)
        await reply.write_eof()
        return reply


@contextlib.asynccontextmanager
async def stack(pm, identity, recorder, **options):
    directory, _ = identity
    runner, app_port = await start_site(recorder.app(), "127.0.0.1", 0)
    routes = [
        {"prefix": "/teeapp/strict", "cluster": "app", "require_jwe": True},
        {"prefix": "/teeapp", "cluster": "app"},
        {"prefix": "/slow", "cluster": "app"},
        {"prefix": "/big", "cluster": "app"},
        {"prefix": "/down", "cluster": "down"},
    ]
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # nothing listens there after close
    config = parse_config(
        {
            "listeners": [
                {
                    "name": "public",
                    "address": "127.0.0.1:0",
                    "routes": routes,
                    "jwe": {"cert_path": "carol.crt", "private_key_path": "carol.key"},
                },
                {"name": "plain", "address": "127.0.0.1:0", "routes": routes[1:]},
            ],
            "clusters": {
                "app": {"endpoints": [f"127.0.0.1:{app_port}"]},
                "down": {"endpoints": [f"127.0.0.1:{closed_port}"], "connect_timeout": 1},
            },
            **options,
        },
        base=directory,
    )
    try:
        async with (
            Gateway(config, pm) as gw,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session,
        ):
            urls = {name: f"http://{address}" for name, address in gw.addresses.items()}
            yield urls, session
    finally:
        await runner.cleanup()


async def call(session, method, url, body=None, headers=None):
    async with session.request(method, url, data=body, headers=headers) as r:
        return r.status, r.headers, await r.read()


@pytest.mark.asyncio
async def test_plain_requests_pass_through_unchanged(pm, identity):
    recorder = Recorder()
    async with stack(pm, identity, recorder) as (urls, session):
        for listener in ("public", "plain"):
            body = b'{"nonce": "abc"}'
            status, headers, data = await call(
                session,
                "PUT",
                urls[listener] + "/teeapp/x?q=1&r=%20",
                body,
                {"X-Custom": "v", "Content-Type": "application/json"},
            )
            assert (status, data, headers["X-App"]) == (200, b"I got your message: " + body, "yes")
            method, path_qs, seen, got = recorder.requests[-1]
            assert (method, path_qs, got) == ("PUT", "/teeapp/x?q=1&r=%20", body)
            assert seen["X-Custom"] == "v"
            assert seen["Content-Type"] == "application/json"
            assert "X-Forwarded-For" in seen
        status, _, data = await call(session, "GET", urls["public"] + "/teeapp?status=503")
        assert (status, data) == (503, b"I got your message: ")


@pytest.mark.asyncio
@pytest.mark.parametrize("listener", ["public", "plain"])
async def test_compressed_request_bodies_are_relayed_as_sent(pm, identity, listener):
    """The gateway must not decode Content-Encoding: the app gets the bytes the client sent."""
    recorder = Recorder()
    text = b"row,value\n" * 2000
    async with stack(pm, identity, recorder) as (urls, session):
        for body in (gzip.compress(text), io.BytesIO(gzip.compress(text))):  # sized / streamed
            status, _, data = await call(
                session,
                "POST",
                urls[listener] + "/teeapp/gz",
                body,
                {"Content-Encoding": "gzip", "Content-Type": "text/csv"},
            )
            assert (status, data) == (200, b"I got your message: " + text)
            assert recorder.requests[-1][2]["Content-Encoding"] == "gzip"


@pytest.mark.asyncio
@pytest.mark.parametrize("listener", ["public", "plain"])
async def test_expect_100_continue_is_answered_before_the_body(pm, identity, listener):
    """Clients such as curl send ``Expect: 100-continue`` with larger bodies and wait for it."""
    recorder = Recorder()
    body = b'{"n": "' + b"x" * 4000 + b'"}'
    async with stack(pm, identity, recorder) as (urls, _session):
        host, port = urls[listener].removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        head = (
            f"POST /teeapp/e HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        )
        writer.write(head.encode())
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        reply = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert reply.startswith(b"HTTP/1.1 200")
        writer.write(
            f"POST /teeapp/e HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n"
            "Expect: something-else\r\nConnection: close\r\n\r\n".encode()
        )
        rest = await asyncio.wait_for(reader.read(), 5)
        assert b"HTTP/1.1 417" in rest and b"unsupported Expect: something-else" in rest
        writer.close()
        await writer.wait_closed()
    assert recorder.requests[-1][3] == body and "Expect" not in recorder.requests[-1][2]
    assert len(recorder.requests) == 1


@pytest.mark.asyncio
async def test_head_replies_keep_the_apps_content_length(pm, identity):
    recorder = Recorder()
    async with stack(pm, identity, recorder) as (urls, session):
        direct = await call(session, "GET", urls["plain"] + "/teeapp/h")
        status, headers, data = await call(session, "HEAD", urls["plain"] + "/teeapp/h")
        assert (status, data) == (200, b"")
        assert headers["Content-Length"] == str(len(direct[2]))
        assert recorder.requests[-1][0] == "HEAD"


@pytest.mark.asyncio
async def test_large_bodies_stream_both_ways(pm, identity):
    recorder = Recorder()
    payload = os.urandom(8 * 1024 * 1024)
    async with stack(pm, identity, recorder, max_body_bytes=65536) as (urls, session):
        status, _, data = await call(
            session, "POST", urls["public"] + "/teeapp", io.BytesIO(payload)
        )
        assert status == 200
        assert hashlib.sha256(recorder.requests[-1][3]).digest() == hashlib.sha256(payload).digest()
        assert data == b"I got your message: " + payload

        async def chunks():
            for _ in range(4):
                yield b"x" * 100_000

        status, _, _ = await call(session, "POST", urls["public"] + "/teeapp", chunks())
        assert status == 200 and recorder.requests[-1][3] == b"x" * 400_000
        status, _, data = await call(session, "GET", urls["public"] + "/big")
        assert status == 200
        assert data == b"".join(bytes([i]) * 65536 for i in range(64))


@pytest.mark.asyncio
async def test_local_replies(pm, identity):
    recorder = Recorder()
    async with stack(pm, identity, recorder, request_timeout=0.5, max_body_bytes=1000) as (
        urls,
        session,
    ):
        status, headers, data = await call(session, "GET", urls["public"] + "/healthz")
        assert (status, data) == (200, b"OK\n")
        status, _, data = await call(session, "GET", urls["public"] + "/-/plugins")
        assert (status, data) == (404, b"no route for /-/plugins\n")  # on the admin listener
        status, headers, data = await call(session, "GET", urls["public"] + "/nowhere")
        assert (status, data) == (404, b"no route for /nowhere\n")
        assert headers["Content-Type"].startswith("text/plain")
        status, _, data = await call(session, "GET", urls["public"] + "/down")
        assert status == 502 and b"unreachable" in data
        status, _, data = await call(session, "GET", urls["public"] + "/slow")
        assert status == 504 and b"did not answer within 0.5 s" in data
        before = len(recorder.requests)
        big_json = b'{"nonce": "' + b"a" * 2000 + b'"}'
        status, _, data = await call(session, "POST", urls["public"] + "/teeapp", big_json)
        assert (status, data) == (413, b"request body larger than 1000 bytes\n")
        for body in (b"plain text", b'{"nonce": 1}', None):
            status, _, data = await call(session, "POST", urls["public"] + "/teeapp/strict", body)
            assert status == 415 and b"accepts only JWE envelopes" in data
        assert len(recorder.requests) == before


@pytest.mark.asyncio
@pytest.mark.parametrize("profile", ["upstream", "rfc"])
async def test_envelopes_are_opened_forwarded_and_replies_sealed(pm, identity, profile):
    _, key = identity
    recorder = Recorder()
    settings = {"profile": profile}
    if profile == "upstream":
        settings["alg"] = "RSA-OAEP-256"
    channel = backend_class(pm, ENVELOPE_CHANNEL, "jwe").from_settings(settings)
    content_type = "application/jose+json" if profile == "rfc" else "application/json"
    async with stack(pm, identity, recorder) as (urls, session):
        for path, status_want in (("/teeapp/strict", 200), ("/teeapp?status=500", 500)):
            sealed = channel.seal(b"hello", key.public_key())
            status, headers, data = await call(
                session,
                "POST",
                urls["public"] + path,
                json.dumps(sealed.jwe.to_dict()).encode(),
                {"Content-Type": content_type, "Accept-Encoding": "gzip", "X-Note": "kept"},
            )
            assert status == status_want
            assert recorder.requests[-1][3] == b"hello"
            assert recorder.requests[-1][2]["Content-Length"] == "5"
            # the reply is sealed byte for byte: the app is asked for no content coding (the
            # client's Accept-Encoding is dropped, not repeated); other headers pass
            seen = recorder.header_lines[-1]
            assert [v for n, v in seen if n.lower() == "accept-encoding"] == ["identity"]
            assert ("X-Note", "kept") in seen
            reply = json.loads(data)
            assert channel.open_reply(Jwe.from_dict(reply), sealed.cek) == (
                b"I got your message: hello"
            )
            assert headers["X-App"] == "yes"
            if profile == "upstream":
                assert list(reply) == [
                    "protected",
                    "encrypted_key",
                    "iv",
                    "ciphertext",
                    "tag",
                    "aad",
                ]
                assert reply["encrypted_key"] == "" and reply["aad"] == ""
                assert headers["Content-Type"] == "application/json"
            else:
                assert headers["Content-Type"] == "application/jose+json"
        # an envelope above relay.RAW_MIN: its body is buffered as views of the segments read
        big = os.urandom(100_000)
        sealed = channel.seal(big, key.public_key())
        status, _, data = await call(
            session,
            "POST",
            urls["public"] + "/teeapp/strict",
            json.dumps(sealed.jwe.to_dict()).encode(),
            {"Content-Type": content_type},
        )
        assert (status, recorder.requests[-1][3]) == (200, big)
        reply = channel.open_reply(Jwe.from_dict(json.loads(data)), sealed.cek)
        assert reply == b"I got your message: " + big


@contextlib.asynccontextmanager
async def one_reply_per_connection(pm, identity, *, then: str, **options):
    """A gateway (JWE listener ``public``) in front of a raw app that answers the first
    request of each connection with its body and, on the connection's second request, closes
    the connection unanswered (``then="close"``) or says nothing (``then="stall"``)."""
    directory, _ = identity
    bodies: list[bytes] = []
    connections = 0

    async def handle(reader, writer):
        nonlocal connections
        connections += 1
        try:
            for n in (1, 2):
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                if n == 2:
                    if then == "stall":
                        await asyncio.sleep(5)
                    break
                bodies.append(body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = parse_config(
        {
            "listeners": [
                {
                    "name": "public",
                    "address": "127.0.0.1:0",
                    "routes": [{"prefix": "/teeapp", "cluster": "app"}],
                    "jwe": {"cert_path": "carol.crt", "private_key_path": "carol.key"},
                }
            ],
            "clusters": {"app": {"endpoints": [f"127.0.0.1:{port}"]}},
            **options,
        },
        base=directory,
    )
    try:
        async with (
            Gateway(config, pm) as gw,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session,
        ):
            yield f"http://{gw.addresses['public']}/teeapp", session, bodies, lambda: connections
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_an_envelope_on_a_pooled_connection_the_app_closed_is_sent_again(pm, identity):
    """A small envelope is opened and relayed from the protocol callbacks on an idle pooled
    connection; when that connection turns out closed, it goes again on a new one and the
    reply is still sealed (so is a plain JSON body on the JWE listener)."""
    _, key = identity
    channel = backend_class(pm, ENVELOPE_CHANNEL, "jwe").from_settings({"profile": "rfc"})
    jose = {"Content-Type": "application/jose+json"}
    async with one_reply_per_connection(pm, identity, then="close") as (url, session, bodies, n):
        for i in range(3):
            sealed = channel.seal(b"hello %d" % i, key.public_key())
            body = json.dumps(sealed.jwe.to_dict()).encode()
            status, headers, data = await call(session, "POST", url, body, jose)
            assert (status, headers["Content-Type"]) == (200, "application/jose+json")
            assert channel.open_reply(Jwe.from_dict(json.loads(data)), sealed.cek) == (
                b"hello %d" % i
            )
            status, _, data = await call(session, "POST", url, b'{"plain": %d}' % i)
            assert (status, data) == (200, b'{"plain": %d}' % i)
        assert bodies == [x for i in range(3) for x in (b"hello %d" % i, b'{"plain": %d}' % i)]
        assert n() == 6


@pytest.mark.asyncio
async def test_an_envelope_on_a_pooled_connection_the_app_never_answers_is_504(pm, identity):
    _, key = identity
    channel = backend_class(pm, ENVELOPE_CHANNEL, "jwe").from_settings({"profile": "rfc"})
    jose = {"Content-Type": "application/jose+json"}
    async with one_reply_per_connection(pm, identity, then="stall", request_timeout=0.3) as (
        url,
        session,
        bodies,
        _,
    ):
        for i, want in enumerate((200, 504)):
            sealed = channel.seal(b"hi %d" % i, key.public_key())
            body = json.dumps(sealed.jwe.to_dict()).encode()
            status, _, data = await call(session, "POST", url, body, jose)
            assert status == want
        assert data == b"upstream did not answer within 0.3 s\n"
        assert bodies == [b"hi 0"]


@pytest.mark.asyncio
async def test_connections_to_the_app_are_kept_alive(pm, identity):
    recorder = Recorder()
    async with stack(pm, identity, recorder) as (urls, session):
        for _ in range(20):
            status, _, _ = await call(session, "POST", urls["public"] + "/teeapp", b"x")
            assert status == 200
    assert len(recorder.peers) == 1


@pytest.mark.asyncio
async def test_tcp_proxy_listener(pm):
    async def echo(reader, writer):
        data = await reader.read()
        writer.write(data[::-1])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = parse_config(
        {
            "listeners": [{"name": "tcp", "address": "127.0.0.1:0", "tcp_proxy": "echo"}],
            "clusters": {"echo": {"endpoints": [f"127.0.0.1:{port}"]}},
        }
    )
    try:
        async with Gateway(config, pm) as gw:
            address = gw.addresses["tcp"]
            reader, writer = await asyncio.open_connection(address.host, address.port)
            writer.write(b"hello tcp")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"pct olleh"
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_tls_listener_needs_an_ssl_factory(pm):
    config = load_config(
        ENVOY_DIR / "interact-bob-envoy.yml", address_map={"0.0.0.0": "127.0.0.1:0"}
    )
    with pytest.raises(UnsupportedOperation, match="needs the mTLS channel"):
        async with Gateway(config, pm):
            pass


@pytest.mark.asyncio
async def test_jwe_filter_refuses_a_key_that_does_not_match_the_cert(pm, identity, tmp_path):
    directory, _ = identity
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "other.key").write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    config = parse_config(
        {
            **NATIVE,
            "listeners": [
                {
                    **NATIVE["listeners"][0],
                    "jwe": {
                        "cert_path": str(directory / "carol.crt"),
                        "private_key_path": str(tmp_path / "other.key"),
                    },
                }
            ],
        }
    )
    with pytest.raises(InvalidInput, match="does not belong to"):
        async with Gateway(config, pm):
            pass


async def reply_head(reader: asyncio.StreamReader) -> bytes:
    """The next reply head, in lower case."""
    return (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).lower()


async def length_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """The body of a reply whose (lower-case) ``head`` announces its Content-Length."""
    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
    return await asyncio.wait_for(reader.readexactly(length), 5)


def unchunked(data: bytes) -> bytes:
    """The body in a whole chunked encoding (no trailers); AssertionError if it is not one."""
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert data == b"\r\n", data[:20]
            return body
        body, data = body + data[:size], data[size:]
        assert data.startswith(b"\r\n")
        data = data[2:]


async def expect_408_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    """The next reply is the 408 of a body that did not come within 0.3 s; close."""
    head = await reply_head(reader)
    assert head.startswith(b"http/1.1 408 ")
    body = await asyncio.wait_for(reader.read(200), 5)
    assert b"request body not received within 0.3 s" in body
    writer.close()
    await writer.wait_closed()


@pytest.mark.asyncio
async def test_a_stalled_request_body_gets_408(pm, identity):
    recorder = Recorder()
    async with stack(pm, identity, recorder, request_timeout=0.3) as (urls, _):
        upgrade = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        for listener, framing, start in (
            ("public", b"Content-Length: 100", b'{"protected": "'),
            ("plain", b"Content-Length: 100", b"hello"),
            ("plain", b"Content-Length: 200000", b"x" * 30_000),  # past the parser: RAW_MIN
            ("plain", upgrade + b"Content-Length: 100", b"hello"),  # read past llhttp
            ("plain", upgrade + b"Transfer-Encoding: chunked", b"64\r\nhello"),
        ):
            host, port = urls[listener].removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /teeapp HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % framing + start)
            await writer.drain()
            await expect_408_then_close(reader, writer)
    assert recorder.requests == []


@pytest.mark.asyncio
async def test_a_stalled_body_on_a_kept_alive_connection_gets_408(pm, identity):
    """A request whose head arrives without its body on a kept-alive connection gets its own
    body deadline: the connection's idle deadline (longer) does not stand in for it (nor does
    the re-arm on body bytes: none came), whether the head came alone or in the same segment
    as a whole request before it."""
    recorder = Recorder()
    async with stack(pm, identity, recorder, request_timeout=0.3) as (urls, _):
        host, port = urls["plain"].removeprefix("http://").split(":")
        whole = b"POST /teeapp HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        stalled = b"POST /teeapp HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"  # no body byte
        for segments in ((whole, stalled), (whole + stalled,)):
            reader, writer = await asyncio.open_connection(host, int(port))
            for segment in segments:
                writer.write(segment)
                await writer.drain()
                await asyncio.sleep(0.05)  # the whole request is answered first
            head = await reply_head(reader)
            assert head.startswith(b"http/1.1 200 ")
            assert await length_body(reader, head) == b"I got your message: hello"
            await expect_408_then_close(reader, writer)
    assert len(recorder.requests) == 2


@pytest.mark.asyncio
async def test_a_body_trickling_in_within_the_timeout_is_relayed(pm, identity):
    """The request timeout runs from the last body bytes received, not from the head: a body
    whose pieces each come within it is relayed whole, however long it takes in all."""
    recorder = Recorder()
    async with stack(pm, identity, recorder, request_timeout=0.6) as (urls, _):
        host, port = urls["plain"].removeprefix("http://").split(":")
        for size in (50, 200_000):  # collected first; relayed past the parser (RAW_MIN)
            piece = b"z" * (size // 5)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /teeapp HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(5):  # 1 s in all
                await asyncio.sleep(0.2)
                writer.write(piece)
                await writer.drain()
            assert (await reply_head(reader)).startswith(b"http/1.1 200 ")
            writer.close()
            await writer.wait_closed()
    assert [len(r[3]) for r in recorder.requests] == [50, 200_000]


@pytest.mark.asyncio
async def test_a_client_leaving_mid_body_is_handled_quietly(pm, identity, caplog):
    caplog.set_level(logging.INFO, logger="trustflow.gateway")
    recorder = Recorder()
    async with stack(pm, identity, recorder) as (urls, session):
        for listener in ("public", "plain"):
            for length, sent in ((100, b"x" * 50), (200_000, b"y" * 70_000)):
                host, port = urls[listener].removeprefix("http://").split(":")
                _, writer = await asyncio.open_connection(host, int(port))
                writer.write(
                    b"POST /teeapp HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length
                    + sent
                )
                await writer.drain()
                writer.close()
                await writer.wait_closed()
        await asyncio.sleep(0.3)
        status, _, _ = await call(session, "POST", urls["public"] + "/teeapp", b"still fine")
        assert status == 200
    assert [r[3] for r in recorder.requests] == [b"still fine"]
    # the app may log its aborted request; the gateway logs no error or traceback
    gateway_errors = [
        r
        for r in caplog.records
        if r.levelname == "ERROR" and "roles/gateway" in logging.Formatter().format(r)
    ]
    assert gateway_errors == []
    assert "client left mid-body" in caplog.text


@pytest.mark.asyncio
async def test_an_app_reply_too_large_to_seal_is_502(pm, identity):
    _, key = identity
    channel = backend_class(pm, ENVELOPE_CHANNEL, "jwe").from_settings({"profile": "rfc"})
    sealed = channel.seal(b"hello", key.public_key())
    async with stack(pm, identity, Recorder(), max_body_bytes=65536) as (urls, session):
        status, _, data = await call(
            session,
            "POST",
            urls["public"] + "/big",
            json.dumps(sealed.jwe.to_dict()).encode(),
            {"Content-Type": "application/jose+json"},
        )
    assert (status, data) == (502, b"app reply larger than 65536 bytes cannot be sealed\n")


@pytest.mark.asyncio
async def test_a_client_leaving_mid_reply_is_handled_quietly(pm, identity, caplog):
    caplog.set_level(logging.INFO, logger="trustflow.gateway")
    async with stack(pm, identity, Recorder()) as (urls, session):
        host, port = urls["plain"].removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        # 64 MiB: more than the kernel's socket buffers hold, so the client leaves mid-reply
        writer.write(b"GET /big?n=1024 HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await reader.readexactly(100_000)
        writer.transport.abort()
        await asyncio.sleep(0.5)
        status, _, _ = await call(session, "GET", urls["plain"] + "/healthz")
        assert status == 200
    assert "client left during the reply to /big" in caplog.text
    assert not [
        r
        for r in caplog.records
        if r.levelname == "ERROR" and "roles/gateway" in logging.Formatter().format(r)
    ]


# ---- channels chosen by configuration ----------------------------------------------------------


@pytest.mark.asyncio
async def test_the_envelope_channel_named_in_the_config_opens_the_envelopes(pm, identity):
    """``envelope_channel`` in the config picks the JWE filter's backend from the registry: here
    a third-party channel registered as ``counting`` (the jwe channel, counting what it
    opens)."""
    import types

    from trustflow_channel_jwe.channel import JweChannel

    from trustflow_core import hookimpl

    opened: list[bytes] = []

    class CountingChannel(JweChannel):
        name = "counting"

        def open(self, jwe, private_key):
            result = super().open(jwe, private_key)
            opened.append(result.plaintext)
            return result

    module = types.ModuleType("counting_channel")

    @hookimpl
    def trustflow_register_channels(register):
        register(CountingChannel)

    module.trustflow_register_channels = trustflow_register_channels
    pm.register(module)
    _, key = identity
    recorder = Recorder()
    channel = backend_class(pm, ENVELOPE_CHANNEL, "jwe").from_settings({"profile": "rfc"})
    async with stack(pm, identity, recorder, envelope_channel="counting") as (urls, session):
        sealed = channel.seal(b"hello", key.public_key())
        status, _, data = await call(
            session,
            "POST",
            urls["public"] + "/teeapp/strict",
            json.dumps(sealed.jwe.to_dict()).encode(),
            {"Content-Type": "application/jose+json"},
        )
        assert status == 200
        assert recorder.requests[-1][3] == b"hello"
        assert opened == [b"hello"]
        reply = Jwe.from_dict(json.loads(data))
        assert channel.open_reply(reply, sealed.cek) == b"I got your message: hello"


@pytest.mark.asyncio
async def test_a_channel_of_the_wrong_kind_fails_start_up_naming_kind_and_installed(
    identity, monkeypatch
):
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "tee_sim,channel_jwe,channel_mtls")
    with pytest.raises(BackendNotFound) as info:
        async with stack(get_plugin_manager(), identity, Recorder(), envelope_channel="mtls"):
            pass
    assert str(info.value).startswith(
        "no envelope channel backend 'mtls' ('mtls' is a transport channel, not an envelope "
        "channel); installed envelope channel backends: ['jwe']"
    )
    with pytest.raises(ConfigError, match="<memory>: envelope_channel: expected a backend name"):
        parse_config({**NATIVE, "envelope_channel": ""})


@pytest.mark.asyncio
async def test_the_client_http_version_decides_framing_and_keep_alive(pm, identity):
    """An HTTP/1.0 client never gets a chunked reply: an app reply without a length reaches
    it unchunked and ends with the connection; it is kept alive only when it asks
    (``Connection: keep-alive``, echoed). An HTTP/1.1 client asking to close gets the chunked
    reply, then the close. (The relay tells 1.1 from the rest without asking llhttp for the
    version when no Connection header came.)"""
    recorder = Recorder()
    expected = bytes([0]) * 65536 + bytes([1]) * 65536
    async with stack(pm, identity, recorder) as (urls, _):
        host, port = urls["plain"].removeprefix("http://").split(":")
        for request in (b"GET /big?n=2 HTTP/1.0\r\n\r\n", b"GET /big?n=2 HTTP/2.0\r\n\r\n"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(request)
            head = await reply_head(reader)
            assert head.startswith(b"http/1.1 200 ")
            assert b"transfer-encoding" not in head and b"connection: close" in head
            assert await asyncio.wait_for(reader.read(), 5) == expected  # then EOF
            writer.close()

        reader, writer = await asyncio.open_connection(host, int(port))
        for _ in range(2):
            writer.write(b"GET /teeapp/again HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            head = await reply_head(reader)
            assert head.startswith(b"http/1.1 200 ") and b"connection: keep-alive" in head
            assert await length_body(reader, head) == b"I got your message: "
        writer.close()

        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /big?n=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = await reply_head(reader)
        assert b"transfer-encoding: chunked" in head and b"connection: close" in head
        assert unchunked(await asyncio.wait_for(reader.read(), 5)) == expected  # then EOF
        writer.close()
    assert [path for _, path, _, _ in recorder.requests] == ["/teeapp/again"] * 2
