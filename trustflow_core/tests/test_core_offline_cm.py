"""Scenario 2 end to end on loopback with the real Capsule Manager: alice and bob register the
keys of their (upstream-encrypted) inputs and policies granting carol's app the ``psi`` op; the
Data Capsule Proxy (``capsule_manager`` key exchange, SIM attestation) decrypts both inputs
byte-exact, the app joins them, the proxy registers the result key with both as ancestors, and
carol — whom the derived policy allows — decrypts the result with a key from the CM.
Faults: CM refusing, CM down (key fetch and result registration), endpoint not allowed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from test_core_offline_psi import expected_join

from trustflow_core.capsule import decrypt_file
from trustflow_core.errors import ObjectNotFound
from trustflow_core.harness.capsule_manager import BackgroundCapsuleManager
from trustflow_core.harness.data_capsule_proxy import running_proxy
from trustflow_core.keyexchange import Resource, ResourceRequest
from trustflow_core.manager import get_plugin_manager
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.roles.capsule_manager.settings import CMSettings
from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient
from trustflow_core.roles.capsule_manager_client.keyexchange import (
    CapsuleManagerKeyExchange,
    ephemeral_credentials,
)
from trustflow_core.roles.data_capsule_proxy.settings import DataCapsuleProxySettings

pytestmark = pytest.mark.asyncio
SCOPE = "default"
INPUTS = {"alice": "small.csv.enc", "bob": "large.csv.enc"}
GET = "/DataCapsuleProxy/GetInputData"
PUT = "/DataCapsuleProxy/PutResultData"


def dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def cm_world(tmp_path_factory, compat_dir_module, manifest_module) -> Iterator[dict[str, Any]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("TRUSTFLOW_LOAD_PLUGINS", "channel_jwe,tee_sim,storage_local,storage_oss")
    mp.setenv("TRUSTFLOW_SIM_DIR", str(tmp_path_factory.mktemp("sim")))
    home = tmp_path_factory.mktemp("carol")
    carol = ephemeral_credentials("carol")
    (home / "carol.crt").write_text(carol.chain_pems[0])
    (home / "carol.key").write_bytes(
        carol.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    owners = {"alice": ephemeral_credentials("alice"), "bob": ephemeral_credentials("bob")}
    rule_ops = ["psi", "train_test_split"]
    try:
        with BackgroundCapsuleManager(
            CMSettings(port=0, data_dir=tmp_path_factory.mktemp("cm"))
        ) as cm:

            async def register() -> None:
                async with CapsuleManagerClient(cm.target) as client:
                    for party, vector in INPUTS.items():
                        entry = manifest_module["data"][vector]
                        key_b64 = (compat_dir_module / entry["key_b64_file"]).read_text().strip()
                        uuid = f"breast_cancer_{party}"
                        await client.create_data_keys(owners[party], [(uuid, key_b64)])
                        rule = cm_pb2.Rule(
                            rule_id=f"{party}_rule_id_1",
                            grantee_party_ids=[carol.party_id],
                            op_constraints=[cm_pb2.Rule.OpConstraint(op_name=o) for o in rule_ops],
                            columns=["*"],
                            global_constraints=['r.env.tee.platform == "sim"'],
                        )
                        await client.create_data_policy(owners[party], SCOPE, uuid, [rule])

            asyncio.run(register())
            yield {"target": cm.target, "home": home, "carol": carol}
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def compat_dir_module():
    from trustflow_core.testing.fixtures import compat_vectors_dir

    return compat_vectors_dir()


@pytest.fixture(scope="module")
def manifest_module(compat_dir_module):
    return json.loads((compat_dir_module / "manifest.json").read_text())


@pytest.fixture
def data(tmp_path, compat_dir_module) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for party, vector in INPUTS.items():
        (data / f"{party}.csv.enc").write_bytes((compat_dir_module / "data" / vector).read_bytes())
    return data


@pytest_asyncio.fixture
async def proxy(cm_world, data) -> AsyncIterator[tuple[aiohttp.ClientSession, str, str]]:
    dead = dead_endpoint()
    settings = DataCapsuleProxySettings(
        cert_path=cm_world["home"] / "carol.crt",
        private_key_path=cm_world["home"] / "carol.key",
        allowed_roots=(str(data),),
        plat="sim",
        key_exchange="capsule_manager",
        cm_endpoint=cm_world["target"],
        allowed_cm_endpoints=(dead,),
        key_timeout=10,
    )
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        running_proxy(settings, get_plugin_manager()) as url,
        aiohttp.ClientSession(timeout=timeout) as http,
    ):
        yield http, url, dead


async def post(proxy, path: str, body: dict) -> tuple[int, str]:
    http, url, _ = proxy
    async with http.post(url + path, json=body) as r:
        return r.status, await r.text()


def get_body(party: str, data: Path, **cm: str) -> dict:
    config = {"scope": SCOPE, "op_name": "psi", "resource_uri": f"breast_cancer_{party}", **cm}
    return {
        "cm_resource_config": config,
        "local_fs_config": {"path": str(data / f"{party}.csv.enc")},
        "dest_config": {"path": str(data)},
    }


def visible(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


async def carol_key(cm_world, uuid: str) -> bytes:
    pm = get_plugin_manager()
    from trustflow_core.registry import ATTESTER, backend_class

    attester = backend_class(pm, ATTESTER, "sim").from_settings()
    kx = CapsuleManagerKeyExchange(
        cm_world["target"], attester=attester, credentials=cm_world["carol"], pm=pm
    )
    async with kx:
        request = ResourceRequest(cm_world["carol"].party_id, SCOPE, "psi", (Resource(uuid),))
        [key] = await kx.get_data_keys(request)
    return key.key


async def test_psi_end_to_end_with_the_capsule_manager(
    proxy, cm_world, data, compat_dir_module, manifest_module
):
    for party, vector in INPUTS.items():
        status, text = await post(proxy, GET, get_body(party, data))
        assert status == 200, text
        plain = (data / f"{party}.csv").read_bytes()
        assert (
            hashlib.sha256(plain).hexdigest() == manifest_module["data"][vector]["plaintext_sha256"]
        )
    joined = expected_join("compat_small_large")
    (data / "join.csv").write_bytes(joined)
    uuid = f"join_{os.urandom(4).hex()}"
    body = {
        "cm_result_config": {
            "scope": SCOPE,
            "resource_uri": uuid,
            "ancestor_uuids": ["breast_cancer_alice", "breast_cancer_bob"],
        },
        "source_config": {"path": str(data / "join.csv")},
        "local_fs_config": {"path": str(data)},
    }
    status, text = await post(proxy, PUT, body)
    assert status == 200, text
    # carol may use the result (derived policy: both rules grant her psi)
    key = await carol_key(cm_world, uuid)
    decrypt_file(data / "join.csv.enc", data.parent / "join.check", key)
    assert (data.parent / "join.check").read_bytes() == joined


async def test_cm_refusing_is_403_and_writes_nothing(proxy, data):
    body = get_body("alice", data)
    body["cm_resource_config"]["op_name"] = "xgb_train"  # not granted
    status, text = await post(proxy, GET, body)
    assert status == 403, text
    assert visible(data) == ["alice.csv.enc", "bob.csv.enc"]


async def test_cm_down_then_recovery(proxy, cm_world, data):
    dead = proxy[2]
    status, text = await post(proxy, GET, get_body("alice", data, endpoint=dead))
    assert status == 500, text
    assert visible(data) == ["alice.csv.enc", "bob.csv.enc"]

    (data / "r.csv").write_bytes(b"id\n1\n")
    uuid = f"res_{os.urandom(4).hex()}"
    body = {
        "cm_result_config": {
            "endpoint": dead,
            "scope": SCOPE,
            "resource_uri": uuid,
            "ancestor_uuids": ["breast_cancer_alice"],
        },
        "source_config": {"path": str(data / "r.csv")},
        "local_fs_config": {"path": str(data)},
    }
    status, text = await post(proxy, PUT, body)
    assert status == 500, text
    assert "r.csv.enc" not in visible(data)  # output removed: its key was never registered
    with pytest.raises(ObjectNotFound):
        await carol_key(cm_world, uuid)
    body["cm_result_config"]["endpoint"] = cm_world["target"]  # the CM is reachable again
    status, text = await post(proxy, PUT, body)
    assert status == 200, text
    assert "r.csv.enc" in visible(data)
    assert len(await carol_key(cm_world, uuid)) == 16


async def test_endpoint_not_allowed_is_403(proxy, data):
    status, text = await post(proxy, GET, get_body("alice", data, endpoint="127.0.0.2:1"))
    assert status == 403
    assert "allowed-cm-endpoint" in text


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


async def test_psi_with_s3_inputs_and_result(cm_world, tmp_path, compat_dir_module, moto_endpoint):
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=f"http://{moto_endpoint}",
        aws_access_key_id="ak",
        aws_secret_access_key="sk",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="cm-psi")
    for party, vector in INPUTS.items():
        blob = (compat_dir_module / "data" / vector).read_bytes()
        client.put_object(Bucket="cm-psi", Key=f"in/{party}.csv.enc", Body=blob)
    work = tmp_path / "work"
    work.mkdir()
    s3 = {
        "endpoint": moto_endpoint,
        "bucket": "cm-psi",
        "access_key_id": "ak",
        "access_key_secret": "sk",
        "type": "S3_STORAGE_TYPE_MINIO",
    }
    settings = DataCapsuleProxySettings(
        cert_path=cm_world["home"] / "carol.crt",
        private_key_path=cm_world["home"] / "carol.key",
        allowed_roots=(str(work),),
        key_exchange="capsule_manager",
        cm_endpoint=cm_world["target"],
        allowed_object_store_endpoints=(moto_endpoint,),
    )
    uuid = f"join_s3_{os.urandom(4).hex()}"
    async with (
        running_proxy(settings, get_plugin_manager()) as url,
        aiohttp.ClientSession() as http,
    ):
        for party in INPUTS:
            body = {
                "cm_resource_config": {
                    "scope": SCOPE,
                    "op_name": "psi",
                    "resource_uri": f"breast_cancer_{party}",
                },
                "s3_config": {**s3, "path": f"in/{party}.csv.enc"},
                "dest_config": {"path": str(work)},
            }
            async with http.post(url + GET, json=body) as r:
                assert r.status == 200, await r.text()
        joined = expected_join("compat_small_large")
        (work / "join.csv").write_bytes(joined)
        body = {
            "cm_result_config": {
                "scope": SCOPE,
                "resource_uri": uuid,
                "ancestor_uuids": ["breast_cancer_alice", "breast_cancer_bob"],
            },
            "source_config": {"path": str(work / "join.csv")},
            "s3_config": {**s3, "path": "out"},
        }
        async with http.post(url + PUT, json=body) as r:
            assert r.status == 200, await r.text()
    blob = client.get_object(Bucket="cm-psi", Key="out/join.csv.enc")["Body"].read()
    client.close()
    (tmp_path / "join.csv.enc").write_bytes(blob)
    decrypt_file(
        tmp_path / "join.csv.enc", tmp_path / "join.check", await carol_key(cm_world, uuid)
    )
    assert (tmp_path / "join.check").read_bytes() == joined
