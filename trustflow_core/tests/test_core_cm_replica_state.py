"""Two Capsule Manager replicas (``trustflow capsule-manager`` processes) sharing one identity
(key pair and storage key files) and one fresh PostgreSQL database (issue 16, "shared state
only in the database").

Each test writes through replica A after replica B has served the same data (so anything B
might have cached is warm), then asks B: B must decide on what A wrote. These fail if a replica
served an authorization decision, a replay digest or a registration from a process-local cache
(docs/replica-state.md lists what the CM caches and why each is safe).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf.message import Message

from trustflow_core.attestation import ra_user_data
from trustflow_core.harness.cm_world import data_key_b64, grant_rule, new_data_uuid, new_party
from trustflow_core.harness.replicas import shared_identity, unreachable
from trustflow_core.manager import get_plugin_manager
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.registry import ATTESTER, backend_class
from trustflow_core.roles.capsule_manager_client.client import (
    CapsuleManagerClient,
    CapsuleManagerError,
    Credentials,
)
from trustflow_core.roles.capsule_manager_protocol.freshness import new_claims
from trustflow_core.roles.capsule_manager_protocol.reports import report_to_pb
from trustflow_core.testing.databases import throwaway_database
from trustflow_core.testing.processes import RoleProcess
from trustflow_core.wire import serialize_canonical, to_json

pytestmark = pytest.mark.asyncio(loop_scope="module")
SCOPE = "default"


@pytest.fixture(scope="module")
def replica_targets(
    sim_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """``(A, B)``: two sim CM processes on one fresh PostgreSQL database, one identity."""
    reason = unreachable("postgresql")
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("replicas")
    shared = shared_identity(root)
    with throwaway_database("postgresql") as url:
        procs = [
            RoleProcess(
                sim_env,
                root / f"{name}.stderr",
                "capsule-manager",
                *("--plat", "sim", "--port", "0", "--data-dir", str(root / name)),
                *("--storage-url", url, *shared),
            )
            for name in ("a", "b")
        ]
        try:
            a, b = (p.wait_listening() for p in procs)
            yield a.target, b.target
        finally:
            for p in procs:
                p.stop()


class Replicas:
    """Clients of replicas A and B, an owner, an app and the sim attester."""

    def __init__(self, a: CapsuleManagerClient, b: CapsuleManagerClient) -> None:
        self.a, self.b = a, b
        self.owner, self.app, self.other = new_party("owner"), new_party("app"), new_party("x")
        self.attester = backend_class(get_plugin_manager(), ATTESTER, "sim").from_settings()

    async def get_keys(self, client: CapsuleManagerClient, uuid: str) -> list[str]:
        """The app's GetDataKeys of ``uuid`` through ``client``, SIM-attested."""
        rr = cm_pb2.ResourceRequest(
            initiator_party_id=self.app.party_id, scope=SCOPE, op_name="psi"
        )
        rr.resources.add(resource_uri=uuid)
        digest = ra_user_data(self.app.chain_pems[0].encode(), serialize_canonical(rr))
        report = report_to_pb(await self.attester.generate(digest))
        return [k.data_key_b64 for k in await client.get_data_keys(self.app, rr, report)]

    async def granted(self, uuid: str | None = None) -> tuple[str, str]:
        """Owner data with a key and a policy granting the app, written through A."""
        uuid = uuid or new_data_uuid()
        key = data_key_b64()
        await self.a.create_data_keys(self.owner, [(uuid, key)])
        await self.a.create_data_policy(self.owner, SCOPE, uuid, [grant_rule(self.app.party_id)])
        return uuid, key

    async def grantees(self, client: CapsuleManagerClient, uuid: str) -> list[list[str]]:
        policies = await client.list_data_policies(self.owner, SCOPE)
        return [list(r.grantee_party_ids) for p in policies if p.data_uuid == uuid for r in p.rules]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rep(replica_targets: tuple[str, str]) -> AsyncIterator[Replicas]:
    pm = get_plugin_manager()
    a = CapsuleManagerClient(replica_targets[0], pm=pm)
    b = CapsuleManagerClient(replica_targets[1], pm=pm)
    try:
        yield Replicas(a, b)
    finally:
        await a.aclose()
        await b.aclose()


async def refused(coro: Any, match: str) -> None:
    """``coro`` is refused in band with a message containing ``match``."""
    with pytest.raises(CapsuleManagerError) as err:
        await coro
    assert match in err.value.message, err.value.message


async def test_one_identity(rep: Replicas) -> None:
    assert await rep.a.cm_cert_pem() == await rep.b.cm_cert_pem()


async def test_grant_through_a_is_read_through_b(rep: Replicas) -> None:
    uuid = new_data_uuid()
    await rep.a.create_data_keys(rep.owner, [(uuid, data_key_b64())])
    # B refuses while there is no policy (a refusal B might remember) ...
    await refused(rep.get_keys(rep.b, uuid), "data policy is empty")
    await rep.a.create_data_policy(rep.owner, SCOPE, uuid, [grant_rule(rep.app.party_id)])
    # ... and releases as soon as A granted
    assert len(await rep.get_keys(rep.b, uuid)) == 1


REVOCATIONS = ["delete_rule", "delete_policy", "delete_key", "replace_policy", "overwrite_key"]


@pytest.mark.parametrize("revocation", REVOCATIONS)
async def test_revocation_through_a_is_enforced_by_b(rep: Replicas, revocation: str) -> None:
    uuid, key = await rep.granted()
    assert await rep.get_keys(rep.b, uuid) == [key]  # B served it: any cache of B is warm
    assert await rep.get_keys(rep.b, uuid) == [key]
    if revocation == "delete_rule":
        await rep.a.delete_data_rule(rep.owner, SCOPE, uuid, "r1")
        await refused(rep.get_keys(rep.b, uuid), "not satisfied with the policy")
    elif revocation == "delete_policy":
        await rep.a.delete_data_policy(rep.owner, SCOPE, uuid)
        await refused(rep.get_keys(rep.b, uuid), "data policy is empty")
    elif revocation == "delete_key":
        await rep.a.delete_data_key(rep.owner, uuid)
        await refused(rep.get_keys(rep.b, uuid), "data_keys not found")
    elif revocation == "replace_policy":
        await rep.a.create_data_policy(rep.owner, SCOPE, uuid, [grant_rule(rep.other.party_id)])
        await refused(rep.get_keys(rep.b, uuid), "not satisfied with the policy")
    else:  # the owner rotates the key: B hands out the new one only
        rotated = data_key_b64()
        await rep.a.create_data_keys(rep.owner, [(uuid, rotated)])
        assert await rep.get_keys(rep.b, uuid) == [rotated]


async def sealed(
    client: CapsuleManagerClient, inner: Message, creds: Credentials, claims: dict[str, Any]
) -> cm_pb2.EncryptedRequest:
    """An owner request whose JWS protected header carries ``claims`` (``iat``/``jti``)."""
    payload = to_json(inner, style="sdk").encode()
    jws = client.channel.sign(payload, creds.private_key, creds.chain, claims=claims)
    plaintext = json.dumps(jws.to_dict(), separators=(",", ":")).encode()
    return await client.seal_request(plaintext)


async def send(client: CapsuleManagerClient, method: str, request: Any) -> Any:
    return (await client._call(method, request)).status


async def test_request_applied_by_a_is_a_replay_at_b(rep: Replicas) -> None:
    """The owner grants ``other`` through A, then revokes that grant; a network attacker
    re-sends the captured grant to B: answered as a retry, not applied again."""
    uuid, _ = await rep.granted()
    grant = cm_pb2.CreateDataPolicyRequest(
        owner_party_id=rep.owner.party_id,
        scope=SCOPE,
        policy=cm_pb2.Policy(data_uuid=uuid, rules=[grant_rule(rep.other.party_id)]),
    )
    claims = new_claims()
    captured = await sealed(rep.a, grant, rep.owner, claims)
    assert (await send(rep.a, "CreateDataPolicy", captured)).code == 0
    await rep.a.create_data_policy(rep.owner, SCOPE, uuid, [grant_rule(rep.app.party_id)])
    assert (await send(rep.b, "CreateDataPolicy", captured)).code == 0  # the retry's answer
    assert await rep.grantees(rep.b, uuid) == [[rep.app.party_id]]  # the grant stays revoked
    # re-encoded (other JSON spacing in the unauthenticated JWE header, an unknown protobuf
    # field): the same iv/tag/ciphertext, the same request
    header = json.loads(base64.urlsafe_b64decode(captured.message.protected_header + "=="))
    variant = cm_pb2.EncryptedRequest()
    variant.CopyFrom(captured)
    spaced = json.dumps(header, indent=2).encode()
    variant.message.protected_header = base64.urlsafe_b64encode(spaced).decode().rstrip("=")
    reencoded = cm_pb2.EncryptedRequest.FromString(variant.SerializeToString() + b"\xf8\x3e\x01")
    assert (await send(rep.b, "CreateDataPolicy", reencoded)).code == 0
    assert await rep.grantees(rep.b, uuid) == [[rep.app.party_id]]
    # the owner's JWS sealed in a new envelope (its jti already used through A): refused by B
    resealed = await sealed(rep.b, grant, rep.owner, claims)
    status = await send(rep.b, "CreateDataPolicy", resealed)
    assert status.code == 3 and "JWS header jti" in status.message, status
    assert await rep.grantees(rep.a, uuid) == [[rep.app.party_id]]


async def test_replayed_delete_key_at_b_keeps_the_recreated_key(rep: Replicas) -> None:
    """A captured DeleteDataKey (upstream form: no claims) applied by A, the key recreated,
    the capture re-sent to B: the recreated key stays."""
    uuid, _ = await rep.granted()
    request = cm_pb2.DeleteDataKeyRequest(owner_party_id=rep.owner.party_id, resource_uri=uuid)
    payload = to_json(request, style="sdk").encode()
    jws = rep.a.channel.sign(payload, rep.owner.private_key, rep.owner.chain)
    captured = await rep.a.seal_request(json.dumps(jws.to_dict()).encode())
    assert (await send(rep.a, "DeleteDataKey", captured)).code == 0
    recreated = data_key_b64()
    await rep.a.create_data_keys(rep.owner, [(uuid, recreated)])
    assert (await send(rep.b, "DeleteDataKey", captured)).code == 0
    assert await rep.get_keys(rep.b, uuid) == [recreated]


async def result_report(rep: Replicas, body: cm_pb2.CreateResultDataKeyRequest.Body) -> Any:
    digest = hashlib.sha256(serialize_canonical(body)).digest()
    return report_to_pb(await rep.attester.generate(digest))


async def test_result_registered_through_a_is_not_registered_again_through_b(
    rep: Replicas,
) -> None:
    ancestor, _ = await rep.granted()
    result, result_key = new_data_uuid(), data_key_b64()
    body = cm_pb2.CreateResultDataKeyRequest.Body(
        owner_id=rep.owner.party_id,
        resource_uri=result,
        scope=SCOPE,
        data_key_b64=result_key,
        ancestor_uuids=[ancestor],
    )
    await rep.a.create_result_data_key(rep.app, body, await result_report(rep, body))
    changed = cm_pb2.CreateResultDataKeyRequest.Body()
    changed.CopyFrom(body)
    changed.data_key_b64 = data_key_b64()
    await refused(
        rep.b.create_result_data_key(rep.app, changed, await result_report(rep, changed)),
        "already registered",
    )
    # the identical registration through B is the retry of A's: accepted, nothing changes
    await rep.b.create_result_data_key(rep.app, body, await result_report(rep, body))
    assert await rep.get_keys(rep.b, result) == [result_key]
    assert await rep.get_keys(rep.a, result) == [result_key]


async def test_concurrent_first_writers_through_both_replicas_one_owner(rep: Replicas) -> None:
    """Two owners store a key for the same new data_uuid at once, one through each replica:
    exactly one of them owns it."""
    import asyncio

    uuid = new_data_uuid()
    rival = new_party("rival")
    results = await asyncio.gather(
        rep.a.create_data_keys(rep.owner, [(uuid, data_key_b64())]),
        rep.b.create_data_keys(rival, [(uuid, data_key_b64())]),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1, results
    assert isinstance(failures[0], CapsuleManagerError) and "is wrong" in failures[0].message
