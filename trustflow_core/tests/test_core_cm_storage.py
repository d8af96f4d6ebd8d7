"""Capsule Manager store: every backend (SQLite file, PostgreSQL, MariaDB), atomicity,
ownership, sealing at rest, restart."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from trustflow_core.roles.capsule_manager.database import Database, NewKey
from trustflow_core.roles.capsule_manager.policy import OpConstraint, Rule, derive_result_policy
from trustflow_core.roles.capsule_manager.sealing import Sealer, load_or_create_key
from trustflow_core.roles.capsule_manager_protocol.errors import CMError, Kind
from trustflow_core.testing.databases import throwaway_database

ALICE, BOB = "A" * 52, "B" * 52


@pytest.fixture
def store(db_url: str, key: bytes) -> Iterator[Database]:
    # each test gets an empty schema
    s = Database(db_url, Sealer(key))
    from trustflow_core.roles.capsule_manager.db_models import Base

    Base.metadata.drop_all(s._write_engine)
    s.create_schema()
    yield s
    s.close()


def uid() -> str:
    return "d-" + os.urandom(6).hex()


def nk(uri: str, b64: str = "AAAAAAAAAAAAAAAAAAAAAA==") -> NewKey:
    return NewKey(uri, uri.split("/")[0], b64)


RULE = Rule("r1", (BOB,), (OpConstraint("psi", ("r.op_name == 'psi'",)),), ("*",), ())


def anyone(_uuid: str, _rules: object) -> bool:
    """A ``releasable`` check that releases every ancestor."""
    return True


def test_keys_roundtrip_and_overwrite(store: Database) -> None:
    u = uid()
    store.create_data_keys(ALICE, [nk(u, "a2V5MQ=="), nk(f"{u}/p1", "a2V5Mg==")])
    assert store.get_keys([u, f"{u}/p1", "missing"]) == {u: "a2V5MQ==", f"{u}/p1": "a2V5Mg=="}
    store.create_data_keys(ALICE, [nk(u, "a2V5Mw==")])
    assert store.get_keys([u]) == {u: "a2V5Mw=="}
    info = store.data_info(u)
    assert info is not None and info.owner_party_id == ALICE and info.parents == ()


def test_other_owner_refused_all_or_nothing(store: Database) -> None:
    u, v = uid(), uid()
    store.create_data_keys(ALICE, [nk(u)])
    with pytest.raises(CMError) as err:
        store.create_data_keys(BOB, [nk(v), nk(u, "Ym9i")])
    assert err.value.kind is Kind.ASSERT
    assert store.data_info(v) is None  # nothing of the failed request stayed
    assert store.get_keys([u, v]) == {u: "AAAAAAAAAAAAAAAAAAAAAA=="}
    with pytest.raises(CMError):
        store.delete_data_key(BOB, u, u)
    b = uid()
    store.create_data_keys(BOB, [nk(b)])
    store.delete_data_key(BOB, b, u)  # bob's record named, alice's key: not deleted
    assert u in store.get_keys([u])
    store.delete_data_key(ALICE, u, u)
    assert store.get_keys([u]) == {}


def test_keys_are_sealed_at_rest(store: Database, db_url: str) -> None:
    u = uid()
    secret = "c2VjcmV0LWtleS1ieXRlcw=="
    store.create_data_keys(ALICE, [nk(u, secret)])
    with store._read_engine.connect() as conn:
        row = conn.execute(
            text("SELECT sealed_key, nonce FROM cm_data_keys WHERE resource_uri = :u"), {"u": u}
        ).one()
    assert secret.encode() not in bytes(row[0])
    assert len(bytes(row[1])) == 12


def test_sealed_value_moved_to_another_row_does_not_open(store: Database) -> None:
    u, v = uid(), uid()
    store.create_data_keys(ALICE, [nk(u, "a2V5MQ=="), nk(v, "a2V5Mg==")])
    with store._write_engine.begin() as conn:
        sealed, nonce = conn.execute(
            text("SELECT sealed_key, nonce FROM cm_data_keys WHERE resource_uri = :u"), {"u": u}
        ).one()
        conn.execute(
            text("UPDATE cm_data_keys SET sealed_key = :s, nonce = :n WHERE resource_uri = :v"),
            {"s": sealed, "n": nonce, "v": v},
        )
    with pytest.raises(CMError) as err:
        store.get_keys([v])
    assert err.value.kind is Kind.DATA_INTEGRITY


def test_wrong_storage_key_refused_at_start(store: Database, db_url: str) -> None:
    other = Database(db_url, Sealer(os.urandom(32)))
    try:
        with pytest.raises(CMError, match="different storage key"):
            other.create_schema()
    finally:
        other.close()


def test_other_schema_version_refused(store: Database, db_url: str, key: bytes) -> None:
    with store._write_engine.begin() as conn:
        conn.execute(
            text("UPDATE cm_meta SET value = :v WHERE name = 'schema_version'"), {"v": b"0"}
        )
    other = Database(db_url, Sealer(key))
    try:
        with pytest.raises(CMError, match="schema version 0"):
            other.create_schema()
    finally:
        other.close()


def test_policies_rules_and_ownership(store: Database) -> None:
    u = uid()
    store.create_data_keys(ALICE, [nk(u)])
    store.put_policy(ALICE, "default", u, [RULE])
    rule2 = Rule("r2", (BOB,), (OpConstraint("*"),), ("a",))
    store.add_rule(ALICE, "default", u, rule2)
    store.add_rule(ALICE, "default", u, rule2)  # duplicates allowed, appended in order
    p = store.get_policy("default", u)
    assert p is not None and [r.rule_id for r in p.rules] == ["r1", "r2", "r2"]
    assert p.rules[0] == RULE
    assert store.get_policy("other", u) is None
    for attempt in (
        lambda: store.put_policy(BOB, "default", u, []),
        lambda: store.add_rule(BOB, "default", u, RULE),
        lambda: store.delete_rule(BOB, "default", u, "r1"),
        lambda: store.delete_policy(BOB, "default", u),
    ):
        with pytest.raises(CMError) as err:
            attempt()
        assert err.value.kind is Kind.ASSERT
    store.delete_rule(ALICE, "default", u, "r2")
    p = store.get_policy("default", u)
    assert p is not None and [r.rule_id for r in p.rules] == ["r1"]
    assert [x.data_uuid for x in store.list_policies(ALICE, "default")] == [u]
    assert store.list_policies(BOB, "default") == []
    store.delete_policy(ALICE, "default", u)
    store.delete_policy(ALICE, "default", u)  # absent: no-op
    assert store.get_policy("default", u) is None


def test_access_view_reads_records_policies_and_sealed_keys(store: Database) -> None:
    """GetDataKeys' one read, for several resources at once, on every backend."""
    a, b, lonely, missing = uid(), uid(), uid(), uid()
    store.create_data_keys(ALICE, [nk(a, "a2V5QQ=="), nk(f"{a}/part", "a2V5UA==")])
    store.create_data_keys(BOB, [nk(b, "a2V5Qg==")])
    store.create_data_keys(ALICE, [nk(lonely)])
    rule2 = Rule("r2", (ALICE,), (OpConstraint("*"),), ("c",))
    store.put_policy(ALICE, "s", a, [RULE, rule2])
    store.put_policy(BOB, "s", b, [])
    store.put_policy(BOB, "other", b, [RULE])
    uuids = [a, b, lonely, missing, a]
    uris = [a, f"{a}/part", b, f"{missing}/x"]
    view, sealed = store.access_view("s", uuids, uris)
    assert list(view) == [a, b, lonely, missing]
    (info_a, policy_a), (info_b, policy_b) = view[a], view[b]
    assert info_a is not None and (info_a.owner_party_id, info_a.parents) == (ALICE, ())
    assert policy_a is not None and policy_a.rules == (RULE, rule2)
    assert (policy_a.scope, policy_a.owner_party_id) == ("s", ALICE)
    assert info_b is not None and info_b.owner_party_id == BOB
    assert policy_b is not None and policy_b.rules == ()  # a policy without rules
    assert view[lonely][0] is not None and view[lonely][1] is None
    assert view[missing] == (None, None)
    assert [u for u in uris if u in sealed] == [a, f"{a}/part", b]
    assert (sealed.open(a), sealed.open(f"{a}/part"), sealed.open(b)) == (
        "a2V5QQ==",
        "a2V5UA==",
        "a2V5Qg==",
    )
    view, sealed = store.access_view("s", [], [a])
    assert view == {} and a not in sealed
    view, sealed = store.access_view("s", [a], [])
    assert view[a][1] is not None and a not in sealed


def test_policy_for_unregistered_data_claims_it(store: Database) -> None:
    u = uid()
    store.add_rule(ALICE, "s", u, RULE)  # creates the policy and claims the uuid
    info = store.data_info(u)
    assert info is not None and info.owner_party_id == ALICE
    for attempt in (
        lambda: store.add_rule(BOB, "s", u, RULE),
        lambda: store.put_policy(BOB, "other", u, [RULE]),
        lambda: store.create_data_keys(BOB, [nk(u)]),
    ):
        with pytest.raises(CMError) as err:
            attempt()
        assert err.value.kind is Kind.ASSERT
    store.create_data_keys(ALICE, [nk(u)])
    store.delete_policy(BOB, "s", uid())  # nothing there: no-op, claims nothing


def test_owner_takes_over_a_policy_left_by_another_party(store: Database) -> None:
    """A database written before policies claimed their uuid can hold bob's policy on alice's
    data: alice (the data's owner) can replace it; bob can no longer touch it."""
    from trustflow_core.roles.capsule_manager.db_models import PolicyRow

    u = uid()
    store.create_data_keys(ALICE, [nk(u)])
    with store._write.begin() as session:
        session.add(PolicyRow(scope="s", data_uuid=u, owner_party_id=BOB))
    with pytest.raises(CMError):
        store.add_rule(BOB, "s", u, RULE)
    store.put_policy(ALICE, "s", u, [RULE])
    policy = store.get_policy("s", u)
    assert policy is not None and policy.owner_party_id == ALICE and policy.rules == (RULE,)


def test_certs(store: Database) -> None:
    store.register_cert(ALICE, "PEM-A")
    with pytest.raises(CMError) as err:
        store.register_cert(ALICE, "PEM-X")
    assert err.value.kind is Kind.ALREADY_EXISTS
    assert store.registered_key(ALICE) == "PEM-A"
    assert store.registered_key(BOB) is None


def test_result_key_lineage_atomic(store: Database) -> None:
    a, b, res = uid(), uid(), uid()
    store.create_data_keys(ALICE, [nk(a)])
    store.create_data_keys(BOB, [nk(b)])
    store.put_policy(ALICE, "s", a, [RULE])
    # missing ancestor policy: nothing stored
    with pytest.raises(CMError) as err:
        store.create_result_key("", nk(res), "s", [a, b], derive_result_policy, anyone)
    assert err.value.kind is Kind.NOT_FOUND
    assert store.data_info(res) is None and store.get_keys([res]) == {}
    store.put_policy(BOB, "s", b, [RULE])
    store.create_result_key("", nk(res), "s", [a, b], derive_result_policy, anyone)
    info = store.data_info(res)
    assert info is not None and info.parents == (a, b)
    p = store.get_policy("s", res)
    assert p is not None and p.rules[0].columns == ("*",) and p.rules[0].rule_id == ""
    assert store.original_owners(res) == {ALICE, BOB}
    # the identical registration again: a retry, nothing changes
    assert not store.create_result_key("", nk(res), "s", [b, a], derive_result_policy, anyone)
    assert store.get_policy("s", res) == p
    # anything else under the same data_uuid: refused
    for other in (
        lambda: store.create_result_key("", nk(res), "s", [a], derive_result_policy, anyone),
        lambda: store.create_result_key(
            "", nk(res, "AQEBAQEBAQEBAQEBAQEBAQ=="), "s", [a, b], derive_result_policy, anyone
        ),
        lambda: store.create_result_key(ALICE, nk(res), "s", [a, b], derive_result_policy, anyone),
        lambda: store.create_result_key(
            "", nk(f"{res}/part2"), "s", [a, b], derive_result_policy, anyone
        ),
        # the same registration in another scope (its policy would be missing there)
        lambda: store.create_result_key("", nk(res), "t", [a, b], derive_result_policy, anyone),
    ):
        with pytest.raises(CMError) as err:
            other()
        assert err.value.kind is Kind.ALREADY_EXISTS
    assert store.get_policy("s", res) == p and store.get_keys([f"{res}/part2"]) == {}


def test_result_key_ancestors_checked_in_the_transaction(store: Database) -> None:
    a, b = uid(), uid()
    store.create_data_keys(ALICE, [nk(a)])
    store.put_policy(ALICE, "s", a, [RULE])
    store.create_data_keys(BOB, [nk(b)])
    store.put_policy(BOB, "s", b, [])
    seen: list[tuple[str, object]] = []

    def only_a(uuid: str, rules: object) -> bool:
        seen.append((uuid, rules))
        return uuid == a

    res = uid()
    with pytest.raises(CMError, match=f"ancestor {b}") as err:
        store.create_result_key("", nk(res), "s", [a, b], derive_result_policy, only_a)
    assert err.value.kind is Kind.PERMISSION_DENIED
    assert seen == [(a, (RULE,)), (b, ())]
    assert store.data_info(res) is None and store.get_keys([res]) == {}


def test_result_key_cannot_enter_original_data(store: Database) -> None:
    a = uid()
    store.create_data_keys(ALICE, [nk(a)])
    store.put_policy(ALICE, "s", a, [RULE])
    with pytest.raises(CMError, match="not result data"):  # even claiming alice as owner
        store.create_result_key(ALICE, nk(f"{a}/result"), "s", [a], derive_result_policy, anyone)
    policy = store.get_policy("s", a)
    assert policy is not None and policy.rules == (RULE,)
    assert store.get_keys([f"{a}/result"]) == {}


def test_original_owners_missing_record(store: Database) -> None:
    with pytest.raises(CMError, match="has be not stored"):
        store.original_owners(uid())


def test_concurrent_first_writers_one_owner(store: Database) -> None:
    u = uid()
    outcomes: list[str] = []

    def write(owner: str) -> None:
        try:
            store.create_data_keys(owner, [nk(u)])
            outcomes.append(owner)
        except CMError:
            outcomes.append("refused")

    threads = [threading.Thread(target=write, args=(o,)) for o in (ALICE, BOB) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    info = store.data_info(u)
    assert info is not None
    assert outcomes.count(info.owner_party_id) == 4 and outcomes.count("refused") == 4


def test_restart_keeps_everything(db_url: str, key: bytes) -> None:
    u = uid()
    first = Database(db_url, Sealer(key))
    from trustflow_core.roles.capsule_manager.db_models import Base

    Base.metadata.drop_all(first._write_engine)
    first.create_schema()
    first.create_data_keys(ALICE, [nk(u, "a2V5MQ==")])
    first.put_policy(ALICE, "default", u, [RULE])
    first.close()
    second = Database(db_url, Sealer(key))
    second.create_schema()
    assert second.get_keys([u]) == {u: "a2V5MQ=="}
    p = second.get_policy("default", u)
    assert p is not None and p.rules == (RULE,)
    second.close()


def test_survives_dropped_server_connections(store: Database, db_url: str) -> None:
    """Pooled connections killed by the server (restart, idle timeout) are replaced."""
    if not db_url.startswith("postgresql"):
        pytest.skip("server-side connection kill is exercised on PostgreSQL")
    from trustflow_core.testing.databases import admin_url

    u = uid()
    store.create_data_keys(ALICE, [nk(u)])
    store.put_policy(ALICE, "s", u, [RULE])
    database = db_url.rsplit("/", 1)[1]
    admin = create_engine(admin_url("postgresql"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
            {"d": database},
        )
    admin.dispose()
    view, sealed = store.access_view("s", [u], [u])
    assert view[u][1] is not None and sealed.open(u)
    store.create_data_keys(ALICE, [nk(f"{u}/p")])
    assert store.get_policy("s", u) is not None


def test_read_survives_a_restart_that_dropped_every_pooled_connection(
    store: Database, db_url: str
) -> None:
    """A database restart or failover drops all pooled connections at once: GetDataKeys' read
    (on the DB-API cursor) replaces them all, not just the one it found dead (with four dead
    connections in the pool, retrying once on the next pooled one failed)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("server-side connection kill is exercised on PostgreSQL")
    from trustflow_core.testing.databases import admin_url

    u = uid()
    store.create_data_keys(ALICE, [nk(u)])
    store.put_policy(ALICE, "s", u, [RULE])
    held = [store._read_engine.raw_connection() for _ in range(4)]
    for pooled in held:
        pooled.close()  # four connections in the pool
    database = db_url.rsplit("/", 1)[1]
    admin = create_engine(admin_url("postgresql"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
            {"d": database},
        )
    admin.dispose()
    for _ in range(3):
        view, sealed = store.access_view("s", [u], [u])
        assert view[u][1] is not None and sealed.open(u)


def test_storage_key_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "storage.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(path) == key
    path.write_text("not base64!")
    with pytest.raises(ValueError, match="base64"):
        load_or_create_key(path)
    assert "hidden" in repr(Sealer(key))


def test_throwaway_databases_are_dropped(tmp_path: Path) -> None:
    from trustflow_core.testing.databases import admin_url

    with throwaway_database("postgresql") as url:
        name = url.rsplit("/", 1)[1]
    engine = create_engine(admin_url("postgresql"))
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        assert rows.first() is None
    engine.dispose()
