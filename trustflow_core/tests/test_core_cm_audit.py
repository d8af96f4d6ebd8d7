"""The Capsule Manager's audit log (docs/audit.md) over real gRPC on 127.0.0.1, against SQLite,
PostgreSQL and MariaDB: an owner's audit holds exactly the decisions on its data, verified
offline; other owners see none of it; rows changed, removed or moved in SQL are named; heads
before and after are consistent, across a restart too; refusals are bounded per data_uuid."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from trustflow_core.attestation import ra_user_data
from trustflow_core.harness.cm_world import (
    CMWorld,
    data_key_b64,
    grant_rule,
    new_data_uuid,
    new_party,
    running_cm,
)
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.registry import ATTESTER, backend_class
from trustflow_core.roles.capsule_manager.audit_appends import PAUSE_AFTER_MISS
from trustflow_core.roles.capsule_manager.settings import CMSettings
from trustflow_core.roles.capsule_manager_client import audit
from trustflow_core.roles.capsule_manager_client.client import (
    CapsuleManagerError,
    Credentials,
)
from trustflow_core.roles.capsule_manager_protocol.audit import (
    AuditVerificationError,
    cm_public_key,
    verify_bundle,
)
from trustflow_core.roles.capsule_manager_protocol.reports import report_to_pb
from trustflow_core.testing.databases import throwaway_database
from trustflow_core.wire import serialize_canonical

pytestmark = pytest.mark.asyncio(loop_scope="module")
SCOPE = "default"


def request_for(app: Credentials, uris: list[str], op: str = "psi") -> cm_pb2.ResourceRequest:
    return cm_pb2.ResourceRequest(
        initiator_party_id=app.party_id,
        scope=SCOPE,
        op_name=op,
        resources=[cm_pb2.ResourceRequest.Resource(resource_uri=u, columns=["id"]) for u in uris],
    )


async def report_for(w: CMWorld, app: Credentials, request: cm_pb2.ResourceRequest) -> Any:
    digest = ra_user_data(app.chain_pems[0].encode(), serialize_canonical(request))
    attester = backend_class(w.pm, ATTESTER, "sim").from_settings()
    return report_to_pb(await attester.generate(digest))


async def get_keys(w: CMWorld, app: Credentials, uris: list[str], op: str = "psi") -> Any:
    request = request_for(app, uris, op)
    return await w.client.get_data_keys(app, request, await report_for(w, app, request))


async def one_data_item(
    w: CMWorld, grantee: str | None = None
) -> tuple[Credentials, Credentials, str]:
    """A new owner and app, and one data item of the owner whose policy grants it to
    ``grantee`` (the app's party id by default)."""
    owner, app = new_party("owner"), new_party("app")
    uuid = new_data_uuid()
    await w.client.create_data_keys(owner, [(uuid, data_key_b64())])
    await w.client.create_data_policy(owner, SCOPE, uuid, [grant_rule(grantee or app.party_id)])
    return owner, app, uuid


def kinds(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["kind"], e["data_uuid"]) for e in map(json.loads, entry_texts(bundle))]


def entry_texts(bundle: dict[str, Any]) -> list[str]:
    return [item["entry"] for item in bundle["entries"]]


async def owner_flow(
    w: CMWorld,
) -> tuple[Credentials, Credentials, str, str, list[tuple[str, str]]]:
    """A fresh owner's data: two datasets, a release, refusals, rule and key changes. Returns
    the owner, the app, the two data uuids and the (kind, data_uuid) the audit must show."""
    owner, app = new_party("owner"), new_party("app")
    one, two = new_data_uuid(), new_data_uuid()
    c = w.client
    await c.create_data_keys(owner, [(one, data_key_b64())])
    await c.create_data_keys(owner, [(two, data_key_b64())])
    await c.create_data_policy(owner, SCOPE, one, [grant_rule(app.party_id)])
    await c.create_data_policy(owner, SCOPE, two, [grant_rule(w.carol.party_id)])
    await get_keys(w, app, [one])  # released
    with pytest.raises(CapsuleManagerError, match="not satisfied"):
        await get_keys(w, app, [two])  # refused: the rule grants carol
    with pytest.raises(CapsuleManagerError, match="not satisfied"):
        await get_keys(w, app, [one], op="xgb")  # refused: another op
    with pytest.raises(CapsuleManagerError, match="attestation report verify failed"):
        await c.get_data_keys(app, request_for(app, [one]), None)  # refused: no report
    await c.add_data_rule(owner, SCOPE, two, grant_rule(app.party_id, rule_id="r2"))
    await c.delete_data_rule(owner, SCOPE, two, "r1")
    await c.delete_data_key(owner, two)
    expected = [
        ("keys_created", one),
        ("keys_created", two),
        ("policy_set", one),
        ("policy_set", two),
        ("key_release", one),
        ("key_refusal", two),
        ("key_refusal", one),
        ("key_refusal", one),
        ("rule_added", two),
        ("rule_deleted", two),
        ("key_deleted", two),
    ]
    return owner, app, one, two, expected


async def test_owner_sees_exactly_its_decisions_verified_offline(cm_world: CMWorld) -> None:
    owner, app, _, two, expected = await owner_flow(cm_world)
    bundle = await audit.fetch_bundle(cm_world.client, owner)
    assert kinds(bundle) == expected
    entries = [json.loads(t) for t in entry_texts(bundle)]
    release = entries[4]["details"]
    assert release["app_party"] == app.party_id and release["op"] == "psi"
    assert release["platform"] == "SIM" and release["measurement"]
    assert release["columns"] == ["id"] and len(release["cert_sha256"]) == 64
    assert "not satisfied" in entries[5]["details"]["reason"]
    assert entries[6]["details"]["op"] == "xgb"
    unattested = entries[7]["details"]
    assert "attestation report verify failed" in unattested["reason"]
    assert unattested["platform"] == "" and unattested["app_party"] == app.party_id
    # only one data uuid
    only_two = await audit.fetch_bundle(cm_world.client, owner, data_uuid=two)
    assert [k for k in kinds(only_two)] == [k for k in expected if k[1] == two]
    # offline: the bundle verifies against the CM certificate alone; an edit is named
    key = cm_public_key(bundle["cm_cert"])
    verify_bundle(json.loads(json.dumps(bundle)), key, owner=owner.party_id)
    edited = json.loads(json.dumps(bundle))
    edited["entries"][4]["entry"] = edited["entries"][4]["entry"].replace('"psi"', '"xgb"')
    with pytest.raises(AuditVerificationError, match=f"entry #{bundle['entries'][4]['index']} "):
        verify_bundle(edited, key, owner=owner.party_id)
    swapped = json.loads(json.dumps(bundle))
    first, second = swapped["entries"][0], swapped["entries"][1]
    first["entry"], second["entry"] = second["entry"], first["entry"]
    with pytest.raises(AuditVerificationError, match="reordered"):
        verify_bundle(swapped, key, owner=owner.party_id)
    with pytest.raises(AuditVerificationError, match="another owner"):
        verify_bundle(bundle, key, owner=app.party_id)


async def test_another_owner_sees_none_of_it(cm_world: CMWorld) -> None:
    owner, _, one, _, _ = await owner_flow(cm_world)
    stranger = new_party("stranger")
    bundle = await audit.fetch_bundle(cm_world.client, stranger)
    assert bundle["entries"] == []
    assert await audit.list_entries(cm_world.client, stranger, data_uuid=one) == []
    mine = await audit.list_entries(cm_world.client, owner)
    with pytest.raises(CapsuleManagerError, match="not one of yours"):
        await audit.inclusion_proofs(
            cm_world.client, stranger, [mine[0].index], bundle["head"]["size"]
        )
    # someone else's signature on the owner's party id is refused like any owner request
    forged = audit.audit_pb2.ListAuditEntriesRequest(owner_party_id=owner.party_id)
    with pytest.raises(CapsuleManagerError):
        await cm_world.client.request(
            "ListEntries",
            forged,
            stranger,
            audit.audit_pb2.ListAuditEntriesResponse,
            stub=audit.audit_grpc.AuditLogStub,
        )


async def test_heads_before_and_after_are_consistent(cm_world: CMWorld) -> None:
    owner, app, one, _, _ = await owner_flow(cm_world)
    before = await audit.fetch_bundle(cm_world.client, owner)
    await get_keys(cm_world, app, [one])
    after = await audit.fetch_bundle(cm_world.client, owner, previous=before)
    assert after["head"]["size"] > before["head"]["size"]
    assert entry_texts(after)[: len(before["entries"])] == entry_texts(before)
    assert kinds(after)[-1] == ("key_release", one)
    # a forged "previous" head (not the CM's) is refused
    forged = json.loads(json.dumps(before))
    forged["head"]["root"] = "00" * 32
    with pytest.raises(AuditVerificationError, match="not signed by the CM's key"):
        await audit.fetch_bundle(cm_world.client, owner, previous=forged)
    forged["head"]["size"] -= 1  # a size the CM never signed a head for
    with pytest.raises(CapsuleManagerError, match="signed no audit head"):
        await audit.fetch_bundle(cm_world.client, owner, previous=forged)


async def test_result_registration_and_export_reach_every_owner(cm_world: CMWorld) -> None:
    import hashlib

    from trustflow_core.roles.capsule_manager_protocol.votes import (
        sign_vote_request,
        vote_result,
        voter_sign,
    )

    c = cm_world.client
    alice, bob, carol, app = (new_party(n) for n in ("alice", "bob", "carol", "app"))
    a, b = new_data_uuid(), new_data_uuid()
    for owner, uuid in ((alice, a), (bob, b)):
        await c.create_data_keys(owner, [(uuid, data_key_b64())])
        await c.create_data_policy(owner, SCOPE, uuid, [grant_rule(carol.party_id)])
    result = new_data_uuid()
    body = cm_pb2.CreateResultDataKeyRequest.Body(
        resource_uri=result,
        scope=SCOPE,
        data_key_b64=data_key_b64(),
        ancestor_uuids=[a, b],
        owner_id=carol.party_id,
    )
    digest = hashlib.sha256(serialize_canonical(body)).digest()
    attester = backend_class(cm_world.pm, ATTESTER, "sim").from_settings()
    await c.create_result_data_key(app, body, report_to_pb(await attester.generate(digest)))
    fields = {
        "type": "TEE_DOWNLOAD",
        "approved_threshold": 2,
        "approved_action": f"tee/download,{result}",
    }
    signed = sign_vote_request(fields, carol.chain_pems, carol.private_key)
    invites = [
        voter_sign(
            {"action": "APPROVE"}, signed["vote_request_signature"], v.chain_pems, v.private_key
        )
        for v in (alice, bob)
    ]
    with pytest.raises(CapsuleManagerError, match="not all ancestors"):
        await c.get_export_data_key(carol, result, vote_result(signed, invites[:1]))
    await c.get_export_data_key(carol, result, vote_result(signed, invites))
    for owner, uuid in ((alice, a), (bob, b), (carol, result)):
        bundle = await audit.fetch_bundle(c, owner)
        entries = [json.loads(t) for t in entry_texts(bundle)]
        registered = [e for e in entries if e["kind"] == "result_registered"]
        exported = [e for e in entries if e["kind"] == "export"]
        assert len(registered) == 1 and registered[0]["data_uuid"] == uuid
        assert registered[0]["details"]["ancestors"] == [a, b]
        assert registered[0]["details"]["result"] == result
        assert registered[0]["details"]["platform"] == "SIM"
        assert len(exported) == 1 and exported[0]["data_uuid"] == result
        assert exported[0]["details"]["requester"] == carol.party_id
        assert exported[0]["details"]["voters"] == sorted([alice.party_id, bob.party_id])
    refusals = [
        json.loads(t)
        for t in entry_texts(await audit.fetch_bundle(c, carol))
        if '"export_refusal"' in t
    ]
    assert len(refusals) == 1 and "not all ancestors" in refusals[0]["details"]["reason"]


async def test_tls_asset_releases_are_logged(cm_world: CMWorld) -> None:
    owner, app, uuid = await one_data_item(cm_world)
    request = request_for(app, [uuid])
    await cm_world.client.get_tls_asset(app, request, await report_for(cm_world, app, request))
    bundle = await audit.fetch_bundle(cm_world.client, owner)
    *_, release = [json.loads(t) for t in entry_texts(bundle)]
    assert release["kind"] == "key_release" and release["details"]["rpc"] == "get_tls_asset"


@pytest.fixture
def sql(db_url: str) -> Iterator[Any]:
    engine = create_engine(db_url)
    yield engine
    engine.dispose()


async def _tampered(w: CMWorld, owner: Credentials, sql: Any, change: str, index: int) -> str:
    """Apply ``change`` to the stored entries in SQL, return the CM's refusal message."""
    with sql.begin() as conn:
        conn.execute(text(change), {"i": index})
    with pytest.raises(CapsuleManagerError) as err:
        await audit.fetch_bundle(w.client, owner)
    return err.value.message


@pytest.mark.parametrize("how", ["edit", "delete", "reorder"])
async def test_a_row_changed_in_sql_is_named(cm_world: CMWorld, sql: Any, how: str) -> None:
    owner, *_ = await owner_flow(cm_world)
    good = await audit.fetch_bundle(cm_world.client, owner)
    index = good["entries"][4]["index"]  # the release
    with sql.begin() as conn:
        saved = conn.execute(
            text("SELECT idx, entry_json, mac FROM cm_audit WHERE idx IN (:i, :j)"),
            {"i": index, "j": index + 1},
        ).all()
    try:
        if how == "edit":
            message = await _tampered(
                cm_world,
                owner,
                sql,
                "UPDATE cm_audit SET entry_json = REPLACE(entry_json, 'psi', 'xgb') WHERE idx = :i",
                index,
            )
            assert f"audit entry #{index} was changed or moved" in message
        elif how == "delete":
            message = await _tampered(
                cm_world, owner, sql, "DELETE FROM cm_audit WHERE idx = :i", index
            )
            assert f"audit entry #{index} is missing" in message
        else:  # the rows of two entries swap places
            rows = {r.idx: r for r in saved}
            with sql.begin() as conn:
                for at, src in ((index, index + 1), (index + 1, index)):
                    conn.execute(
                        text("UPDATE cm_audit SET entry_json = :e, mac = :m WHERE idx = :i"),
                        {"e": rows[src].entry_json, "m": rows[src].mac, "i": at},
                    )
            with pytest.raises(CapsuleManagerError) as err:
                await audit.fetch_bundle(cm_world.client, owner)
            assert f"audit entry #{index} was changed or moved" in err.value.message
    finally:
        with sql.begin() as conn:
            conn.execute(
                text("DELETE FROM cm_audit WHERE idx IN (:i, :j)"), {"i": index, "j": index + 1}
            )
            for r in saved:
                conn.execute(
                    text(
                        "INSERT INTO cm_audit (idx, owner_party_id, data_uuid, time_ms, "
                        "entry_json, mac) SELECT :i, :o, :u, :t, :e, :m"
                    ),
                    {
                        "i": r.idx,
                        "o": json.loads(r.entry_json)["owner"],
                        "u": json.loads(r.entry_json)["data_uuid"],
                        "t": json.loads(r.entry_json)["time_ms"],
                        "e": r.entry_json,
                        "m": r.mac,
                    },
                )
    # restored: the log verifies again and extends the head seen before the tampering
    await audit.fetch_bundle(cm_world.client, owner, previous=good)


async def test_an_old_row_nobody_reads_is_named_at_the_next_full_check(
    cm_world: CMWorld, sql: Any
) -> None:
    """The verified prefix is kept between calls: a row of another owner changed in SQL
    does not change the heads the CM signs (they come from the verified leaves) and is named
    at the next full re-check of the log."""
    owner, *_ = await owner_flow(cm_world)
    other, *_ = await owner_flow(cm_world)
    good = await audit.fetch_bundle(cm_world.client, owner)
    index = good["entries"][4]["index"]
    assert cm_world.cm.store is not None and cm_world.cm.store.audit is not None
    log = cm_world.cm.store.audit
    with sql.begin() as conn:
        conn.execute(
            text(
                "UPDATE cm_audit SET entry_json = REPLACE(entry_json, 'psi', 'xgb') WHERE idx = :i"
            ),
            {"i": index},
        )
    try:
        # the other owner's audit: served from verified leaves, the head extends the old one
        await audit.fetch_bundle(cm_world.client, other)
        log.full_check_seconds = 0  # the next call re-reads the whole log
        with pytest.raises(CapsuleManagerError, match=f"audit entry #{index} was changed"):
            await audit.fetch_bundle(cm_world.client, other)
    finally:
        log.full_check_seconds = 300.0
        with sql.begin() as conn:
            conn.execute(
                text(
                    "UPDATE cm_audit SET entry_json = REPLACE(entry_json, 'xgb', 'psi') "
                    "WHERE idx = :i"
                ),
                {"i": index},
            )
    await audit.fetch_bundle(cm_world.client, owner, previous=good)


async def test_refusals_are_bounded_per_data_uuid_across_cms(cm_world: CMWorld) -> None:
    """Two CMs on one database (as two workers or replicas) share the refusal bound: refusals
    sent to both alternately are logged up to one burst, and the count of those left out
    travels in the next refusal entry."""
    owner, app, uuid = await one_data_item(cm_world, "nobody")
    assert cm_world.cm.store is not None
    log = cm_world.cm.store.audit
    assert log is not None
    burst = log.limiter.burst
    async with running_cm(cm_world.cm.settings, verify_sim=True) as other:
        for i in range(burst + 5):
            with pytest.raises(CapsuleManagerError, match="not satisfied"):
                await get_keys(other if i % 2 else cm_world, app, [uuid])
        bundle = await audit.fetch_bundle(cm_world.client, owner)
    refusals = [k for k in kinds(bundle) if k[0] == "key_refusal"]
    assert burst <= len(refusals) <= burst + 1  # at most one token refilled meanwhile
    # the limit is shared: more refusals later carry the count of those left out
    log_entries = [json.loads(t) for t in entry_texts(bundle)]
    assert all("suppressed" not in e["details"] for e in log_entries[:burst])


async def test_restart_keeps_the_log_consistent(
    sim_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    kind = "sqlite" if db_url.startswith("sqlite") else db_url.split("+")[0]
    kind = "mysql" if kind.startswith("mysql") else kind
    with throwaway_database(kind, tmp_path) as url:
        settings = CMSettings(port=0, plat="sim", data_dir=tmp_path / "cm", storage_url=url)
        async with running_cm(settings, verify_sim=True) as w:
            owner, *_ = await owner_flow(w)
            before = await audit.fetch_bundle(w.client, owner)
        async with running_cm(settings, verify_sim=True) as w:
            await w.client.create_data_keys(owner, [(new_data_uuid(), data_key_b64())])
            after = await audit.fetch_bundle(w.client, owner, previous=before)
        assert after["head"]["size"] == before["head"]["size"] + 1
        assert after["cm_cert"] == before["cm_cert"]


# ---- the CLI: `trustflow cms audit`, `trustflow util verify-audit` ---------------------------


def owner_config(w: CMWorld, owner: Credentials, d: Path) -> Path:
    """The owner's cms YAML (its key and certificate written next to it)."""
    from cryptography.hazmat.primitives import serialization

    key = d / "owner.key"
    key.write_bytes(
        owner.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (d / "owner.crt").write_text("".join(owner.chain_pems))
    config = {
        "host": w.target,
        "tee_plat": "sim",
        "common": {"cert_pems_file": [str(d / "owner.crt")], "private_key_file": str(key)},
    }
    path = d / "owner.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


async def cli(*args: str, expect: int = 0) -> str:
    """Run ``trustflow <args>`` in a thread (its own event loop; the CM's keeps serving)."""

    from click.testing import CliRunner

    from trustflow_core.cli import build_cli

    result = await asyncio.to_thread(CliRunner().invoke, build_cli(), list(args))
    assert result.exit_code == expect, result.output
    return result.output


async def test_cli_audit_table_json_and_offline_verification(
    cm_world: CMWorld, tmp_path: Path
) -> None:
    owner, app, one, two, expected = await owner_flow(cm_world)
    config = str(owner_config(cm_world, owner, tmp_path))
    table = await cli("cms", "--config-file", config, "audit")
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["#", "time", "(UTC)", "decision"]
    assert [line.split()[3] for line in lines[1:-1]] == [kind for kind, _ in expected]
    assert f"app_party={app.party_id} op=psi columns=id platform=SIM" in table
    assert f"{len(expected)} entries verified in the CM's signed log" in lines[-1]
    only = await cli("cms", "--config-file", config, "audit", "--data-uuid", two)
    assert len(only.splitlines()) == 2 + sum(1 for _, u in expected if u == two)
    later = await cli("cms", "--config-file", config, "audit", "--since", "2999-01-01")
    assert "0 entries verified" in later
    await cli("cms", "--config-file", config, "audit", "--since", "yesterday", expect=1)

    bundle_file, cert_file = tmp_path / "audit.json", tmp_path / "cm.crt"
    bundle_file.write_text(await cli("cms", "--config-file", config, "audit", "--json"))
    cert_file.write_text(await cm_world.client.cm_cert_pem())
    ok = await cli("util", "verify-audit", str(bundle_file), "--cm-cert", str(cert_file))
    assert ok.startswith(f"verified: {len(expected)} entries")

    # more decisions, then an audit proving the log only grew since the saved one
    await get_keys(cm_world, app, [one])
    newer_file = tmp_path / "newer.json"
    newer_file.write_text(
        await cli("cms", "--config-file", config, "audit", "--json", "--previous", str(bundle_file))
    )
    checked = await cli(
        "util",
        "verify-audit",
        str(newer_file),
        "--cm-cert",
        str(cert_file),
        "--previous",
        str(bundle_file),
    )
    assert (
        f"consistent with the head of size {json.loads(bundle_file.read_text())['head']['size']}"
        in checked
    )

    # the CM's certificate from its attestation report in the bundle instead of a file
    attested = await cli("util", "verify-audit", str(bundle_file), "--tee-plat", "sim")
    assert attested == ok
    assert "cm_attestation" in json.loads(bundle_file.read_text())
    swapped = json.loads(bundle_file.read_text())
    swapped["cm_cert"] = new_party("other-cm").chain_pems[0]
    swapped_file = tmp_path / "swapped.json"
    swapped_file.write_text(json.dumps(swapped))
    refused = await cli("util", "verify-audit", str(swapped_file), "--tee-plat", "sim", expect=1)
    assert "user_data" in refused
    await cli("util", "verify-audit", str(bundle_file), expect=1)  # neither cert nor platform

    # an entry edited in the saved bundle is named
    bundle = json.loads(bundle_file.read_text())
    index = bundle["entries"][4]["index"]
    bundle["entries"][4]["entry"] = bundle["entries"][4]["entry"].replace('"psi"', '"sql"')
    bundle_file.write_text(json.dumps(bundle))
    failed = await cli(
        "util", "verify-audit", str(bundle_file), "--cm-cert", str(cert_file), expect=1
    )
    assert f"entry #{index} (key_release of {one}) is not in the signed log" in failed
    # another CM's certificate does not verify the head
    other = tmp_path / "other.crt"
    other.write_text(new_party("other-cm").chain_pems[0])
    failed = await cli("util", "verify-audit", str(newer_file), "--cm-cert", str(other), expect=1)
    assert "not signed by the CM's key" in failed


async def test_no_key_leaves_when_its_entry_cannot_be_committed(
    cm_world: CMWorld, sql: Any
) -> None:
    owner, app, uuid = await one_data_item(cm_world)
    with sql.begin() as conn:  # the entry's table is gone: the release's commit fails
        conn.execute(text("ALTER TABLE cm_audit RENAME TO cm_audit_away"))
    try:
        with pytest.raises(CapsuleManagerError) as err:
            await get_keys(cm_world, app, [uuid])
        assert err.value.message and "data_key" not in err.value.message
    finally:
        with sql.begin() as conn:
            conn.execute(text("ALTER TABLE cm_audit_away RENAME TO cm_audit"))
    bundle = await audit.fetch_bundle(cm_world.client, owner)
    assert kinds(bundle) == [("keys_created", uuid), ("policy_set", uuid)]
    reply = await get_keys(cm_world, app, [uuid])  # the table is back: released and logged
    assert len(reply) == 1
    bundle = await audit.fetch_bundle(cm_world.client, owner)
    assert kinds(bundle)[-1] == ("key_release", uuid)


class HeldAppend:
    """The group commit's first batch held in its writer thread until :meth:`release`."""

    def __init__(self) -> None:
        self._arrived, self._go = threading.Event(), threading.Event()

    def hook(self) -> None:
        if not self._arrived.is_set():  # the first batch only: the decision made before
            self._arrived.set()
            self._go.wait(10)

    async def reached(self) -> None:
        assert await asyncio.to_thread(self._arrived.wait, 10)

    def release(self) -> None:
        self._go.set()


@contextlib.contextmanager
def first_append_held(store: Any) -> Iterator[HeldAppend]:
    """Hold the first audit append of ``store`` (a release decided, its entry not yet written)
    while the block runs; always released and unhooked at the end."""
    held = HeldAppend()
    if store.audit is not None:  # PostgreSQL's one-statement append is tried first, as usual
        store.audit.one_statement_paused = 0
    store.audit_commits.before_write = held.hook
    try:
        yield held
    finally:
        store.audit_commits.before_write = None
        held.release()


async def test_a_release_decided_before_a_revocation_is_decided_again(cm_world: CMWorld) -> None:
    """GetDataKeys decided (policy allows) while the owner deletes the policy: the release's
    append is held until the deletion committed, then finds the data changed, so the key does
    not leave; the request is decided again (refused) and the audit shows no release after
    the revocation."""

    owner, app, uuid = await one_data_item(cm_world)
    store = cm_world.cm.store
    assert store is not None
    with first_append_held(store) as held:
        task = asyncio.create_task(get_keys(cm_world, app, [uuid]))
        await held.reached()
        await cm_world.client.delete_data_policy(owner, SCOPE, uuid)  # commits meanwhile
        held.release()
        with pytest.raises(CapsuleManagerError, match="data policy is empty"):
            await task
    bundle = await audit.fetch_bundle(cm_world.client, owner)
    assert kinds(bundle) == [
        ("keys_created", uuid),
        ("policy_set", uuid),
        ("policy_deleted", uuid),
        ("key_refusal", uuid),
    ]


async def test_a_release_whose_append_waits_behind_a_revocation_is_decided_again(
    cm_world: CMWorld, sql: Any, db_url: str
) -> None:
    """PostgreSQL's one-statement append (docs/audit.md): its snapshot is taken before it
    waits for the size row, so a revocation that commits while it waits is not in that
    snapshot. Interleaving: the size row is held (a session of the test) while the owner
    deletes the policy (its revision bumped, its append waiting) and a GetDataKeys is
    decided on the old policy and appends (waiting too); once the row is let go, the
    revocation commits first, and the release must find that (the size it expected has
    grown), decide again and be refused: no key leaves after the revocation."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the one-statement append is PostgreSQL's")
    owner, app, uuid = await one_data_item(cm_world)

    async def waiting(count: int) -> None:
        query = text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        for _ in range(500):
            with sql.connect() as probe:
                if probe.execute(query).scalar() == count:
                    return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{count} sessions never waited for the size row")

    store = cm_world.cm.store
    assert store is not None and store.audit is not None
    store.audit.one_statement_paused = 0  # this test is about the one statement
    with sql.connect() as holder:
        holder.execute(text("SELECT size FROM cm_audit_size WHERE id = 1 FOR UPDATE"))
        revoke = asyncio.create_task(cm_world.client.delete_data_policy(owner, SCOPE, uuid))
        await waiting(1)
        release = asyncio.create_task(get_keys(cm_world, app, [uuid]))
        await waiting(2)
        holder.commit()
    await revoke
    with pytest.raises(CapsuleManagerError, match="data policy is empty"):
        await release
    assert store.audit.one_statement_paused == PAUSE_AFTER_MISS  # it ran and wrote nothing
    bundle = await audit.fetch_bundle(cm_world.client, owner)
    assert kinds(bundle) == [
        ("keys_created", uuid),
        ("policy_set", uuid),
        ("policy_deleted", uuid),
        ("key_refusal", uuid),
    ]


async def test_a_change_to_other_data_does_not_stop_a_release(cm_world: CMWorld) -> None:
    """The read set is per data_uuid: another data's policy change between the decision and
    the append leaves the release alone."""

    owner, app = new_party("owner"), new_party("app")
    uuid, other = new_data_uuid(), new_data_uuid()
    await cm_world.client.create_data_keys(owner, [(uuid, data_key_b64()), (other, data_key_b64())])
    await cm_world.client.create_data_policy(owner, SCOPE, uuid, [grant_rule(app.party_id)])
    store = cm_world.cm.store
    assert store is not None
    with first_append_held(store) as held:
        task = asyncio.create_task(get_keys(cm_world, app, [uuid]))
        await held.reached()
        await cm_world.client.create_data_policy(owner, SCOPE, other, [grant_rule("x")])
        held.release()
        assert len(await task) == 1
    bundle = await audit.fetch_bundle(cm_world.client, owner)
    assert kinds(bundle)[-2:] == [("policy_set", other), ("key_release", uuid)]


async def test_refused_result_registrations_are_logged(cm_world: CMWorld) -> None:
    """A result registration refused (an ancestor's policy does not release it to the app; no
    report) is logged for the ancestors' owners with the reason; a refused one that names an
    existing data_uuid is logged for that data's owner too."""
    import hashlib

    c = cm_world.client
    alice, bob, carol, app = (new_party(n) for n in ("alice", "bob", "carol", "app"))
    a, b = new_data_uuid(), new_data_uuid()
    await c.create_data_keys(alice, [(a, data_key_b64())])
    await c.create_data_policy(alice, SCOPE, a, [grant_rule(carol.party_id)])
    await c.create_data_keys(bob, [(b, data_key_b64())])
    await c.create_data_policy(bob, SCOPE, b, [])  # no rules: releases to nobody

    async def register(result: str, ancestors: list[str], report: bool = True) -> None:
        body = cm_pb2.CreateResultDataKeyRequest.Body(
            resource_uri=result,
            scope=SCOPE,
            data_key_b64=data_key_b64(),
            ancestor_uuids=ancestors,
            owner_id=carol.party_id,
        )
        digest = hashlib.sha256(serialize_canonical(body)).digest()
        attester = backend_class(cm_world.pm, ATTESTER, "sim").from_settings()
        pb = report_to_pb(await attester.generate(digest)) if report else None
        await c.create_result_data_key(app, body, pb)

    with pytest.raises(CapsuleManagerError, match="does not release it"):
        await register(new_data_uuid(), [a, b])  # b's policy holds it back
    with pytest.raises(CapsuleManagerError, match="attestation report verify failed"):
        await register(new_data_uuid(), [a], report=False)
    with pytest.raises(CapsuleManagerError, match="is not result data"):
        await register(b, [a])  # names bob's original data
    alice_entries = [json.loads(t) for t in entry_texts(await audit.fetch_bundle(c, alice))]
    bob_entries = [json.loads(t) for t in entry_texts(await audit.fetch_bundle(c, bob))]
    alice_refusals = [e for e in alice_entries if e["kind"] == "result_refusal"]
    bob_refusals = [e for e in bob_entries if e["kind"] == "result_refusal"]
    assert [e["data_uuid"] for e in alice_refusals] == [a, a, a]
    assert "does not release it" in alice_refusals[0]["details"]["reason"]
    assert "attestation report verify failed" in alice_refusals[1]["details"]["reason"]
    assert alice_refusals[0]["details"]["ancestors"] == [a, b]
    assert alice_refusals[0]["details"]["result_owner"] == carol.party_id
    assert [e["data_uuid"] for e in bob_refusals] == [b, b]
    assert "is not result data" in bob_refusals[1]["details"]["reason"]
    assert not [e for e in alice_entries + bob_entries if e["kind"] == "result_registered"]


async def test_an_export_decided_before_its_key_is_deleted_is_decided_again(
    cm_world: CMWorld,
) -> None:
    """GetExportDataKey decided (votes valid, key present) while the result's owner deletes
    the key: the export's append is held until the deletion committed, then finds the data
    changed; the export is decided again and refused, and no export entry is logged."""
    import hashlib

    from trustflow_core.roles.capsule_manager_protocol.votes import (
        sign_vote_request,
        vote_result,
        voter_sign,
    )

    c = cm_world.client
    alice, carol, app = (new_party(n) for n in ("alice", "carol", "app"))
    a = new_data_uuid()
    await c.create_data_keys(alice, [(a, data_key_b64())])
    await c.create_data_policy(alice, SCOPE, a, [grant_rule(carol.party_id)])
    result = new_data_uuid()
    body = cm_pb2.CreateResultDataKeyRequest.Body(
        resource_uri=result,
        scope=SCOPE,
        data_key_b64=data_key_b64(),
        ancestor_uuids=[a],
        owner_id=carol.party_id,
    )
    digest = hashlib.sha256(serialize_canonical(body)).digest()
    attester = backend_class(cm_world.pm, ATTESTER, "sim").from_settings()
    await c.create_result_data_key(app, body, report_to_pb(await attester.generate(digest)))
    fields = {
        "type": "TEE_DOWNLOAD",
        "approved_threshold": 1,
        "approved_action": f"tee/download,{result}",
    }
    signed = sign_vote_request(fields, carol.chain_pems, carol.private_key)
    invite = voter_sign(
        {"action": "APPROVE"}, signed["vote_request_signature"], alice.chain_pems, alice.private_key
    )
    store = cm_world.cm.store
    assert store is not None
    with first_append_held(store) as held:
        task = asyncio.create_task(
            c.get_export_data_key(carol, result, vote_result(signed, [invite]))
        )
        await held.reached()
        await c.delete_data_key(carol, result)  # commits while the export waits
        held.release()
        with pytest.raises(CapsuleManagerError, match="data_keys not found"):
            await task
    entries = [json.loads(t) for t in entry_texts(await audit.fetch_bundle(c, carol))]
    about = [e["kind"] for e in entries if e["data_uuid"] == result]
    assert about == ["result_registered", "key_deleted", "export_refusal"]


async def test_concurrent_releases_on_two_cms_form_one_verified_log(cm_world: CMWorld) -> None:
    """Releases on two CMs sharing the database, concurrently (group commits of both
    appending on the driver's cursor): every release is logged once, the log verifies."""

    owner, app, uuid = await one_data_item(cm_world)
    async with running_cm(cm_world.cm.settings, verify_sim=True) as other:
        replies = await asyncio.gather(*(get_keys(w, app, [uuid]) for w in [cm_world, other] * 8))
        assert all(len(r) == 1 for r in replies)
        bundle = await audit.fetch_bundle(other.client, owner)
    verify_bundle(
        json.loads(json.dumps(bundle)), cm_public_key(bundle["cm_cert"]), owner=owner.party_id
    )
    assert [k for k, _ in kinds(bundle)] == ["keys_created", "policy_set"] + ["key_release"] * 16


async def test_releases_are_logged_after_the_server_dropped_the_connections(
    cm_world: CMWorld, db_url: str
) -> None:
    """The group commit's pooled connections killed by PostgreSQL (a restart): the next
    release's append is retried on a fresh connection; the key leaves with its entry."""
    if not db_url.startswith("postgresql"):
        pytest.skip("server-side connection kill is exercised on PostgreSQL")
    from trustflow_core.testing.databases import admin_url

    owner, app, uuid = await one_data_item(cm_world)
    await get_keys(cm_world, app, [uuid])  # the writer's connection is pooled now
    admin = create_engine(admin_url("postgresql"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
            {"d": db_url.rsplit("/", 1)[1]},
        )
    admin.dispose()
    assert len(await get_keys(cm_world, app, [uuid])) == 1
    bundle = await audit.fetch_bundle(cm_world.client, owner)
    assert [k for k, _ in kinds(bundle)][-2:] == ["key_release", "key_release"]
