"""The Capsule Manager's RPCs over real gRPC on 127.0.0.1, against SQLite, PostgreSQL and
MariaDB: every RPC's success and refusal paths, owner isolation, app attestation (SIM reports
from the tee_sim plugin) and policy enforcement."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from cryptography.x509.oid import NameOID
from trustflow_tee_sim.report import DEFAULT_MEASUREMENTS

from trustflow_core.attestation import ra_user_data
from trustflow_core.harness.cm_world import (
    CMWorld,
    data_key_b64,
    grant_rule,
    new_data_uuid,
    new_party,
)
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.registry import ATTESTER, VERIFIER, backend_class
from trustflow_core.roles.capsule_manager_client.client import (
    CapsuleManagerError,
    Credentials,
)
from trustflow_core.roles.capsule_manager_protocol.reports import report_to_pb
from trustflow_core.roles.capsule_manager_protocol.votes import (
    sign_vote_request,
    vote_result,
    voter_sign,
)
from trustflow_core.wire import serialize_canonical

pytestmark = pytest.mark.asyncio(loop_scope="module")
SCOPE = "default"


def sim_attester(w: CMWorld) -> Any:
    """The sim attester of this host (the CM under test runs with ``plat: sim``)."""
    return backend_class(w.pm, ATTESTER, "sim").from_settings()


def rr(
    initiator: str,
    uris: list[str],
    op: str = "psi",
    scope: str = SCOPE,
    columns: tuple[str, ...] = (),
) -> cm_pb2.ResourceRequest:
    return cm_pb2.ResourceRequest(
        initiator_party_id=initiator,
        scope=scope,
        op_name=op,
        resources=[
            cm_pb2.ResourceRequest.Resource(resource_uri=u, columns=list(columns)) for u in uris
        ],
    )


async def report_for(w: CMWorld, app: Credentials, request: cm_pb2.ResourceRequest) -> Any:
    digest = ra_user_data(app.chain_pems[0].encode(), serialize_canonical(request))
    return report_to_pb(await sim_attester(w).generate(digest))


async def owned(
    w: CMWorld, owner: Credentials, *rules: cm_pb2.Rule, n: int = 1
) -> list[tuple[str, str]]:
    keys = [(new_data_uuid(), data_key_b64()) for _ in range(n)]
    await w.client.create_data_keys(owner, keys)
    for uuid, _ in keys:
        await w.client.create_data_policy(owner, SCOPE, uuid, list(rules))
    return keys


async def refused(code: int, coro: Any, match: str = "") -> CapsuleManagerError:
    with pytest.raises(CapsuleManagerError) as err:
        await coro
    assert err.value.code == code, err.value.message
    assert match in err.value.message
    return err.value


# ---- GetRaCert ------------------------------------------------------------------------------


async def test_get_ra_cert_report_bound_to_cert_and_nonce(cm_world: CMWorld) -> None:
    cert, report = await cm_world.client.get_ra_cert("nonce-1")  # verify_sim=True checks it
    assert "BEGIN CERTIFICATE" in cert and report is not None
    assert report.str_tee_platform == "SIM"
    verifier = backend_class(cm_world.pm, VERIFIER, "sim").from_settings()
    verified = await verifier.verify(report, cm_world.client.policy)
    expected = hashlib.sha256(cert.encode() + b".nonce-1").hexdigest()
    assert verified.attributes.hex_user_data == expected


async def test_get_ra_cert_refuses_oversized_nonce(cm_world: CMWorld) -> None:
    response = await cm_world.client._call("GetRaCert", cm_pb2.GetRaCertRequest(nonce="n" * 5000))
    assert response.status.code == 3 and not response.cert
    assert not response.HasField("attestation_report")


# ---- certs ----------------------------------------------------------------------------------


async def test_register_cert(cm_world: CMWorld) -> None:
    party = new_party("fresh")
    await cm_world.client.register_cert(party)
    await refused(13, cm_world.client.register_cert(party), "has stored")
    # a chain whose owner id does not derive from it
    req = cm_pb2.RegisterCertRequest(owner_party_id=cm_world.alice.party_id, certs=party.chain_pems)
    await refused(13, cm_world.client.request("RegisterCert", req, party), "wrong derived")
    req = cm_pb2.RegisterCertRequest(owner_party_id="", certs=[])
    await refused(13, cm_world.client.request("RegisterCert", req, party), "empty")


# ---- data keys ------------------------------------------------------------------------------


async def test_create_data_keys_and_owner_isolation(cm_world: CMWorld) -> None:
    c, alice, bob = cm_world.client, cm_world.alice, cm_world.bob
    uuid = new_data_uuid()
    await c.create_data_keys(alice, [(uuid, data_key_b64()), (f"{uuid}/part1", data_key_b64())])
    await refused(13, c.create_data_keys(bob, [(uuid, data_key_b64())]), "is wrong")
    other = new_data_uuid()
    # all or nothing: bob's own new uuid is not stored either
    await refused(13, c.create_data_keys(bob, [(other, data_key_b64()), (uuid, data_key_b64())]))
    assert cm_world.cm.store is not None and cm_world.cm.store.data_info(other) is None
    await refused(3, c.create_data_keys(alice, [("", data_key_b64())]), "data uuid is empty")
    await refused(3, c.create_data_keys(alice, [(new_data_uuid(), "not base64!")]))
    await refused(13, c.delete_data_key(bob, uuid), "is wrong")
    await c.delete_data_key(alice, f"{uuid}/part1")
    assert cm_world.cm.store.get_keys([f"{uuid}/part1"]) == {}


async def test_owner_rpcs_need_matching_signature(cm_world: CMWorld) -> None:
    c, alice, bob = cm_world.client, cm_world.alice, cm_world.bob
    # bob signs a request naming alice as owner
    req = cm_pb2.CreateDataKeysRequest(
        owner_party_id=alice.party_id,
        data_keys=[cm_pb2.DataKey(resource_uri=new_data_uuid(), data_key_b64=data_key_b64())],
    )
    await refused(13, c.request("CreateDataKeys", req, bob), "wrong derived from public key")
    # unsigned requests
    envelope = await c.envelope(req, alice)
    envelope.has_signature = False
    sealed = c.channel.seal(serialize_json(req), await c.cm_public_key()).jwe
    envelope.message.protected_header = sealed.protected
    envelope.message.encrypted_key = sealed.encrypted_key
    envelope.message.iv, envelope.message.ciphertext = sealed.iv, sealed.ciphertext
    envelope.message.tag = sealed.tag
    response = await c._call("CreateDataKeys", envelope)
    assert response.status.code == 3 and "Missing signature" in response.status.message
    response = await c._call("CreateDataPolicy", envelope)
    assert response.status.code == 13 and "Missing signature" in response.status.message


def serialize_json(msg: Any) -> bytes:
    from trustflow_core.wire import to_json

    return to_json(msg, style="sdk").encode()


async def test_tampered_or_empty_envelope(cm_world: CMWorld) -> None:
    c = cm_world.client
    req = cm_pb2.ListDataPolicyRequest(owner_party_id=cm_world.alice.party_id, scope=SCOPE)
    envelope = await c.envelope(req, cm_world.alice)
    ct = bytearray(base64.urlsafe_b64decode(envelope.message.ciphertext + "=="))
    ct[3] ^= 1
    envelope.message.ciphertext = base64.urlsafe_b64encode(bytes(ct)).decode().rstrip("=")
    response = await c._call("ListDataPolicy", envelope)
    assert response.status.code == 13 and not response.HasField("message")
    response = await c._call("ListDataPolicy", cm_pb2.EncryptedRequest())
    assert response.status.code == 13 and "Request content" in response.status.message
    bad = await c.envelope(req, cm_world.alice)
    bad.message.protected_header = (
        base64.urlsafe_b64encode(b'{"alg":"dir","enc":"A128GCM"}').decode().rstrip("=")
    )
    assert (await c._call("ListDataPolicy", bad)).status.code == 2
    bad.message.protected_header = (
        base64.urlsafe_b64encode(b'{"alg":"RSA-OAEP","enc":"A192GCM"}').decode().rstrip("=")
    )
    assert (await c._call("ListDataPolicy", bad)).status.code == 12


# ---- policies -------------------------------------------------------------------------------


async def test_policy_lifecycle_and_isolation(cm_world: CMWorld) -> None:
    c, alice, bob = cm_world.client, cm_world.alice, cm_world.bob
    [(uuid, _)] = await owned(cm_world, alice, grant_rule(bob.party_id, rule_id="r1"))
    await c.add_data_rule(alice, SCOPE, uuid, grant_rule(bob.party_id, op="xgb", rule_id="r2"))
    policies = {p.data_uuid: p for p in await c.list_data_policies(alice, SCOPE)}
    assert [r.rule_id for r in policies[uuid].rules] == ["r1", "r2"]
    assert uuid not in {p.data_uuid for p in await c.list_data_policies(bob, SCOPE)}
    assert uuid not in {p.data_uuid for p in await c.list_data_policies(alice, "other-scope")}
    for attempt in (
        c.create_data_policy(bob, SCOPE, uuid, [grant_rule(bob.party_id)]),
        c.add_data_rule(bob, SCOPE, uuid, grant_rule(bob.party_id)),
        c.delete_data_rule(bob, SCOPE, uuid, "r1"),
        c.delete_data_policy(bob, SCOPE, uuid),
    ):
        await refused(13, attempt, "is wrong")
    await c.delete_data_rule(alice, SCOPE, uuid, "r2")
    policies = {p.data_uuid: p for p in await c.list_data_policies(alice, SCOPE)}
    assert [r.rule_id for r in policies[uuid].rules] == ["r1"]
    await c.delete_data_policy(alice, SCOPE, uuid)
    await c.delete_data_policy(alice, SCOPE, uuid)  # absent: success
    assert uuid not in {p.data_uuid for p in await c.list_data_policies(alice, SCOPE)}
    req = cm_pb2.CreateDataPolicyRequest(owner_party_id=alice.party_id, scope=SCOPE)
    await refused(13, c.request("CreateDataPolicy", req, alice), "policy is empty")
    req2 = cm_pb2.AddDataRuleRequest(owner_party_id=alice.party_id, scope=SCOPE, data_uuid=uuid)
    await refused(13, c.request("AddDataRule", req2, alice), "policy is empty")


# ---- GetDataKeys ----------------------------------------------------------------------------


async def test_get_data_keys_grant_and_refusals(cm_world: CMWorld) -> None:
    c, alice, bob, app = cm_world.client, cm_world.alice, cm_world.bob, cm_world.app
    pinned = 'r.env.tee.platform == "sim"'
    keys = await owned(
        cm_world,
        alice,
        grant_rule(bob.party_id, columns=("id", "age"), global_constraints=[pinned]),
        n=2,
    )
    uris = [u for u, _ in keys]
    ok = rr(bob.party_id, uris, columns=("id",))
    got = await c.get_data_keys(app, ok, await report_for(cm_world, app, ok))
    assert [(k.resource_uri, k.data_key_b64) for k in got] == keys

    async def denied(code: int, request: cm_pb2.ResourceRequest, match: str = "") -> None:
        await refused(
            code, c.get_data_keys(app, request, await report_for(cm_world, app, request)), match
        )

    await denied(7, rr(cm_world.carol.party_id, uris), "not satisfied")  # wrong party
    await denied(7, rr(bob.party_id, uris, op="xgb"))  # wrong op
    await denied(13, rr(bob.party_id, uris, scope="other"), "data policy is empty")  # scope
    await denied(7, rr(bob.party_id, uris, columns=("salary",)))  # columns
    await denied(13, rr(bob.party_id, [new_data_uuid()]), "party id is not existed")  # unknown
    await denied(13, rr(bob.party_id, [*uris, f"{uris[0]}/nokey"]), "data_keys not found")
    # no report: refused unless upstream sim is allowed
    await refused(7, c.get_data_keys(app, ok, None), "attestation report verify failed")
    # a report made for another cert (replayed by a different app) does not bind
    other_app = new_party("other-app")
    replay = await report_for(cm_world, other_app, ok)
    await refused(7, c.get_data_keys(app, ok, replay), "hex_user_data")
    # a report for another request
    await refused(
        7, c.get_data_keys(app, ok, await report_for(cm_world, app, rr(bob.party_id, uris[:1])))
    )
    # tampered report
    tampered = await report_for(cm_world, app, ok)
    tampered.json_report = tampered.json_report.replace('"hex_user_data', '"hex_user_dato')
    await refused(7, c.get_data_keys(app, ok, tampered))
    # unknown platform
    alien = await report_for(cm_world, app, ok)
    alien.str_tee_platform = "NOPE"
    await refused(3, c.get_data_keys(app, ok, alien), "parse report attributes failed")


async def test_measurement_and_platform_constraints(cm_world: CMWorld) -> None:
    c, alice, bob, app = cm_world.client, cm_world.alice, cm_world.bob, cm_world.app
    good = await report_for(cm_world, app, rr(bob.party_id, ["x"]))
    import json

    body = json.loads(json.loads(good.json_report)["json_body"])
    mr_ta = body["hex_ta_measurement"]
    keys = await owned(
        cm_world, alice, grant_rule(bob.party_id, constraints=[f'r.env.tee.sim.mr_ta == "{mr_ta}"'])
    )
    request = rr(bob.party_id, [keys[0][0]])
    assert await c.get_data_keys(app, request, await report_for(cm_world, app, request))
    wrong = await owned(
        cm_world, alice, grant_rule(bob.party_id, constraints=['r.env.tee.sim.mr_ta == "00"'])
    )
    request = rr(bob.party_id, [wrong[0][0]])
    await refused(7, c.get_data_keys(app, request, await report_for(cm_world, app, request)))
    tdx_only = await owned(
        cm_world,
        alice,
        grant_rule(bob.party_id, global_constraints=['r.env.tee.platform == "tdx"']),
    )
    request = rr(bob.party_id, [tdx_only[0][0]])
    await refused(7, c.get_data_keys(app, request, await report_for(cm_world, app, request)))


async def test_get_tls_asset_group(cm_world: CMWorld) -> None:
    from trustflow_core.identity import party_id_of_key
    from trustflow_core.keyexchange import TlsAsset
    from trustflow_core.tls_asset import validate_tls_asset

    c, alice, bob, app = cm_world.client, cm_world.alice, cm_world.bob, cm_world.app
    [(uuid, _)] = await owned(cm_world, alice, grant_rule(bob.party_id, op="interact"))
    request = rr(bob.party_id, [uuid], op="interact")
    response = await c.get_tls_asset(app, request, await report_for(cm_world, app, request))
    asset = TlsAsset(response.tls_asset.cert.encode(), response.tls_asset.private_key.encode())
    info = validate_tls_asset(asset)
    cn = info.leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == party_id_of_key(app.chain[0].public_key())  # the attested app
    assert [k.resource_uri for k in response.data_keys] == [uuid]
    # a second member of the same group gets a leaf under the same group CA
    other = new_party("member-2")
    second = await c.get_tls_asset(other, request, await report_for(cm_world, other, request))
    info2 = validate_tls_asset(
        TlsAsset(second.tls_asset.cert.encode(), second.tls_asset.private_key.encode())
    )
    assert info2.anchor_fingerprint == info.anchor_fingerprint
    assert info2.leaf.public_key() != info.leaf.public_key()
    # refused like GetDataKeys: wrong op, no report
    wrong = rr(bob.party_id, [uuid], op="psi")
    await refused(7, c.get_tls_asset(app, wrong, await report_for(cm_world, app, wrong)))
    await refused(7, c.get_tls_asset(app, request, None))


# ---- results and export ---------------------------------------------------------------------


async def result_report(cm_world: CMWorld, body: cm_pb2.CreateResultDataKeyRequest.Body) -> Any:
    digest = hashlib.sha256(serialize_canonical(body)).digest()
    return report_to_pb(await sim_attester(cm_world).generate(digest))


async def test_result_key_gets_merged_policy(cm_world: CMWorld) -> None:
    c, alice, bob, carol, app = (
        cm_world.client,
        cm_world.alice,
        cm_world.bob,
        cm_world.carol,
        cm_world.app,
    )
    [(a, _)] = await owned(
        cm_world, alice, grant_rule(carol.party_id, columns=("id",), global_constraints=["true"])
    )
    [(b, _)] = await owned(
        cm_world, bob, grant_rule(carol.party_id, global_constraints=['r.scope == "default"'])
    )
    result, result_key = new_data_uuid(), data_key_b64()
    body = cm_pb2.CreateResultDataKeyRequest.Body(
        owner_id="",
        resource_uri=result,
        scope=SCOPE,
        data_key_b64=result_key,
        ancestor_uuids=[a, b],
    )
    await c.create_result_data_key(app, body, await result_report(cm_world, body))
    assert cm_world.cm.store is not None
    policy = cm_world.cm.store.get_policy(SCOPE, result)
    assert policy is not None and len(policy.rules) == 1
    merged = policy.rules[0]
    assert merged.grantee_party_ids == (carol.party_id,) and merged.columns == ("*",)
    assert set(merged.global_constraints) == {"true", 'r.scope == "default"'}
    request = rr(carol.party_id, [result])
    got = await c.get_data_keys(app, request, await report_for(cm_world, app, request))
    assert got[0].data_key_b64 == result_key
    # the identical registration again (a client's retry): accepted, nothing changes
    await c.create_result_data_key(app, body, await result_report(cm_world, body))
    again = await c.get_data_keys(app, request, await report_for(cm_world, app, request))
    assert again[0].data_key_b64 == result_key
    # another key for the same resource: refused, the first key stays
    changed = cm_pb2.CreateResultDataKeyRequest.Body()
    changed.CopyFrom(body)
    changed.data_key_b64 = data_key_b64()
    await refused(
        13,
        c.create_result_data_key(app, changed, await result_report(cm_world, changed)),
        "Already existed",
    )
    again = await c.get_data_keys(app, request, await report_for(cm_world, app, request))
    assert again[0].data_key_b64 == result_key
    # a report bound to another body
    other = cm_pb2.CreateResultDataKeyRequest.Body(
        resource_uri=new_data_uuid(), scope=SCOPE, data_key_b64=data_key_b64(), ancestor_uuids=[a]
    )
    await refused(7, c.create_result_data_key(app, other, await result_report(cm_world, body)))
    # missing ancestor policy: nothing stored
    lost = cm_pb2.CreateResultDataKeyRequest.Body(
        resource_uri=new_data_uuid(), scope="nope", data_key_b64=data_key_b64(), ancestor_uuids=[a]
    )
    await refused(
        13,
        c.create_result_data_key(app, lost, await result_report(cm_world, lost)),
        "data policy is empty",
    )
    assert cm_world.cm.store.data_info(lost.resource_uri) is None
    empty = cm_pb2.CreateResultDataKeyRequest()
    await refused(3, c.request("CreateResultDataKey", empty, app), "request body is empty")


# ---- result registration: what an attested but unauthorised app can do ----------------------

GOOD_TA = DEFAULT_MEASUREMENTS["hex_ta_measurement"]
EVIL_TA = "ee" * 32


def pinned_rule(grantee: str) -> cm_pb2.Rule:
    """Releases to ``grantee``'s psi only in an app measured as GOOD_TA."""
    return grant_rule(grantee, global_constraints=[f'r.env.tee.sim.mr_ta == "{GOOD_TA}"'])


@pytest.fixture(scope="module")
def evil_app(cm_world: CMWorld) -> tuple[Credentials, Any]:
    """Mallory's app: attested by the same (sim) platform, another measurement."""
    attester = backend_class(cm_world.pm, ATTESTER, "sim").from_settings(
        {"measurements": {"hex_ta_measurement": EVIL_TA}}
    )
    return new_party("mallory-app"), attester


async def report_by(attester: Any, body: cm_pb2.CreateResultDataKeyRequest.Body) -> Any:
    digest = hashlib.sha256(serialize_canonical(body)).digest()
    return report_to_pb(await attester.generate(digest))


async def test_result_takeover_refused(
    cm_world: CMWorld, evil_app: tuple[Credentials, Any]
) -> None:
    """Mallory's attested app names alice's existing result (a new partition of it) with its
    own data as ancestor: refused, alice's result keeps its rules and its key stays alice's
    app's alone (finding 1: this used to replace the result's rules with mallory's)."""
    c, alice, carol, app = cm_world.client, cm_world.alice, cm_world.carol, cm_world.app
    mallory = new_party("mallory")
    evil, evil_attester = evil_app
    [(a, _)] = await owned(cm_world, alice, pinned_rule(carol.party_id))
    [(m, _)] = await owned(cm_world, mallory, grant_rule(mallory.party_id))
    result, result_key = new_data_uuid(), data_key_b64()
    body = cm_pb2.CreateResultDataKeyRequest.Body(
        owner_id=alice.party_id,
        resource_uri=result,
        scope=SCOPE,
        data_key_b64=result_key,
        ancestor_uuids=[a],
    )
    await c.create_result_data_key(app, body, await result_report(cm_world, body))
    assert cm_world.cm.store is not None
    rules_before = cm_world.cm.store.get_policy(SCOPE, result)
    for target in (f"{result}/part9", result):
        attack = cm_pb2.CreateResultDataKeyRequest.Body(
            owner_id=alice.party_id,
            resource_uri=target,
            scope=SCOPE,
            data_key_b64=data_key_b64(),
            ancestor_uuids=[m],
        )
        await refused(
            13,
            c.create_result_data_key(evil, attack, await report_by(evil_attester, attack)),
            "already registered",
        )
    assert cm_world.cm.store.get_policy(SCOPE, result) == rules_before
    assert cm_world.cm.store.get_keys([f"{result}/part9"]) == {}
    steal = rr(mallory.party_id, [result])
    digest = ra_user_data(evil.chain_pems[0].encode(), serialize_canonical(steal))
    evil_report = report_to_pb(await evil_attester.generate(digest))
    await refused(7, c.get_data_keys(evil, steal, evil_report))
    mine = rr(carol.party_id, [result])
    got = await c.get_data_keys(app, mine, await report_for(cm_world, app, mine))
    assert got[0].data_key_b64 == result_key


async def test_result_ancestors_must_be_released_to_the_app(
    cm_world: CMWorld, evil_app: tuple[Credentials, Any]
) -> None:
    """An app may name as ancestors only data whose policy releases it to this app: mallory's
    app cannot hang a result under alice's data (alice's rules pin another measurement)."""
    c, alice, carol, app = cm_world.client, cm_world.alice, cm_world.carol, cm_world.app
    evil, evil_attester = evil_app
    [(a, _)] = await owned(cm_world, alice, pinned_rule(carol.party_id))
    body = cm_pb2.CreateResultDataKeyRequest.Body(
        resource_uri=new_data_uuid(), scope=SCOPE, data_key_b64=data_key_b64(), ancestor_uuids=[a]
    )
    await refused(
        7,
        c.create_result_data_key(evil, body, await report_by(evil_attester, body)),
        f"ancestor {a}: its policy does not release it to this app",
    )
    assert cm_world.cm.store is not None and cm_world.cm.store.data_info(body.resource_uri) is None
    # the app alice's rules name registers the same result
    await c.create_result_data_key(app, body, await result_report(cm_world, body))
    assert cm_world.cm.store.data_info(body.resource_uri) is not None
    # a policy without rules releases to nobody
    [(closed, _)] = await owned(cm_world, alice)
    shut = cm_pb2.CreateResultDataKeyRequest.Body(
        resource_uri=new_data_uuid(),
        scope=SCOPE,
        data_key_b64=data_key_b64(),
        ancestor_uuids=[closed],
    )
    await refused(7, c.create_result_data_key(app, shut, await result_report(cm_world, shut)))


async def test_policy_claims_an_unregistered_uuid(cm_world: CMWorld) -> None:
    """Finding 9: a policy on a data_uuid nobody registered claims it for its creator, so the
    keys and the policies of a data_uuid always have one owner; another party learns that the
    uuid is taken when it stores keys, instead of storing keys it can never govern."""
    c, alice = cm_world.client, cm_world.alice
    mallory = new_party("squatter")
    u = new_data_uuid()
    await c.create_data_policy(mallory, SCOPE, u, [grant_rule(mallory.party_id)])
    await refused(13, c.create_data_keys(alice, [(u, data_key_b64())]), "is wrong")
    await refused(
        13, c.create_data_policy(alice, SCOPE, u, [grant_rule(alice.party_id)]), "is wrong"
    )
    assert cm_world.cm.store is not None
    info = cm_world.cm.store.data_info(u)
    assert info is not None and info.owner_party_id == mallory.party_id
    assert cm_world.cm.store.get_keys([u]) == {}
    # the uuid's owner goes on as usual
    await c.create_data_keys(mallory, [(u, data_key_b64())])
    await c.add_data_rule(mallory, SCOPE, u, grant_rule(alice.party_id, rule_id="r2"))


def export_certificate(requester: Credentials, uri: str, voters: list[Credentials]) -> str:
    fields = {
        "type": "TEE_DOWNLOAD",
        "approved_threshold": len(voters),
        "approved_action": f"tee/download,{uri}",
    }
    signed = sign_vote_request(fields, requester.chain_pems, requester.private_key)
    invites = [
        voter_sign(
            {"action": "APPROVE"}, signed["vote_request_signature"], v.chain_pems, v.private_key
        )
        for v in voters
    ]
    return vote_result(signed, invites)


async def test_export_needs_all_original_owners(cm_world: CMWorld) -> None:
    c, alice, bob, carol, app = (
        cm_world.client,
        cm_world.alice,
        cm_world.bob,
        cm_world.carol,
        cm_world.app,
    )
    [(a, _)] = await owned(cm_world, alice, grant_rule(carol.party_id))
    [(b, _)] = await owned(cm_world, bob, grant_rule(carol.party_id))
    result, result_key = new_data_uuid(), data_key_b64()
    body = cm_pb2.CreateResultDataKeyRequest.Body(
        resource_uri=result, scope=SCOPE, data_key_b64=result_key, ancestor_uuids=[a, b]
    )
    await c.create_result_data_key(app, body, await result_report(cm_world, body))
    both = export_certificate(carol, result, [alice, bob])
    assert await c.get_export_data_key(carol, result, both) == result_key
    only_alice = export_certificate(carol, result, [alice, alice])
    await refused(13, c.get_export_data_key(carol, result, only_alice), "not all ancestors")
    # the certificate names carol; bob cannot use it
    await refused(13, c.get_export_data_key(bob, result, both), "wrong derived")
    await refused(13, c.get_export_data_key(carol, result, "{}"))
    await refused(13, c.get_export_data_key(carol, new_data_uuid(), both), "has be not stored")
    # an owner exports own data without votes
    own = export_certificate(alice, a, [])
    assert await c.get_export_data_key(alice, a, own)
