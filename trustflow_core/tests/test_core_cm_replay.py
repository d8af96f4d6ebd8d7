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
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message

from trustflow_core.channel import Jwe
from trustflow_core.harness.cm_world import (
    CMWorld,
    data_key_b64,
    grant_rule,
    new_data_uuid,
    running_cm,
)
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.roles.capsule_manager.settings import CMSettings
from trustflow_core.roles.capsule_manager_client.client import Credentials
from trustflow_core.wire import to_json

pytestmark = pytest.mark.asyncio(loop_scope="module")
SCOPE = "default"
#: A database written by the schema-1 CM (storage key bytes 0..31).
V1_DATABASE = Path(__file__).parent / "data" / "cm_schema_v1.db"


async def sealed(
    cm_world: CMWorld, inner: Message, creds: Credentials, claims: dict[str, Any] | None
) -> cm_pb2.EncryptedRequest:
    """An owner request: ``claims=None`` is the upstream SDK's form (header ``alg`` + ``x5c``
    only), otherwise the JWS protected header also carries ``claims``."""
    channel = cm_world.client.channel
    payload = to_json(inner, style="sdk").encode()
    if claims is None:
        jws = channel.sign(payload, creds.private_key, creds.chain)
    else:
        jws = channel.sign(payload, creds.private_key, creds.chain, claims=claims)
    plaintext = json.dumps(jws.to_dict(), separators=(",", ":")).encode()
    return await cm_world.client.seal_request(plaintext)


def fresh() -> dict[str, Any]:
    return {"iat": int(time.time()), "jti": os.urandom(16).hex()}


#: How a captured request was built: by the upstream SDK, by our client.
STYLES = ["upstream", "ours"]


async def capture(cm_world: CMWorld, style: str, inner: Message, creds: Credentials) -> Any:
    if style == "ours":
        return await cm_world.client.envelope(inner, creds)
    return await sealed(cm_world, inner, creds, None)


async def send(cm_world: CMWorld, method: str, request: cm_pb2.EncryptedRequest) -> Any:
    return (await cm_world.client._call(method, request)).status


def policy_request(owner: Credentials, uuid: str, grantee: str) -> cm_pb2.CreateDataPolicyRequest:
    return cm_pb2.CreateDataPolicyRequest(
        owner_party_id=owner.party_id,
        scope=SCOPE,
        policy=cm_pb2.Policy(data_uuid=uuid, rules=[grant_rule(grantee)]),
    )


def add_rule_request(owner: Credentials, uuid: str, rule_id: str) -> cm_pb2.AddDataRuleRequest:
    return cm_pb2.AddDataRuleRequest(
        owner_party_id=owner.party_id,
        scope=SCOPE,
        data_uuid=uuid,
        rule=grant_rule(owner.party_id, rule_id),
    )


async def grantees(cm_world: CMWorld, uuid: str) -> list[list[str]]:
    policies = await cm_world.client.list_data_policies(cm_world.alice, SCOPE)
    return [list(r.grantee_party_ids) for p in policies if p.data_uuid == uuid for r in p.rules]


def stored_keys(cm_world: CMWorld, uri: str) -> dict[str, str]:
    assert cm_world.cm.store is not None
    return cm_world.cm.store.get_keys([uri])


async def new_data(cm_world: CMWorld) -> str:
    uuid = new_data_uuid()
    await cm_world.client.create_data_keys(cm_world.alice, [(uuid, data_key_b64())])
    return uuid


# ---- the attacks ----------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
async def test_replayed_create_policy_does_not_roll_back(cm_world: CMWorld, style: str) -> None:
    uuid = await new_data(cm_world)
    captured = await capture(
        cm_world,
        style,
        policy_request(cm_world.alice, uuid, cm_world.carol.party_id),
        cm_world.alice,
    )
    assert (await send(cm_world, "CreateDataPolicy", captured)).code == 0
    # the owner revokes carol's grant
    await cm_world.client.create_data_policy(
        cm_world.alice, SCOPE, uuid, [grant_rule(cm_world.alice.party_id)]
    )
    assert await grantees(cm_world, uuid) == [[cm_world.alice.party_id]]
    status = await send(cm_world, "CreateDataPolicy", captured)
    assert status.code == 0  # answered as the retry of an applied request ...
    assert await grantees(cm_world, uuid) == [
        [cm_world.alice.party_id]
    ]  # ... without a second effect


@pytest.mark.parametrize("style", STYLES)
async def test_replayed_delete_key_does_not_delete_recreated_key(
    cm_world: CMWorld, style: str
) -> None:
    uuid = await new_data(cm_world)
    request = cm_pb2.DeleteDataKeyRequest(owner_party_id=cm_world.alice.party_id, resource_uri=uuid)
    captured = await capture(cm_world, style, request, cm_world.alice)
    assert (await send(cm_world, "DeleteDataKey", captured)).code == 0
    assert stored_keys(cm_world, uuid) == {}
    recreated = data_key_b64()
    await cm_world.client.create_data_keys(cm_world.alice, [(uuid, recreated)])
    assert (await send(cm_world, "DeleteDataKey", captured)).code == 0
    assert stored_keys(cm_world, uuid) == {uuid: recreated}


@pytest.mark.parametrize("style", STYLES)
async def test_identical_retries_apply_once(cm_world: CMWorld, style: str) -> None:
    uuid = await new_data(cm_world)
    await cm_world.client.create_data_policy(
        cm_world.alice, SCOPE, uuid, [grant_rule(cm_world.alice.party_id, "r0")]
    )
    captured = await capture(
        cm_world, style, add_rule_request(cm_world.alice, uuid, "r1"), cm_world.alice
    )
    statuses = await asyncio.gather(*(send(cm_world, "AddDataRule", captured) for _ in range(4)))
    assert [s.code for s in statuses] == [0, 0, 0, 0]
    assert (await send(cm_world, "AddDataRule", captured)).code == 0
    assert len(await grantees(cm_world, uuid)) == 2  # r0 and ONE r1


async def test_reencoded_envelope_is_recognised(cm_world: CMWorld) -> None:
    """Same iv/tag/ciphertext, other JSON spacing in the (unauthenticated) JWE header, other
    protobuf encoding (an unknown field appended): still the same request."""
    uuid = await new_data(cm_world)
    await cm_world.client.create_data_policy(
        cm_world.alice, SCOPE, uuid, [grant_rule(cm_world.alice.party_id, "r0")]
    )
    captured = await capture(
        cm_world, "upstream", add_rule_request(cm_world.alice, uuid, "r1"), cm_world.alice
    )
    assert (await send(cm_world, "AddDataRule", captured)).code == 0
    header = json.loads(base64.urlsafe_b64decode(captured.message.protected_header + "=="))
    spaced = json.dumps(header, indent=2).encode()
    variant = cm_pb2.EncryptedRequest()
    variant.CopyFrom(captured)
    variant.message.protected_header = base64.urlsafe_b64encode(spaced).decode().rstrip("=")
    raw = variant.SerializeToString() + b"\xf8\x3e\x01"  # field 999, varint 1 (unknown)
    reencoded = cm_pb2.EncryptedRequest.FromString(raw)
    assert reencoded.SerializeToString() != captured.SerializeToString()
    assert (await send(cm_world, "AddDataRule", reencoded)).code == 0
    assert len(await grantees(cm_world, uuid)) == 2


async def test_refused_request_is_not_recorded(cm_world: CMWorld) -> None:
    """A refused request (carol may not set alice's policy) stays refused when re-sent."""
    uuid = await new_data(cm_world)
    captured = await capture(
        cm_world,
        "upstream",
        policy_request(cm_world.carol, uuid, cm_world.carol.party_id),
        cm_world.carol,
    )
    first = await send(cm_world, "CreateDataPolicy", captured)
    again = await send(cm_world, "CreateDataPolicy", captured)
    assert first.code == again.code == 13 and "party_id" in again.message


# ---- freshness claims ---------------------------------------------------------------------


async def test_claims_sent_by_our_client_are_accepted(cm_world: CMWorld) -> None:
    uuid = await new_data(cm_world)
    request = add_rule_request(cm_world.alice, uuid, "r1")
    assert (
        await send(
            cm_world, "AddDataRule", await sealed(cm_world, request, cm_world.alice, fresh())
        )
    ).code == 0
    envelope = await cm_world.client.envelope(request, cm_world.alice)
    m = envelope.message
    jwe = Jwe(m.protected_header, m.encrypted_key, m.iv, m.ciphertext, m.tag, m.aad)
    plaintext = cm_world.client.channel.open(jwe, cm_world.cm.identity.private_key).plaintext
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
async def test_bad_claims_refused(cm_world: CMWorld, claims: dict[str, Any], named: str) -> None:
    uuid = await new_data(cm_world)
    if isinstance(claims.get("iat"), int):
        claims = claims | {"iat": int(time.time()) + claims["iat"]}
    request = await sealed(
        cm_world,
        policy_request(cm_world.alice, uuid, cm_world.carol.party_id),
        cm_world.alice,
        claims,
    )
    status = await send(cm_world, "CreateDataPolicy", request)
    assert status.code == 3, status
    assert f"JWS header {named}" in status.message
    assert await grantees(cm_world, uuid) == []


async def test_repeated_jti_refused(cm_world: CMWorld) -> None:
    uuid = await new_data(cm_world)
    claims = fresh()
    first = await sealed(
        cm_world,
        policy_request(cm_world.alice, uuid, cm_world.alice.party_id),
        cm_world.alice,
        claims,
    )
    assert (await send(cm_world, "CreateDataPolicy", first)).code == 0
    # the owner's own JWS, sealed again (a new envelope: new digest), or another request
    # signed with the same jti: refused
    second = await sealed(
        cm_world,
        policy_request(cm_world.alice, uuid, cm_world.carol.party_id),
        cm_world.alice,
        claims,
    )
    status = await send(cm_world, "CreateDataPolicy", second)
    assert status.code == 3 and "JWS header jti" in status.message, status
    assert await grantees(cm_world, uuid) == [[cm_world.alice.party_id]]
    # the identical envelope is a retry: the original answer, no second effect
    assert (await send(cm_world, "CreateDataPolicy", first)).code == 0


async def test_requests_without_claims_keep_working(cm_world: CMWorld) -> None:
    uuid = await new_data(cm_world)
    for grantee in (cm_world.carol.party_id, cm_world.alice.party_id):
        request = await sealed(
            cm_world, policy_request(cm_world.alice, uuid, grantee), cm_world.alice, None
        )
        assert (await send(cm_world, "CreateDataPolicy", request)).code == 0
    assert await grantees(cm_world, uuid) == [[cm_world.alice.party_id]]


async def test_cm_starts_on_a_schema_1_database(sim_env: None, tmp_path: Path) -> None:
    """A data directory written by the schema-1 CM: the CM migrates it at start, serves its
    keys, and replays against it are recognised."""
    data_dir = tmp_path / "cm"
    data_dir.mkdir(mode=0o700)
    shutil.copy(V1_DATABASE, data_dir / "cm.db")
    (data_dir / "storage.key").write_bytes(base64.b64encode(bytes(range(32))) + b"\n")
    async with running_cm(CMSettings(port=0, plat="sim", data_dir=data_dir)) as cm_world:
        store = cm_world.cm.store
        assert store is not None
        assert store.get_keys(["d-v1"]) == {"d-v1": "a2V5MQ=="}
        uuid = await new_data(cm_world)
        request = cm_pb2.DeleteDataKeyRequest(
            owner_party_id=cm_world.alice.party_id, resource_uri=uuid
        )
        captured = await capture(cm_world, "upstream", request, cm_world.alice)
        assert (await send(cm_world, "DeleteDataKey", captured)).code == 0
        recreated = data_key_b64()
        await cm_world.client.create_data_keys(cm_world.alice, [(uuid, recreated)])
        assert (await send(cm_world, "DeleteDataKey", captured)).code == 0
        assert store.get_keys([uuid]) == {uuid: recreated}
