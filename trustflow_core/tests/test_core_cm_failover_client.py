"""The CM clients' failover layer (docs/failover.md) over real sockets on 127.0.0.1, with one
in-process CM (SQLite) and endpoints where nothing listens: the first endpoint down is skipped,
every endpoint down is one error naming each, a name resolving to several addresses is one
endpoint per address, the settings of the owner CLI, the key exchange and the Data Capsule
Proxy take endpoint lists, and the real ``trustflow cms`` works with its first endpoint dead.
The replicas sharing PostgreSQL are in test_core_cm_failover_replicas.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from click.testing import CliRunner
from prometheus_client import REGISTRY

from trustflow_core.cli import build_cli
from trustflow_core.errors import BackendUnavailable, InvalidInput
from trustflow_core.harness.capsule_manager import BackgroundCapsuleManager
from trustflow_core.harness.cm_world import (
    CMWorld,
    data_key_b64,
    grant_rule,
    new_data_uuid,
    running_cm,
)
from trustflow_core.keyexchange import Resource, ResourceRequest
from trustflow_core.registry import ATTESTER, backend_class
from trustflow_core.roles.capsule_manager.settings import CMSettings
from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient
from trustflow_core.roles.capsule_manager_client.failover import (
    Failover,
    expand,
    host_port,
    parse_endpoints,
)
from trustflow_core.roles.capsule_manager_client.keyexchange import CapsuleManagerKeyExchange
from trustflow_core.settings_schema import ConfigError, Node
from trustflow_core.testing.support import free_port

SCOPE = "default"
asyncio_test = pytest.mark.asyncio


@pytest_asyncio.fixture
async def world(sim_env: dict[str, str], tmp_path: Path) -> AsyncIterator[CMWorld]:
    settings = CMSettings(port=0, plat="sim", data_dir=tmp_path / "cm")
    async with running_cm(settings) as w:
        yield w


def dead() -> str:
    """``127.0.0.1:<port>`` where nothing listens (connection refused)."""
    return f"127.0.0.1:{free_port()}"


def failovers(method: str) -> float:
    """How many calls of ``method`` moved to another replica (this process)."""
    value = REGISTRY.get_sample_value("trustflow_cm_client_failovers_total", {"rpc": method})
    return value or 0.0


# ---- parsing -------------------------------------------------------------------------------


def test_endpoint_lists_parse_in_order_without_repeats() -> None:
    assert parse_endpoints("a:1, b:2,a:1") == ("a:1", "b:2")
    assert parse_endpoints(["a:1", "b:2,c:3"]) == ("a:1", "b:2", "c:3")
    with pytest.raises(InvalidInput, match="empty entry"):
        parse_endpoints("a:1,,b:2")
    assert host_port("[::1]:8888") == ("::1", 8888)
    assert host_port("cm.example:8888") == ("cm.example", 8888)
    assert host_port("dns:///cm.example:8888") is None  # a gRPC URI is dialled as given


def test_settings_take_a_list_or_a_comma_separated_string() -> None:
    assert Node("a:1,b:2", "f").endpoints() == ("a:1", "b:2")
    assert Node(["a:1", "b:2"], "f").endpoints() == ("a:1", "b:2")
    with pytest.raises(ConfigError, match="host:port"):
        Node("a:1,b", "f", "cm_endpoint").endpoints()
    with pytest.raises(ConfigError, match="without empty entries"):
        Node("a:1,", "f", "cm_endpoint").endpoints()


def test_data_capsule_proxy_cm_endpoint_list(tmp_path: Path) -> None:
    from trustflow_core.roles.data_capsule_proxy.keysource import KeySource
    from trustflow_core.roles.data_capsule_proxy.settings import (
        CONFIG_KEYS,
        DataCapsuleProxySettings,
    )

    read = CONFIG_KEYS["cm_endpoint"]
    assert read(Node(["10.0.0.1:8888", "10.0.0.2:8888"], "dcp.yaml")) == (
        "10.0.0.1:8888,10.0.0.2:8888"
    )
    source = KeySource(
        CapsuleManagerKeyExchange,
        {},
        cm_endpoint="10.0.0.1:8888,10.0.0.2:8888",
        party_id="p",
        pm=None,  # type: ignore[arg-type]
    )
    # a request naming one of the replicas is served by the failover instance of the list
    assert source._replicas == {"10.0.0.1:8888", "10.0.0.2:8888"}
    # key_timeout bounds a call: each replica's attempt gets its share
    settings = DataCapsuleProxySettings(
        tmp_path / "c",
        tmp_path / "k",
        (str(tmp_path),),
        cm_endpoint=source.cm_endpoint,
        key_timeout=30,
    )
    exchange = settings.exchange_settings("sim")
    assert exchange["endpoint"] == source.cm_endpoint and exchange["timeout"] == 15


# ---- one endpoint down, all down ----------------------------------------------------------


@asyncio_test
async def test_first_endpoint_down_is_served_by_the_second(world: CMWorld) -> None:
    before = failovers("GetRaCert")
    async with CapsuleManagerClient([dead(), world.target], pm=world.pm) as client:
        uuid = new_data_uuid()
        await client.create_data_keys(world.alice, [(uuid, data_key_b64())])
        await client.create_data_policy(world.alice, SCOPE, uuid, [grant_rule(world.app.party_id)])
        policies = await client.list_data_policies(world.alice, SCOPE)
        assert uuid in [p.data_uuid for p in policies]
        # the replica that answered is kept: later calls go to it first
        assert client.grpc_channel() is client.failover._channels[world.target]
    assert failovers("GetRaCert") == before + 1  # only the first call had to move on


@asyncio_test
async def test_attested_key_request_fails_over(world: CMWorld, tmp_path: Path) -> None:
    uuid = new_data_uuid()
    await world.client.create_data_keys(world.alice, [(uuid, data_key_b64())])
    await world.client.create_data_policy(
        world.alice, SCOPE, uuid, [grant_rule(world.app.party_id)]
    )
    attester = backend_class(world.pm, ATTESTER, "sim").from_settings()
    settings = {"endpoint": [dead(), world.target], "tee_plat": "sim"}
    kx = CapsuleManagerKeyExchange.from_role(settings, pm=world.pm)
    kx.attester, kx.credentials = attester, world.app
    async with kx:
        request = ResourceRequest(world.app.party_id, SCOPE, "psi", (Resource(uuid),))
        keys = await kx.get_data_keys(request)
    assert [k.resource_uri for k in keys] == [uuid]


@asyncio_test
async def test_every_endpoint_down_is_one_error_naming_each(world: CMWorld) -> None:
    endpoints = [dead(), dead(), dead()]
    async with CapsuleManagerClient(
        ",".join(endpoints), pm=world.pm, failover_backoff=0.05
    ) as client:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as caught:
            await client.get_ra_cert()
        assert time.monotonic() - started < 5
    message = str(caught.value)
    assert message.startswith("no capsule manager replica answered GetRaCert (3 tried): ")
    for endpoint in endpoints:
        assert f"{endpoint}: connection refused" in message
    assert "\n" not in message and "ipv4:" not in message


@asyncio_test
async def test_a_single_endpoint_is_tried_once_as_before(world: CMWorld) -> None:
    endpoint = dead()
    async with CapsuleManagerClient(endpoint, pm=world.pm) as client:
        with pytest.raises(BackendUnavailable) as caught:
            await client.get_ra_cert()
    assert str(caught.value) == (
        f"capsule manager {endpoint} is unreachable: connection refused (GetRaCert)"
    )


@asyncio_test
async def test_refusals_are_answers_not_failovers(world: CMWorld) -> None:
    """An in-band refusal of the first replica is not retried on the second (only a replica
    that is down or silent is)."""
    from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerError

    async with CapsuleManagerClient([world.target, dead()], pm=world.pm) as client:
        uuid = new_data_uuid()
        await client.create_data_keys(world.alice, [(uuid, data_key_b64())])
        before = failovers("CreateDataKeys")
        with pytest.raises(CapsuleManagerError, match="party_id"):
            await client.create_data_keys(world.bob, [(uuid, data_key_b64())])
        assert failovers("CreateDataKeys") == before


# ---- one name, several addresses ----------------------------------------------------------


@asyncio_test
async def test_a_name_resolving_to_several_addresses_is_one_endpoint_each(
    world: CMWorld,
) -> None:
    """``cm.test`` resolves to 127.0.0.2 (nothing listens there: the CM binds 127.0.0.1) and
    127.0.0.1: the first address is refused, the second serves."""
    port = int(world.target.rpartition(":")[2])

    async def resolve(host: str, p: int) -> list[str]:
        assert (host, p) == ("cm.test", port)
        return ["127.0.0.2", "127.0.0.1"]

    addresses = await expand([f"cm.test:{port}"], resolve)
    assert [str(a) for a in addresses] == [
        f"cm.test:{port} (127.0.0.2)",
        f"cm.test:{port} (127.0.0.1)",
    ]
    client = CapsuleManagerClient(f"cm.test:{port}", pm=world.pm)
    client._failover = Failover(client.endpoints, resolve=resolve)
    async with client:
        cert, _ = await client.get_ra_cert()
    assert cert == world.cm.identity.cert_pem


# ---- the owner CLI -------------------------------------------------------------------------


@pytest.fixture
def background_cm(sim_env: dict[str, str], tmp_path: Path) -> Iterator[BackgroundCapsuleManager]:
    with BackgroundCapsuleManager(CMSettings(port=0, plat="sim", data_dir=tmp_path / "bg")) as cm:
        yield cm


def test_owner_cli_with_its_first_endpoint_dead(
    background_cm: BackgroundCapsuleManager, tmp_path: Path
) -> None:
    group = build_cli()
    runner = CliRunner()

    def cli(*args: str) -> Any:
        result = runner.invoke(group, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    key, cert = tmp_path / "alice.key", tmp_path / "alice.crt"
    cli("util", "generate-rsa-keypair", "--private-key-file", str(key), "--cert-file", str(cert))
    data_key = tmp_path / "data.key"
    data_key.write_text(cli("util", "generate-data-key-b64").strip())
    uuid = new_data_uuid()
    owner = ["--key-file", str(key), "--cert-file", str(cert)]
    hosts = f"{dead()},{background_cm.target}"
    cli("cms", "--host", hosts, *owner, "register-data-keys", "--resource-uri", uuid,
        "--data-key-file", str(data_key))  # fmt: skip
    # the YAML's host as a list
    config = tmp_path / "alice.yaml"
    config.write_text(
        f"host: [{dead()}, {background_cm.target}]\ntee_plat: sim\n"
        f"common: {{private_key_file: {key}, cert_pems_file: {cert}}}\n"
    )
    cli("cms", "--config-file", str(config), "register-data-policy", "--scope", SCOPE,
        "--data-uuid", uuid, "--rule-id", "r1", "--grantee", "someone", "--op", "psi")  # fmt: skip
    listed = cli("cms", "--config-file", str(config), "--json", "get-data-policys")
    assert uuid in listed


def test_owner_cli_every_endpoint_dead_is_one_line(tmp_path: Path, sim_env: dict[str, str]) -> None:
    group = build_cli()
    runner = CliRunner()
    key, cert = tmp_path / "alice.key", tmp_path / "alice.crt"
    runner.invoke(
        group,
        ["util", "generate-rsa-keypair", "--private-key-file", str(key), "--cert-file", str(cert)],
        catch_exceptions=False,
    )
    first, second = dead(), dead()
    result = runner.invoke(
        group,
        [
            "cms",
            "--host",
            f"{first},{second}",
            "--key-file",
            str(key),
            "--cert-file",
            str(cert),
            "delete-data-key",
            "--resource-uri",
            "u1",
        ],
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert (
        f"{first}: connection refused" in lines[0] and f"{second}: connection refused" in lines[0]
    )


@asyncio_test
async def test_deadline_exceeded_moves_on(world: CMWorld) -> None:
    """A replica that accepts connections and never answers (hung, or cut off behind a
    proxy) costs one per-attempt timeout, then the next replica answers."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        silent = f"127.0.0.1:{listener.getsockname()[1]}"
        async with CapsuleManagerClient([silent, world.target], pm=world.pm, timeout=1.0) as c:
            started = time.monotonic()
            cert, _ = await c.get_ra_cert()
            assert 0.9 < time.monotonic() - started < 10
        assert cert == world.cm.identity.cert_pem
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


@asyncio_test
async def test_concurrent_calls_share_the_failover(world: CMWorld) -> None:
    async with CapsuleManagerClient([dead(), world.target], pm=world.pm) as client:
        certs = await asyncio.gather(*(client.get_ra_cert() for _ in range(8)))
    assert {c for c, _ in certs} == {world.cm.identity.cert_pem}
