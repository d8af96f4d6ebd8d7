"""Gateway mTLS listeners over real loopback sockets: bob's egress → carol's ingress → carol's
app (and back), group assets issued by ``issue_group_asset``, outsiders refused at the TLS
handshake, certificate reload through a running gateway, the upstream interact Envoy configs,
and start-up refusal of tampered or mismatched asset files."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustflow_core.errors import (
    BackendUnavailable,
    InvalidInput,
    UnsupportedOperation,
    VerificationError,
)
from trustflow_core.keyexchange import TlsAsset
from trustflow_core.registry import TRANSPORT_CHANNEL, backend_class
from trustflow_core.roles.gateway.config import GatewayConfig, load_config, parse_config
from trustflow_core.roles.gateway.server import Gateway
from trustflow_core.testing.fixtures import free_port
from trustflow_core.testing.transport import flip_pem_byte, impostor_asset, raw_context
from trustflow_core.tls_asset import issue_group_asset, write_tls_asset

pytestmark = pytest.mark.plugins("channel_mtls")

ENVOY_DIR = Path(os.environ.get("TRUSTFLOW_ENVOY_SAMPLES", "/work/shared/testdata/envoy"))
if not (ENVOY_DIR / "interact-bob-envoy.yml").is_file():
    ENVOY_DIR = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "envoy"
TRUSTFLOW = Path(sys.executable).parent / "trustflow"
TIMEOUT = 5.0
SCOPE, DATA_UUID, OP = "default", "data-alice-1", "interact"


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def asset(data_key: bytes, *, data_uuid: str = DATA_UUID, when=None) -> TlsAsset:
    """A fresh member (new attested key) of the group of ``data_key``/``data_uuid``."""
    return issue_group_asset(
        data_key,
        scope=SCOPE,
        data_uuid=data_uuid,
        op_name=OP,
        member_public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        now=when or now(),
    )


def install(tls: TlsAsset, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_tls_asset(tls, directory / "tls.crt", directory / "tls.key")
    return directory


@pytest.fixture(scope="module")
def group_key() -> bytes:
    return os.urandom(32)


# ---- a tiny app ----------------------------------------------------------------------------------


@dataclass
class EchoApp:
    """Answers each line with ``<name> got: <line>``; counts accepted connections."""

    name: str
    connections: int = 0
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, OSError):
            while line := await reader.readline():
                writer.write(f"{self.name} got: ".encode() + line)
                await writer.drain()
        writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def echo_app(name: str) -> AsyncIterator[EchoApp]:
    app = EchoApp(name)
    app.server = await asyncio.start_server(app.handle, "127.0.0.1", 0)
    try:
        yield app
    finally:
        app.server.close()
        await app.server.wait_closed()


async def ask(port: int, line: bytes) -> bytes:
    """Send one line to a plain local listener; the answer line, or b"" if it was closed."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        writer.write(line + b"\n")
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.readline(), TIMEOUT)
        except (ConnectionError, OSError):
            return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


# ---- configs ----------------------------------------------------------------------------------


def native_config(deploy: Path, ingress: int, egress: int, app: int, peer: int) -> GatewayConfig:
    tls = {"cert_path": "tls.crt", "private_key_path": "tls.key"}
    return parse_config(
        {
            "listeners": [
                {
                    "name": "mtls_ingress",
                    "address": f"127.0.0.1:{ingress}",
                    "tcp_proxy": "app",
                    "tls": tls,
                },
                {"name": "mtls_egress", "address": f"127.0.0.1:{egress}", "tcp_proxy": "peer"},
            ],
            "clusters": {
                "app": {"endpoints": [f"127.0.0.1:{app}"]},
                "peer": {"endpoints": [f"127.0.0.1:{peer}"], "tls": tls},
            },
        },
        base=deploy,
    )


def envoy_config(who: str, deploy: Path, ingress: int, egress: int, app: int, peer: int):
    """The upstream interact config of ``who`` with its addresses rewritten to loopback."""
    own, other = {"bob": (30001, 40001), "carol": (40001, 30001)}[who]
    peer_host = {"bob": "172.31.10.1", "carol": "172.31.11.1"}[who]
    return load_config(
        ENVOY_DIR / f"interact-{who}-envoy.yml",
        address_map={
            f"0.0.0.0:{own}": f"127.0.0.1:{ingress}",
            f"0.0.0.0:{own + 1000}": f"127.0.0.1:{egress}",
            f"{who}-app:8000": f"127.0.0.1:{app}",
            f"{peer_host}:{other}": f"127.0.0.1:{peer}",
        },
        path_map={"/shared/deploy": str(deploy)},
    )


@dataclass
class Party:
    app: EchoApp
    gateway: Gateway
    deploy: Path

    @property
    def egress(self) -> int:
        return self.gateway.addresses["mtls_egress"].port

    @property
    def ingress(self) -> int:
        return self.gateway.addresses["mtls_ingress"].port


@contextlib.asynccontextmanager
async def pair(
    pm, tmp_path: Path, bob_tls: TlsAsset, carol_tls: TlsAsset, kind: str = "native"
) -> AsyncIterator[tuple[Party, Party]]:
    """bob and carol: each an echo app behind a gateway with both mTLS listeners. Each
    gateway must know the other's ingress port before it starts, so the ports are picked
    free beforehand; a port taken in between by another process (parallel test envs) makes
    the pair start again on new ports."""
    async with echo_app("bob") as bob_app, echo_app("carol") as carol_app:
        bob_dir = install(bob_tls, tmp_path / "bob")
        carol_dir = install(carol_tls, tmp_path / "carol")
        for attempt in range(3):
            ports = {name: free_port() for name in ("bob_in", "bob_out", "carol_in", "carol_out")}
            args = {
                "bob": (
                    bob_dir,
                    ports["bob_in"],
                    ports["bob_out"],
                    bob_app.port,
                    ports["carol_in"],
                ),
                "carol": (
                    carol_dir,
                    ports["carol_in"],
                    ports["carol_out"],
                    carol_app.port,
                    ports["bob_in"],
                ),
            }
            configs = {
                who: native_config(*a) if kind == "native" else envoy_config(who, *a)
                for who, a in args.items()
            }
            bob_gw = Gateway(configs["bob"], pm, tls_reload_interval=0.05)
            carol_gw = Gateway(configs["carol"], pm, tls_reload_interval=0.05)
            stack = contextlib.AsyncExitStack()
            try:
                await stack.enter_async_context(bob_gw)
                await stack.enter_async_context(carol_gw)
            except BackendUnavailable as exc:
                await stack.aclose()
                if "in use" not in str(exc) or attempt == 2:
                    raise
                continue
            async with stack:
                yield Party(bob_app, bob_gw, bob_dir), Party(carol_app, carol_gw, carol_dir)
            return


# ---- it works -----------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["native", "envoy"])
async def test_bob_and_carol_talk_both_ways_over_mtls(pm, tmp_path, group_key, kind):
    async with pair(pm, tmp_path, asset(group_key), asset(group_key), kind) as (bob, carol):
        hello = b'{"message": "Hello from Bob!"}'
        assert await ask(bob.egress, hello) == b"carol got: " + hello + b"\n"
        assert await ask(carol.egress, b"Hi Bob") == b"bob got: Hi Bob\n"
        assert (bob.app.connections, carol.app.connections) == (1, 1)
        # the ingress really is TLS: a plain client gets nothing through
        assert await ask(carol.ingress, b"plain") == b""
        assert carol.app.connections == 1


@pytest.mark.asyncio
async def test_the_ingress_logs_the_authenticated_peer_party(pm, tmp_path, group_key, caplog):
    bob_tls = asset(group_key)
    leaf = x509.load_pem_x509_certificates(bob_tls.cert_pem)[0]
    bob_party = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    caplog.set_level(logging.DEBUG, logger="trustflow.gateway")
    async with pair(pm, tmp_path, bob_tls, asset(group_key)) as (bob, _):
        assert await ask(bob.egress, b"hi") == b"carol got: hi\n"
    assert f"mTLS peer {bob_party}" in caplog.text


@pytest.mark.asyncio
async def test_envoy_configs_are_served_with_tls_on_the_right_side(pm, tmp_path, group_key):
    async with pair(pm, tmp_path, asset(group_key), asset(group_key), "envoy") as (bob, _):
        listeners = {lst.name: lst for lst in bob.gateway.config.listeners}
        assert listeners["mtls_ingress"].tls is not None and listeners["mtls_egress"].tls is None
        # ingress (server context) and egress cluster (client context) share one watcher
        assert bob.gateway.mtls is not None
        assert {(f.cert_path, f.key_path) for f in bob.gateway.mtls.watchers} == {
            (bob.deploy / "tls.crt", bob.deploy / "tls.key")
        }


# ---- outsiders are refused at the handshake ---------------------------------------------------


def outsider_asset(kind: str, group_key: bytes, member: TlsAsset) -> TlsAsset:
    if kind == "self-made":  # copies the subject names of a member's chain, own keys
        return impostor_asset(member)
    if kind == "other data key":
        return asset(os.urandom(32))
    return asset(group_key, data_uuid="data-alice-2")  # same key, other data


def member_client_context(pm, tls: TlsAsset, *, verify_server: bool = True) -> ssl.SSLContext:
    """The mtls channel's client context, TLS 1.2 only so that a client refused by the
    server fails in the handshake itself (TLS 1.3 reports it at the first read). Without
    ``verify_server`` the client accepts any server, so a failure is the server's refusal."""
    ctx = backend_class(pm, TRANSPORT_CHANNEL, "mtls")().client_ssl_context(tls)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if not verify_server:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


OUTSIDERS = ["self-made", "other data key", "other data uuid"]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", OUTSIDERS)
async def test_an_outsider_gateway_is_refused_both_ways(pm, tmp_path, group_key, kind):
    carol_tls = asset(group_key)
    stranger = outsider_asset(kind, group_key, carol_tls)
    async with pair(pm, tmp_path, stranger, carol_tls) as (outsider, carol):
        # outsider's egress → carol's ingress: carol refuses, her app never sees a connection
        assert await ask(outsider.egress, b"let me in") == b""
        assert carol.app.connections == 0
        # carol's egress → outsider's ingress: carol's gateway refuses the server
        assert await ask(carol.egress, b"who are you") == b""
        assert outsider.app.connections == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", OUTSIDERS)
async def test_an_outsider_fails_the_tls_handshake_with_an_ingress(pm, tmp_path, group_key, kind):
    bob_tls = asset(group_key)
    async with pair(pm, tmp_path, bob_tls, asset(group_key)) as (_, carol):
        good = member_client_context(pm, bob_tls)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", carol.ingress, ssl=good), TIMEOUT
        )
        writer.write(b"member\n")
        assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"carol got: member\n"
        writer.close()
        assert carol.app.connections == 1
        bad = member_client_context(
            pm, outsider_asset(kind, group_key, bob_tls), verify_server=False
        )
        # refused in the handshake: an alert (SSLError) or the connection reset right after it
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", carol.ingress, ssl=bad), TIMEOUT
            )
        # no client certificate at all
        anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        anonymous.check_hostname, anonymous.verify_mode = False, ssl.CERT_NONE
        anonymous.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", carol.ingress, ssl=anonymous), TIMEOUT
            )
        assert carol.app.connections == 1


@pytest.mark.asyncio
async def test_a_member_whose_leaf_expired_is_refused(pm, tmp_path, group_key):
    """A former member (grant deleted, so no refresh): same group CA, leaf expired."""
    bob_tls = asset(group_key)
    stale = asset(group_key, when=now() - datetime.timedelta(days=2))
    async with pair(pm, tmp_path, bob_tls, asset(group_key)) as (_, carol):
        ctx = raw_context(stale, server=False, trust=bob_tls, tmp=tmp_path)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", carol.ingress, ssl=ctx), TIMEOUT
            )
        fresh = raw_context(asset(group_key), server=False, trust=bob_tls, tmp=tmp_path)
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", carol.ingress, ssl=fresh), TIMEOUT
        )
        writer.close()


# ---- reload ----------------------------------------------------------------------------------


async def wait_for_generation(gateway: Gateway, generation: int) -> None:
    assert gateway.mtls is not None
    for _ in range(100):
        if all(w.generation >= generation for w in gateway.mtls.watchers.values()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway did not reload its TLS asset")


@pytest.mark.asyncio
async def test_certificates_reload_without_dropping_listeners(pm, tmp_path, group_key):
    async with pair(pm, tmp_path, asset(group_key), asset(group_key)) as (bob, carol):
        ports = (bob.ingress, bob.egress, carol.ingress, carol.egress)
        reader, writer = await asyncio.open_connection("127.0.0.1", bob.egress)
        writer.write(b"first\n")
        assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"carol got: first\n"

        # carol moves to another group: bob can no longer reach her, the old tunnel stays up
        new_key = os.urandom(32)
        install(asset(new_key), carol.deploy)
        await wait_for_generation(carol.gateway, 2)
        assert await ask(bob.egress, b"refused now") == b""
        writer.write(b"still here\n")
        assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"carol got: still here\n"
        writer.close()

        # bob follows (new leaf, new group): ingress and egress both pick it up
        install(asset(new_key), bob.deploy)
        await wait_for_generation(bob.gateway, 2)
        assert await ask(bob.egress, b"again") == b"carol got: again\n"
        assert await ask(carol.egress, b"back") == b"bob got: back\n"
        assert (bob.ingress, bob.egress, carol.ingress, carol.egress) == ports


@pytest.mark.asyncio
async def test_stopping_while_a_tunnel_connects_closes_its_client(pm, tmp_path, group_key):
    """The egress is still in the TLS handshake with a peer that never answers when the
    gateway stops: the tunnel's handler is cancelled and closes its client's connection (it
    used to leave it open, its socket held until the transport was collected)."""
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        with contextlib.suppress(ConnectionError, OSError):
            await reader.read()  # never answers the handshake
        writer.close()

    peer = await asyncio.start_server(silent, "127.0.0.1", 0)
    deploy = install(asset(group_key), tmp_path / "bob")
    tls = {"cert_path": "tls.crt", "private_key_path": "tls.key"}
    config = parse_config(
        {
            "listeners": [{"name": "mtls_egress", "address": "127.0.0.1:0", "tcp_proxy": "peer"}],
            "clusters": {
                "peer": {
                    "endpoints": [f"127.0.0.1:{peer.sockets[0].getsockname()[1]}"],
                    "tls": tls,
                }
            },
        },
        base=deploy,
    )
    try:
        async with Gateway(config, pm) as gateway:
            port = gateway.addresses["mtls_egress"].port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hello\n")
            await asyncio.wait_for(accepted.wait(), TIMEOUT)
        try:
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # closed
        except ConnectionResetError:
            pass  # closed too
        finally:
            writer.close()
    finally:
        peer.close()
        await peer.wait_closed()


@pytest.mark.asyncio
async def test_a_tampered_file_during_reload_keeps_the_previous_asset(pm, tmp_path, group_key):
    async with pair(pm, tmp_path, asset(group_key), asset(group_key)) as (bob, carol):
        crt = carol.deploy / "tls.crt"
        crt.write_bytes(flip_pem_byte(crt.read_bytes(), 1))
        assert carol.gateway.mtls is not None
        (watcher,) = carol.gateway.mtls.watchers.values()
        for _ in range(100):
            if watcher.last_error is not None:
                break
            await asyncio.sleep(0.05)
        assert isinstance(watcher.last_error, VerificationError)
        assert watcher.generation == 1
        assert await ask(bob.egress, b"ok") == b"carol got: ok\n"


# ---- start-up refusal -------------------------------------------------------------------------


def tampered_files(kind: str, directory: Path, group_key: bytes) -> None:
    install(asset(group_key), directory)
    crt, key = directory / "tls.crt", directory / "tls.key"
    if kind == "leaf byte":
        crt.write_bytes(flip_pem_byte(crt.read_bytes(), 0))
    elif kind == "ca byte":
        crt.write_bytes(flip_pem_byte(crt.read_bytes(), 1))
    elif kind == "key of another member":
        other = asset(group_key)
        key.write_bytes(other.private_key_pem)
    elif kind == "ca of another group":
        leaf = crt.read_bytes().split(b"-----END CERTIFICATE-----\n")[0]
        ca = asset(os.urandom(32)).cert_pem.split(b"-----END CERTIFICATE-----\n")[1]
        crt.write_bytes(leaf + b"-----END CERTIFICATE-----\n" + ca + b"-----END CERTIFICATE-----\n")
    elif kind == "missing key":
        key.unlink()


TAMPERING = ["leaf byte", "ca byte", "key of another member", "ca of another group", "missing key"]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", TAMPERING)
async def test_a_tampered_asset_is_refused_at_start(pm, tmp_path, group_key, kind):
    tampered_files(kind, tmp_path, group_key)
    config = native_config(tmp_path, 0, 0, free_port(), free_port())
    with pytest.raises((VerificationError, FileNotFoundError)) as info:
        async with Gateway(config, pm):
            pass
    assert "listener 'mtls_ingress'" in str(info.value)
    assert str(tmp_path / "tls.") in str(info.value)


@pytest.mark.parametrize("kind", ["ca byte", "key of another member"])
def test_trustflow_gateway_refuses_a_tampered_asset_with_one_line(tmp_path, group_key, kind):
    tampered_files(kind, tmp_path / "deploy", group_key)
    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "channel_mtls"}
    result = subprocess.run(
        [
            str(TRUSTFLOW),
            "gateway",
            "-c",
            str(ENVOY_DIR / "interact-bob-envoy.yml"),
            "--map-address",
            "0.0.0.0=127.0.0.1:0",
            "--map-path",
            f"/shared/deploy={tmp_path / 'deploy'}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "tls.crt" in lines[0] and "Traceback" not in result.stderr
    assert ("chain" if kind == "ca byte" else "key_match") in lines[0]


# ---- config checks -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tls_options_the_channel_cannot_honour_are_refused(pm, tmp_path, group_key):
    install(asset(group_key), tmp_path)
    base = native_config(tmp_path, 0, 0, free_port(), free_port())
    ingress = base.listeners[0]
    assert ingress.tls is not None
    common = ingress.tls["common_tls_context"]
    cases = {
        "require_client_certificate": {**ingress.tls, "require_client_certificate": False},
        "trusted_ca must be": {
            **ingress.tls,
            "common_tls_context": {
                **common,
                "validation_context": {"trusted_ca": {"filename": str(tmp_path / "other.crt")}},
            },
        },
        "unsupported TLS option": {
            **ingress.tls,
            "common_tls_context": {
                **common,
                "validation_context": {
                    **common["validation_context"],
                    "match_subject_alt_names": [{"exact": "carol"}],
                },
            },
        },
    }
    for message, tls in cases.items():
        config = GatewayConfig(
            (type(ingress)(ingress.name, ingress.address, tcp_cluster="app", tls=tls),),
            base.clusters,
        )
        with pytest.raises(InvalidInput, match=message):
            async with Gateway(config, pm):
                pass


@pytest.mark.asyncio
async def test_an_http_route_to_a_tls_cluster_is_refused(pm, tmp_path, group_key):
    install(asset(group_key), tmp_path)
    config = parse_config(
        {
            "listeners": [
                {"name": "h", "address": "127.0.0.1:0", "routes": [{"prefix": "/", "cluster": "p"}]}
            ],
            "clusters": {
                "p": {
                    "endpoints": ["127.0.0.1:1"],
                    "tls": {"cert_path": "tls.crt", "private_key_path": "tls.key"},
                }
            },
        },
        base=tmp_path,
    )
    with pytest.raises(UnsupportedOperation, match="only tcp_proxy listeners"):
        async with Gateway(config, pm):
            pass


def test_native_tls_min_version_is_checked(tmp_path):
    with pytest.raises(InvalidInput, match="min_version"):
        parse_config(
            {
                "listeners": [{"name": "x", "address": "127.0.0.1:0", "tcp_proxy": "a"}],
                "clusters": {
                    "a": {
                        "endpoints": ["127.0.0.1:1"],
                        "tls": {"cert_path": "c", "private_key_path": "k", "min_version": "SSLv3"},
                    }
                },
            },
            base=tmp_path,
        )
