"""The roles' logs (:mod:`trustflow_core.roles._logging`): JSON lines that parse one by one,
a request id carried end to end (client → gateway → app → Data Capsule Proxy → Capsule
Manager), and no key material at any level.

The flow runs on 127.0.0.1 with real servers: a Capsule Manager (sim attestation), a Data
Capsule Proxy, a gateway and an app behind it that asks the proxy for an owner's encrypted
input and puts a result; plus the online scenario (JWE filter) for the gateway's key.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from trustflow_core.attestation import Policy
from trustflow_core.capsule import encrypt_file
from trustflow_core.demo.online import online_stack, write_app_identity
from trustflow_core.harness.cm_world import grant_rule, running_cm
from trustflow_core.harness.data_capsule_proxy import running_proxy
from trustflow_core.roles import _logging
from trustflow_core.roles._admin import observe_middleware
from trustflow_core.roles._logging import (
    REQUEST_ID_HEADER,
    accept_request_id,
    current_request_id,
    setup_logging,
)
from trustflow_core.roles._server import start_site
from trustflow_core.roles.capsule_manager.settings import CMSettings
from trustflow_core.roles.client.online import OnlineClient
from trustflow_core.roles.data_capsule_proxy.settings import DataCapsuleProxySettings
from trustflow_core.roles.gateway.config import Address, Cluster, GatewayConfig, Listener, Route
from trustflow_core.roles.gateway.server import Gateway

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.plugins("channel_jwe", "tee_sim", "storage_local"),
    pytest.mark.usefixtures("plugin_env"),
]

SCOPE = "default"
REQUEST_ID = "flow-4711.abc"
RESULT_KEY = web.AppKey("result_key", str)


@pytest.fixture
def restore_logging(monkeypatch):
    """setup_logging changes the root logger (and what workers would be set up with): put the
    test runner's handlers back after."""
    monkeypatch.setattr(_logging, "_logging_args", _logging.logging_args())
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("trustflow", "trustflow_core")}
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def private_key_file(creds, path: Path) -> Path:
    path.write_bytes(
        creds.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def create_app(proxy_url: str, data: Path, cm_target: str) -> web.Application:
    """The app behind the gateway: POST /run gets the owner's input through the proxy and
    puts a result, passing its request id on in ``x-request-id``."""
    log = logging.getLogger("trustflow.test_app")

    async def call(http: aiohttp.ClientSession, method: str, body: dict) -> None:
        headers = {REQUEST_ID_HEADER: current_request_id() or ""}
        async with http.post(
            f"{proxy_url}/DataCapsuleProxy/{method}", json=body, headers=headers
        ) as r:
            assert r.status == 200, await r.text()

    async def run(request: web.Request) -> web.Response:
        log.info("app: task starts")
        async with aiohttp.ClientSession() as http:
            await call(
                http,
                "GetInputData",
                {
                    "cm_resource_config": {
                        "endpoint": cm_target,
                        "scope": SCOPE,
                        "op_name": "psi",
                        "resource_uri": "table_alice",
                    },
                    "local_fs_config": {"path": str(data / "alice.csv.enc")},
                    "dest_config": {"path": str(data)},
                },
            )
            (data / "result.csv").write_bytes((data / "alice.csv").read_bytes()[::-1])
            await call(
                http,
                "PutResultData",
                {
                    "cm_result_config": {
                        "endpoint": cm_target,
                        "scope": SCOPE,
                        "resource_uri": "table_result",
                        "ancestor_uuids": ["table_alice"],
                    },
                    "data_key_b64": request.app[RESULT_KEY],
                    "source_config": {"path": str(data / "result.csv")},
                    "local_fs_config": {"path": str(data / "out")},
                },
            )
        log.info("app: task done")
        return web.Response(text="done")

    app = web.Application(middlewares=[observe_middleware("app")])
    app.router.add_post("/run", run)
    return app


async def run_flow(tmp_path: Path, pm) -> dict[str, list[bytes]]:
    """Run the flow once; return the secrets it used (name → the forms they could take)."""
    platform_key = tmp_path / "platform.pem"
    data = tmp_path / "data"
    (data / "out").mkdir(parents=True)
    data_key, result_key = os.urandom(16), os.urandom(16)
    (data / "alice.csv").write_bytes(b"id,x\n1,2\n3,4\n")
    encrypt_file(data / "alice.csv", data / "alice.csv.enc", data_key)
    (data / "alice.csv").unlink()
    settings = CMSettings(
        port=0,
        data_dir=tmp_path / "cm",
        attester={"platform_key_file": str(platform_key)},
        verifiers={"sim": {"trusted_platform_keys": [str(platform_key)]}},
    )
    async with running_cm(settings, pm=pm) as world:
        await world.client.create_data_keys(
            world.alice, [("table_alice", base64.b64encode(data_key).decode())]
        )
        rule = grant_rule(world.app.party_id, global_constraints=['r.env.tee.platform == "sim"'])
        await world.client.create_data_policy(world.alice, SCOPE, "table_alice", [rule])
        cert = tmp_path / "app.crt"
        cert.write_text(world.app.chain_pems[0])
        key = private_key_file(world.app, tmp_path / "app.key")
        proxy_settings = DataCapsuleProxySettings(
            cert_path=cert,
            private_key_path=key,
            allowed_roots=(str(data),),
            plat="sim",
            key_exchange_settings={"attester_settings": {"platform_key_file": str(platform_key)}},
            cm_endpoint=world.target,
        )
        async with running_proxy(proxy_settings, pm) as proxy_url:
            app = create_app(proxy_url, data, world.target)
            app[RESULT_KEY] = base64.b64encode(result_key).decode()
            runner, app_port = await start_site(app, "127.0.0.1", 0)
            config = GatewayConfig(
                listeners=(
                    Listener("public", Address("127.0.0.1", 0), routes=(Route("/", "app"),)),
                ),
                clusters={"app": Cluster("app", (Address("127.0.0.1", app_port),))},
            )
            try:
                async with Gateway(config, pm) as gateway:
                    url = f"http://{gateway.addresses['public']}/run"
                    async with (
                        aiohttp.ClientSession() as http,
                        http.post(url, headers={REQUEST_ID_HEADER: REQUEST_ID}) as r,
                    ):
                        assert (r.status, await r.text()) == (200, "done")
                        assert r.headers[REQUEST_ID_HEADER] == REQUEST_ID
            finally:
                await runner.cleanup()
        assert (data / "out" / "result.csv.enc").exists()
        owners = [world.alice, world.bob, world.carol, world.app]

    online = tmp_path / "online"
    online.mkdir()
    jwe_cert, jwe_key = write_app_identity(online)
    async with online_stack(online, jwe_cert, jwe_key, pm=pm) as stack:
        async with OnlineClient(
            stack.gateway_url,
            policy=Policy(allow_simulation=True),
            pm=pm,
            verifier_settings=stack.verifier_settings,
        ) as client:
            reply = await client.request("/teeapp", b"a secret message")
        assert reply.plaintext == b"I got your message: a secret message\n"

    secrets: dict[str, list[bytes]] = {}
    for name, raw in (("data key", data_key), ("result key", result_key)):
        secrets[name] = [raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw)]
    storage_key = base64.b64decode(settings.key_paths[2].read_bytes())
    secrets["storage key"] = [base64.b64encode(storage_key), storage_key.hex().encode()]
    identity_key_file, _, _ = settings.key_paths
    pems = {
        "CM identity key": identity_key_file.read_bytes(),
        "sim platform key": platform_key.read_bytes(),
        "JWE app key": jwe_key.read_bytes(),
    }
    for creds in owners:
        pems[f"{creds.party_id[:8]} key"] = creds.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    for name, pem in pems.items():
        lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
        secrets[name] = lines[1:-1]  # whole 64-character lines of the key's base64
    return secrets


async def test_json_lines_carry_the_request_id_end_to_end(tmp_path, pm, restore_logging):
    log_file = tmp_path / "roles.log"
    setup_logging(str(log_file), "debug", log_format="json", role="test")
    await run_flow(tmp_path, pm)
    logging.getLogger().handlers[-1].flush()

    lines = [json.loads(line) for line in log_file.read_text().splitlines()]  # each one parses
    assert lines and all({"time", "level", "logger", "message", "pid"} <= set(e) for e in lines)
    ours = [e for e in lines if e.get("request_id") == REQUEST_ID]
    loggers = {e["logger"] for e in ours}
    assert "trustflow.gateway" in loggers  # the gateway's access line
    assert "trustflow.test_app" in loggers  # the app got it from the gateway
    assert "trustflow.data_capsule_proxy" in loggers  # the app passed it to the proxy
    assert "trustflow.capsule_manager.monitor" in loggers  # the proxy passed it to the CM
    cm_lines = [e["message"] for e in ours if e["logger"] == "trustflow.capsule_manager.monitor"]
    assert any("|get_data_keys|Y|" in m for m in cm_lines)
    assert any("|create_result_data_key|Y|" in m for m in cm_lines)
    # every line of the CM's RPCs made for this request carries it: none went without an id
    monitor = [e for e in lines if e["logger"] == "trustflow.capsule_manager.monitor"]
    for entry in monitor:
        if "|get_data_keys|" in entry["message"] or "|create_result_data_key|" in entry["message"]:
            assert entry.get("request_id") == REQUEST_ID
    # requests without an incoming id get a fresh one each: the online flow's lines have ids
    others = {e["request_id"] for e in lines if e.get("request_id", REQUEST_ID) != REQUEST_ID}
    assert others and all(len(rid) == 32 for rid in others)


async def test_no_key_material_in_debug_logs(tmp_path, pm, restore_logging):
    text_log, json_log = tmp_path / "text.log", tmp_path / "json.log"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    setup_logging(str(text_log), "debug", [("sqlalchemy", "debug"), ("grpc", "debug")])
    secrets = await run_flow(tmp_path / "a", pm)
    setup_logging(str(json_log), "debug", log_format="json")
    secrets.update({f"{k} (b)": v for k, v in (await run_flow(tmp_path / "b", pm)).items()})
    logging.getLogger().handlers[-1].flush()
    for log_file in (text_log, json_log):
        content = log_file.read_bytes()
        assert b"GetDataKeys" in content or b"get_data_keys" in content  # the flow was logged
        for name, forms in secrets.items():
            assert forms, name
            for form in forms:
                assert form not in content, f"{name} appears in {log_file.name}"


async def test_new_request_ids_are_a_process_prefix_and_a_counter():
    """Unique without a random draw per request: 20 hex digits of the process, drawn again
    in a forked child, then a counter."""
    ids = [_logging.new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert {i[:20] for i in ids} == {ids[0][:20]}
    assert [int(i[20:], 16) for i in ids] == list(
        range(int(ids[0][20:], 16), int(ids[0][20:], 16) + 1000)
    )
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.write(write, _logging.new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    in_child = os.read(read, 64).decode()
    os.close(read)
    assert len(in_child) == 32 and in_child[:20] != ids[0][:20]


async def test_request_ids_stay_consecutive_across_a_block_of_65536(monkeypatch):
    """The first 28 hex digits of an id are kept per block of 65,536 ids: crossing into the
    next block renews them, so the ids around the boundary are still the counter's values."""
    from trustflow_core.roles import _request_ids

    prefix = _logging.new_request_id()[:20]
    monkeypatch.setattr(_request_ids._IDS, "count", itertools.count(3 * 65536 - 3))
    ids = [_logging.new_request_id() for _ in range(6)]
    assert [i[20:] for i in ids] == [f"{n:012x}" for n in range(3 * 65536 - 3, 3 * 65536 + 3)]
    assert {i[:20] for i in ids} == {prefix}


async def test_request_ids_from_clients_are_checked():
    assert accept_request_id("abc-123") == "abc-123"
    for bad in ("", "a\nb", "x" * 129, "<script>", "a b", None):
        fresh = accept_request_id(bad)
        assert fresh != bad and len(fresh) == 32
