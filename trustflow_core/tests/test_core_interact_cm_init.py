"""Data Capsule Proxy ``--cm-init-config`` over a real Capsule Manager on loopback (scenario 3
start-up): bob and carol, both granted ``interact`` on alice's data, get assets of the same group
(real mTLS handshakes between them succeed); a party granted another data key is refused at the
handshake; a party not granted is refused by the CM (no file written); a party whose grant was
deleted is refused on its next fetch (files keep the last good asset); tampered existing files
refuse start-up; files are written atomically, key 0600."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from trustflow_core.errors import AccessDenied, VerificationError
from trustflow_core.harness.capsule_manager import BackgroundCapsuleManager
from trustflow_core.identity import party_id_of_key
from trustflow_core.manager import get_plugin_manager
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.registry import TRANSPORT_CHANNEL, backend_class
from trustflow_core.roles._server import start_site
from trustflow_core.roles.capsule_manager.settings import CMSettings
from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient, Credentials
from trustflow_core.roles.capsule_manager_client.keyexchange import ephemeral_credentials
from trustflow_core.roles.data_capsule_proxy.app import CmInitError, create_app
from trustflow_core.roles.data_capsule_proxy.appkeys import TLS_FETCHER
from trustflow_core.roles.data_capsule_proxy.cm_init import load_cm_init, parse_cm_init
from trustflow_core.roles.data_capsule_proxy.settings import DataCapsuleProxySettings
from trustflow_core.settings_schema import ConfigError, Node
from trustflow_core.tls_asset import load_tls_asset

SCOPE = "default"
DATA = "breast_cancer_alice"
OTHER = "other_data_alice"
SAMPLE = Path(__file__).resolve().parents[3] / "shared/testdata/envoy/interact-bob-cm_init.yaml"
PLUGINS = "channel_jwe,channel_mtls,tee_sim,storage_local"


def _key_pem(creds: Credentials) -> bytes:
    return creds.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A CM where alice's ``DATA`` grants bob, carol and erin ``interact`` (erin by her own
    rule, which a test deletes) and ``OTHER`` grants dave ``interact``."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRUSTFLOW_LOAD_PLUGINS", PLUGINS)
    mp.setenv("TRUSTFLOW_SIM_DIR", str(tmp_path_factory.mktemp("sim")))
    parties = {p: ephemeral_credentials(p) for p in ("alice", "bob", "carol", "dave", "erin")}
    parties["mallory"] = ephemeral_credentials("mallory")
    try:
        with BackgroundCapsuleManager(
            CMSettings(port=0, data_dir=tmp_path_factory.mktemp("cm"))
        ) as cm:

            def rule(rule_id: str, *grantees: str) -> cm_pb2.Rule:
                return cm_pb2.Rule(
                    rule_id=rule_id,
                    grantee_party_ids=[parties[g].party_id for g in grantees],
                    op_constraints=[cm_pb2.Rule.OpConstraint(op_name="interact")],
                    columns=["*"],
                )

            async def register() -> None:
                alice = parties["alice"]
                async with CapsuleManagerClient(cm.target) as client:
                    keys = [(u, base64.b64encode(os.urandom(16)).decode()) for u in (DATA, OTHER)]
                    await client.create_data_keys(alice, keys)
                    await client.create_data_policy(
                        alice,
                        SCOPE,
                        DATA,
                        [rule("alice_rule_id2", "bob", "carol"), rule("erin_rule", "erin")],
                    )
                    await client.create_data_policy(
                        alice, SCOPE, OTHER, [rule("dave_rule", "dave")]
                    )

            asyncio.run(register())
            yield {"target": cm.target, "parties": parties}
    finally:
        mp.undo()


def identity(home: Path, creds: Credentials) -> tuple[Path, Path]:
    home.mkdir(parents=True, exist_ok=True)
    cert, key = home / "app.crt", home / "app.key"
    cert.write_text(creds.chain_pems[0])
    key.write_bytes(_key_pem(creds))
    key.chmod(0o600)
    return cert, key


def cm_init_file(home: Path, data: str = DATA) -> Path:
    """A cm_init.yaml like the upstream sample, with this party's deploy directory."""
    sample = yaml.safe_load(SAMPLE.read_text())
    sample["resource"][0]["resource_uri"] = data
    sample["tls_cert_path"] = str(home / "deploy" / "tls.crt")
    sample["tls_key_path"] = str(home / "deploy" / "tls.key")
    path = home / "cm_init.yaml"
    path.write_text(yaml.safe_dump(sample))
    return path


def settings_for(
    world: dict[str, Any], home: Path, party: str, data: str = DATA, **extra: Any
) -> DataCapsuleProxySettings:
    cert, key = identity(home, world["parties"][party])
    (home / "root").mkdir(exist_ok=True)
    return DataCapsuleProxySettings(
        cert_path=cert,
        private_key_path=key,
        allowed_roots=(str(home / "root"),),
        plat="sim",
        cm_endpoint=world["target"],
        key_timeout=20,
        cm_init=load_cm_init(cm_init_file(home, data)),
        **extra,
    )


@pytest_asyncio.fixture
async def start(world) -> AsyncIterator[Any]:
    runners = []

    async def start_proxy(settings: DataCapsuleProxySettings) -> Any:
        app = create_app(settings, get_plugin_manager())
        runner, _ = await start_site(app, "127.0.0.1", 0)
        runners.append(runner)
        return app[TLS_FETCHER]

    yield start_proxy
    for runner in reversed(runners):
        await runner.cleanup()


def mtls():
    return backend_class(get_plugin_manager(), TRANSPORT_CHANNEL, "mtls").from_settings({})


async def handshake(server_files: tuple[Path, Path], client_files: tuple[Path, Path]) -> bytes:
    """One mTLS connection from ``client_files``' asset to a server with ``server_files``';
    the server echoes the client's party id (leaf CN). Raises ssl.SSLError on refusal."""
    channel = mtls()
    server_ctx = channel.server_ssl_context(load_tls_asset(*server_files)[0])
    client_ctx = channel.client_ssl_context(load_tls_asset(*client_files)[0])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        cn = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        writer.write(str(cn[0].value).encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx), 10
        )
        try:
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
    finally:
        server.close()


def files(settings: DataCapsuleProxySettings) -> tuple[Path, Path]:
    assert settings.cm_init is not None
    return settings.cm_init.tls_cert_path, settings.cm_init.tls_key_path


def member_id(world: dict[str, Any], party: str) -> str:
    return party_id_of_key(world["parties"][party].chain[0].public_key())


# ---- the config file ----------------------------------------------------------------------


def test_upstream_sample_parses_into_the_request() -> None:
    sample = yaml.safe_load(SAMPLE.read_text())
    config = load_cm_init(SAMPLE)
    request = config.resource_request("PARTY")
    assert request.initiator_party_id == "PARTY"
    assert (request.scope, request.op_name) == (sample["scope"], sample["op_name"])
    assert [r.resource_uri for r in request.resources] == [
        r["resource_uri"] for r in sample["resource"]
    ]
    assert request.resources[0].columns == ()
    assert str(config.tls_cert_path) == sample["tls_cert_path"]
    assert str(config.tls_key_path) == sample["tls_key_path"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("op_name"), "cm_init.yaml: missing required key(s) op_name"),
        (
            lambda d: d.update(resource={"resource_uri": "x"}),
            "cm_init.yaml: resource: expected a list, got a mapping",
        ),
        (lambda d: d.update(resource=[]), "cm_init.yaml: resource: empty"),
        (
            lambda d: d.update(tls_key_path=d["tls_cert_path"]),
            "cm_init.yaml: tls_cert_path and tls_key_path must differ",
        ),
        (lambda d: d.update(tls_cert_pth="x"), "cm_init.yaml: unknown key(s) tls_cert_pth; known:"),
        (
            lambda d: d["resource"][0].update(columns="id"),
            "cm_init.yaml: resource[0].columns: expected a list, got 'id'",
        ),
        (
            lambda d: d["resource"][0].pop("resource_uri"),
            "cm_init.yaml: resource[0]: missing required key(s) resource_uri",
        ),
        (lambda d: d.update(scope=["a"]), "cm_init.yaml: scope: expected a string, got a list"),
    ],
)
def test_bad_config_is_refused_with_the_reason(change, message) -> None:
    data = yaml.safe_load(SAMPLE.read_text())
    change(data)
    with pytest.raises(ConfigError) as info:
        parse_cm_init(Node(data, "cm_init.yaml"))
    assert str(info.value).startswith(message)


def test_relative_paths_are_relative_to_the_config_file(tmp_path) -> None:
    data = yaml.safe_load(SAMPLE.read_text())
    data.update(tls_cert_path="deploy/tls.crt", tls_key_path="deploy/tls.key")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    config = load_cm_init(tmp_path / "c.yaml")
    assert config.tls_cert_path == tmp_path / "deploy" / "tls.crt"
    (tmp_path / "bad.yaml").write_text("scope: [")
    with pytest.raises(ConfigError) as info:
        load_cm_init(tmp_path / "bad.yaml")
    assert str(info.value).startswith(
        f"{tmp_path / 'bad.yaml'}: not valid YAML: line 1, column 9: expected"
    )


# ---- against the CM -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_bob_and_carol_join_one_group_and_talk(world, start, tmp_path) -> None:
    bob = settings_for(world, tmp_path / "bob", "bob")
    carol = settings_for(world, tmp_path / "carol", "carol")
    fetchers = [await start(bob), await start(carol)]
    infos = [load_tls_asset(*files(s))[1] for s in (bob, carol)]
    assert infos[0].anchor_fingerprint == infos[1].anchor_fingerprint  # same group CA
    assert [f.info.anchor_fingerprint for f in fetchers] == [i.anchor_fingerprint for i in infos]
    for party, info in zip(("bob", "carol"), infos, strict=True):
        cn = info.leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == member_id(world, party)
    assert infos[0].leaf.public_key() != infos[1].leaf.public_key()
    for s in (bob, carol):
        cert, key = files(s)
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(cert.stat().st_mode) == 0o644
        assert sorted(p.name for p in cert.parent.iterdir()) == ["tls.crt", "tls.key"]
    # real mutual TLS both ways; each side sees the other's party id
    assert await handshake(files(bob), files(carol)) == member_id(world, "carol").encode()
    assert await handshake(files(carol), files(bob)) == member_id(world, "bob").encode()


@pytest.mark.asyncio
async def test_member_of_another_group_is_refused_at_the_handshake(world, start, tmp_path):
    bob = settings_for(world, tmp_path / "bob", "bob")
    dave = settings_for(world, tmp_path / "dave", "dave", data=OTHER)  # granted other data
    await start(bob)
    await start(dave)
    assert load_tls_asset(*files(dave))[1].anchor_fingerprint != (
        load_tls_asset(*files(bob))[1].anchor_fingerprint
    )
    for server, client in ((bob, dave), (dave, bob)):
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            got = await handshake(files(server), files(client))
            assert got == b"", "the server must not answer a non-member"  # TLS 1.3 late alert
            raise ConnectionError("closed without an answer")


@pytest.mark.asyncio
async def test_party_not_granted_is_refused_and_nothing_is_written(world, start, tmp_path):
    mallory = settings_for(world, tmp_path / "mallory", "mallory")
    with pytest.raises(CmInitError) as info:
        await start(mallory)
    assert isinstance(info.value.__cause__, AccessDenied)
    assert "op 'interact'" in str(info.value) and "code 7" in str(info.value)
    deploy = files(mallory)[0].parent
    assert not deploy.exists() or list(deploy.iterdir()) == []


@pytest.mark.asyncio
async def test_deleted_grant_is_refused_on_the_next_fetch(world, start, tmp_path) -> None:
    erin = settings_for(
        world, tmp_path / "erin", "erin", tls_refresh_fraction=0.0, tls_retry_interval=0.2
    )
    fetcher = await start(erin)  # fraction 0: the background task re-fetches every 0.2 s
    cert, key = files(erin)
    before = (cert.read_bytes(), key.read_bytes())
    for _ in range(100):
        if fetcher.fetches >= 3:
            break
        await asyncio.sleep(0.1)
    assert fetcher.fetches >= 3 and fetcher.failures == 0
    async with CapsuleManagerClient(world["target"]) as client:
        await client.delete_data_rule(world["parties"]["alice"], SCOPE, DATA, "erin_rule")
    for _ in range(100):
        if fetcher.failures:
            break
        await asyncio.sleep(0.1)
    assert isinstance(fetcher.last_error, AccessDenied)
    with pytest.raises(AccessDenied):
        await fetcher.fetch()
    # the files keep the last good asset, untouched
    assert (cert.read_bytes(), key.read_bytes()) == before
    assert sorted(p.name for p in cert.parent.iterdir()) == ["tls.crt", "tls.key"]


@pytest.mark.asyncio
async def test_files_are_replaced_atomically(world, start, tmp_path) -> None:
    carol = settings_for(world, tmp_path / "carol", "carol")
    fetcher = await start(carol)
    cert, key = files(carol)
    inodes = (cert.stat().st_ino, key.stat().st_ino)
    with open(cert, "rb") as reader:  # a reader of the old file keeps a complete old file
        await fetcher.fetch()
        assert reader.read() == cert.read_bytes()  # same window: same bytes, new file
    assert (cert.stat().st_ino, key.stat().st_ino) != inodes
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


@pytest.mark.asyncio
async def test_tampered_existing_files_refuse_start_up(world, start, tmp_path) -> None:
    carol = settings_for(world, tmp_path / "carol", "carol")
    fetcher = await start(carol)
    cert, key = files(carol)
    # someone appends their own CA to tls.crt (upstream Envoy would trust it)
    stranger = ephemeral_credentials("stranger").chain_pems[0].encode()
    cert.write_bytes(cert.read_bytes() + stranger)
    tampered = cert.read_bytes()
    with pytest.raises(CmInitError) as info:
        await start(carol)
    assert isinstance(info.value.__cause__, VerificationError)
    assert info.value.__cause__.check == "tampered"
    assert str(cert) in str(info.value) and "not signed by" in str(info.value)
    assert cert.read_bytes() == tampered  # the evidence is kept
    # a benign leftover (key of another leaf, as after an interrupted rotation) is replaced
    cert.write_bytes(tampered[: -len(stranger)])
    other = settings_for(world, tmp_path / "bob", "bob")
    await start(other)
    key.write_bytes(files(other)[1].read_bytes())
    await start(carol)
    assert load_tls_asset(cert, key)[1].anchor_fingerprint == fetcher.info.anchor_fingerprint


@pytest.mark.asyncio
async def test_cm_unreachable_fails_start_up(world, start, tmp_path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    settings = settings_for(world, tmp_path / "bob", "bob")
    settings = DataCapsuleProxySettings(
        **{**settings.__dict__, "cm_endpoint": dead, "key_timeout": 5}
    )
    with pytest.raises(CmInitError, match="cannot get the TLS asset"):
        await start(settings)
    assert not files(settings)[0].exists()
