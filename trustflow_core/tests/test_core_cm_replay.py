"""Replay of captured owner requests (hardening finding 2), over real gRPC on 127.0.0.1 against
SQLite, PostgreSQL and MariaDB.

The attacker is a network observer: it holds a captured ``EncryptedRequest`` (JWE sealed to the
CM's key, inner JWS signed by the owner) and can re-send or re-encode it, never open it. Requests
are built as the upstream SDK builds them (no freshness claims) and as our client builds them
(``iat``/``jti`` in the JWS protected header).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf.message import Message

from trustflow_core.channel import Jwe
from trustflow_core.manager import get_plugin_manager
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.roles.capsule_manager.server import CapsuleManager
from trustflow_core.roles.capsule_manager.settings import CMSettings
from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient, Credentials
from trustflow_core.roles.capsule_manager_client.keyexchange import ephemeral_credentials
from trustflow_core.wire import to_json

pytestmark = pytest.mark.asyncio(loop_scope="module")
SCOPE = "default"
#: A database written by the schema-1 CM (storage key bytes 0..31).
V1_DATABASE = Path(__file__).parent / "data" / "cm_schema_v1.db"


@dataclasses.dataclass
class World:
    cm: CapsuleManager
    client: CapsuleManagerClient
    alice: Credentials
    carol: Credentials


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def w(
    sim_env: None, db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    pm = get_plugin_manager()
    settings = CMSettings(
        port=0, plat="sim", data_dir=tmp_path_factory.mktemp("cm"), storage_url=db_url
    )
    cm = CapsuleManager(settings, pm=pm)
    port = await cm.start()
    client = CapsuleManagerClient(f"127.0.0.1:{port}", pm=pm)
    alice = ephemeral_credentials("alice", key_size=2048)
    carol = ephemeral_credentials("carol", key_size=2048)
    try:
        yield World(cm, client, alice, carol)
    finally:
        await client.aclose()
        await cm.stop()


def uid() -> str:
    return "d-" + os.urandom(6).hex()


def key_b64() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def rule(grantee: str, rule_id: str = "r1") -> cm_pb2.Rule:
    return cm_pb2.Rule(
        rule_id=rule_id,
        grantee_party_ids=[grantee],
        op_constraints=[cm_pb2.Rule.OpConstraint(op_name="psi")],
        columns=["*"],
    )


async def sealed(
    w: World, inner: Message, creds: Credentials, claims: dict[str, Any] | None
) -> cm_pb2.EncryptedRequest:
    """An owner request: ``claims=None`` is the upstream SDK's form (header ``alg`` + ``x5c``
    only), otherwise the JWS protected header also carries ``claims``."""
    channel = w.client.channel
    payload = to_json(inner, style="sdk").encode()
    if claims is None:
        jws = channel.sign(payload, creds.private_key, creds.chain)
    else:
        jws = channel.sign(payload, creds.private_key, creds.chain, claims=claims)
    plaintext = json.dumps(jws.to_dict(), separators=(",", ":")).encode()
    return await w.client.seal_request(plaintext)


def fresh() -> dict[str, Any]:
    return {"iat": int(time.time()), "jti": os.urandom(16).hex()}


#: How a captured request was built: by the upstream SDK, by our client.
STYLES = ["upstream", "ours"]


async def capture(w: World, style: str, inner: Message, creds: Credentials) -> Any:
    if style == "ours":
        return await w.client.envelope(inner, creds)
    return await sealed(w, inner, creds, None)


async def send(w: World, method: str, request: cm_pb2.EncryptedRequest) -> Any:
    return (await w.client._call(method, request)).status


def policy_request(owner: Credentials, uuid: str, grantee: str) -> cm_pb2.CreateDataPolicyRequest:
    return cm_pb2.CreateDataPolicyRequest(
        owner_party_id=owner.party_id,
        scope=SCOPE,
        policy=cm_pb2.Policy(data_uuid=uuid, rules=[rule(grantee)]),
    )


def add_rule_request(owner: Credentials, uuid: str, rule_id: str) -> cm_pb2.AddDataRuleRequest:
    return cm_pb2.AddDataRuleRequest(
        owner_party_id=owner.party_id,
        scope=SCOPE,
        data_uuid=uuid,
        rule=rule(owner.party_id, rule_id),
    )


async def grantees(w: World, uuid: str) -> list[list[str]]:
    policies = await w.client.list_data_policies(w.alice, SCOPE)
    return [list(r.grantee_party_ids) for p in policies if p.data_uuid == uuid for r in p.rules]


def stored_keys(w: World, uri: str) -> dict[str, str]:
    assert w.cm.store is not None
    return w.cm.store.get_keys([uri])


async def new_data(w: World) -> str:
    uuid = uid()
    await w.client.create_data_keys(w.alice, [(uuid, key_b64())])
    return uuid


# ---- the attacks ----------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
async def test_replayed_create_policy_does_not_roll_back(w: World, style: str) -> None:
    uuid = await new_data(w)
    captured = await capture(w, style, policy_request(w.alice, uuid, w.carol.party_id), w.alice)
    assert (await send(w, "CreateDataPolicy", captured)).code == 0
    # the owner revokes carol's grant
    await w.client.create_data_policy(w.alice, SCOPE, uuid, [rule(w.alice.party_id)])
    assert await grantees(w, uuid) == [[w.alice.party_id]]
    status = await send(w, "CreateDataPolicy", captured)
    assert status.code == 0  # answered as the retry of an applied request ...
    assert await grantees(w, uuid) == [[w.alice.party_id]]  # ... without a second effect


@pytest.mark.parametrize("style", STYLES)
async def test_replayed_delete_key_does_not_delete_recreated_key(w: World, style: str) -> None:
    uuid = await new_data(w)
    request = cm_pb2.DeleteDataKeyRequest(owner_party_id=w.alice.party_id, resource_uri=uuid)
    captured = await capture(w, style, request, w.alice)
    assert (await send(w, "DeleteDataKey", captured)).code == 0
    assert stored_keys(w, uuid) == {}
    recreated = key_b64()
    await w.client.create_data_keys(w.alice, [(uuid, recreated)])
    assert (await send(w, "DeleteDataKey", captured)).code == 0
    assert stored_keys(w, uuid) == {uuid: recreated}


@pytest.mark.parametrize("style", STYLES)
async def test_identical_retries_apply_once(w: World, style: str) -> None:
    uuid = await new_data(w)
    await w.client.create_data_policy(w.alice, SCOPE, uuid, [rule(w.alice.party_id, "r0")])
    captured = await capture(w, style, add_rule_request(w.alice, uuid, "r1"), w.alice)
    statuses = await asyncio.gather(*(send(w, "AddDataRule", captured) for _ in range(4)))
    assert [s.code for s in statuses] == [0, 0, 0, 0]
    assert (await send(w, "AddDataRule", captured)).code == 0
    assert len(await grantees(w, uuid)) == 2  # r0 and ONE r1


async def test_reencoded_envelope_is_recognised(w: World) -> None:
    """Same iv/tag/ciphertext, other JSON spacing in the (unauthenticated) JWE header, other
    protobuf encoding (an unknown field appended): still the same request."""
    uuid = await new_data(w)
    await w.client.create_data_policy(w.alice, SCOPE, uuid, [rule(w.alice.party_id, "r0")])
    captured = await capture(w, "upstream", add_rule_request(w.alice, uuid, "r1"), w.alice)
    assert (await send(w, "AddDataRule", captured)).code == 0
    header = json.loads(base64.urlsafe_b64decode(captured.message.protected_header + "=="))
    spaced = json.dumps(header, indent=2).encode()
    variant = cm_pb2.EncryptedRequest()
    variant.CopyFrom(captured)
    variant.message.protected_header = base64.urlsafe_b64encode(spaced).decode().rstrip("=")
    raw = variant.SerializeToString() + b"\xf8\x3e\x01"  # field 999, varint 1 (unknown)
    reencoded = cm_pb2.EncryptedRequest.FromString(raw)
    assert reencoded.SerializeToString() != captured.SerializeToString()
    assert (await send(w, "AddDataRule", reencoded)).code == 0
    assert len(await grantees(w, uuid)) == 2


async def test_refused_request_is_not_recorded(w: World) -> None:
    """A refused request (carol may not set alice's policy) stays refused when re-sent."""
    uuid = await new_data(w)
    captured = await capture(
        w, "upstream", policy_request(w.carol, uuid, w.carol.party_id), w.carol
    )
    first = await send(w, "CreateDataPolicy", captured)
    again = await send(w, "CreateDataPolicy", captured)
    assert first.code == again.code == 13 and "party_id" in again.message


# ---- freshness claims ---------------------------------------------------------------------


async def test_claims_sent_by_our_client_are_accepted(w: World) -> None:
    uuid = await new_data(w)
    request = add_rule_request(w.alice, uuid, "r1")
    assert (await send(w, "AddDataRule", await sealed(w, request, w.alice, fresh()))).code == 0
    envelope = await w.client.envelope(request, w.alice)
    m = envelope.message
    jwe = Jwe(m.protected_header, m.encrypted_key, m.iv, m.ciphertext, m.tag, m.aad)
    plaintext = w.client.channel.open(jwe, w.cm.identity.private_key).plaintext
    header = json.loads(base64.urlsafe_b64decode(json.loads(plaintext)["protected"] + "=="))
    assert list(header) == ["alg", "x5c", "iat", "jti"]
    assert abs(header["iat"] - time.time()) < 60 and len(header["jti"]) >= 22


@pytest.mark.parametrize(
    ("claims", "named"),
    [
        ({"iat": -3600}, "iat"),  # relative to now: stale
        ({"iat": 3600}, "iat"),  # in the future
        ({"iat": "yesterday"}, "iat"),
        ({"iat": 0, "jti": ""}, "jti"),
        ({"jti": "no-iat"}, "jti"),
    ],
    ids=["stale-iat", "future-iat", "non-numeric-iat", "empty-jti", "jti-without-iat"],
)
async def test_bad_claims_refused(w: World, claims: dict[str, Any], named: str) -> None:
    uuid = await new_data(w)
    if isinstance(claims.get("iat"), int):
        claims = claims | {"iat": int(time.time()) + claims["iat"]}
    request = await sealed(w, policy_request(w.alice, uuid, w.carol.party_id), w.alice, claims)
    status = await send(w, "CreateDataPolicy", request)
    assert status.code == 3, status
    assert f"JWS header {named}" in status.message
    assert await grantees(w, uuid) == []


async def test_repeated_jti_refused(w: World) -> None:
    uuid = await new_data(w)
    claims = fresh()
    first = await sealed(w, policy_request(w.alice, uuid, w.alice.party_id), w.alice, claims)
    assert (await send(w, "CreateDataPolicy", first)).code == 0
    # the owner's own JWS, sealed again (a new envelope: new digest), or another request
    # signed with the same jti: refused
    second = await sealed(w, policy_request(w.alice, uuid, w.carol.party_id), w.alice, claims)
    status = await send(w, "CreateDataPolicy", second)
    assert status.code == 3 and "JWS header jti" in status.message, status
    assert await grantees(w, uuid) == [[w.alice.party_id]]
    # the identical envelope is a retry: the original answer, no second effect
    assert (await send(w, "CreateDataPolicy", first)).code == 0


async def test_requests_without_claims_keep_working(w: World) -> None:
    uuid = await new_data(w)
    for grantee in (w.carol.party_id, w.alice.party_id):
        request = await sealed(w, policy_request(w.alice, uuid, grantee), w.alice, None)
        assert (await send(w, "CreateDataPolicy", request)).code == 0
    assert await grantees(w, uuid) == [[w.alice.party_id]]


async def test_cm_starts_on_a_schema_1_database(sim_env: None, tmp_path: Path) -> None:
    """A data directory written by the schema-1 CM: the CM migrates it at start, serves its
    keys, and replays against it are recognised."""
    data_dir = tmp_path / "cm"
    data_dir.mkdir(mode=0o700)
    shutil.copy(V1_DATABASE, data_dir / "cm.db")
    (data_dir / "storage.key").write_bytes(base64.b64encode(bytes(range(32))) + b"\n")
    pm = get_plugin_manager()
    cm = CapsuleManager(CMSettings(port=0, plat="sim", data_dir=data_dir), pm=pm)
    port = await cm.start()
    client = CapsuleManagerClient(f"127.0.0.1:{port}", pm=pm)
    store = cm.store
    assert store is not None
    try:
        assert store.get_keys(["d-v1"]) == {"d-v1": "a2V5MQ=="}
        alice, carol = (ephemeral_credentials(n, key_size=2048) for n in ("alice", "carol"))
        w = World(cm, client, alice, carol)
        uuid = await new_data(w)
        request = cm_pb2.DeleteDataKeyRequest(owner_party_id=w.alice.party_id, resource_uri=uuid)
        captured = await capture(w, "upstream", request, w.alice)
        assert (await send(w, "DeleteDataKey", captured)).code == 0
        recreated = key_b64()
        await w.client.create_data_keys(w.alice, [(uuid, recreated)])
        assert (await send(w, "DeleteDataKey", captured)).code == 0
        assert store.get_keys([uuid]) == {uuid: recreated}
    finally:
        await client.aclose()
        await cm.stop()
