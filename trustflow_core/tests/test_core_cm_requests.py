"""Capsule Manager store: recorded owner requests (replay protection) and the schema migration
1 -> 2, on SQLite, PostgreSQL and MariaDB; the freshness-claim checks."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from trustflow_core.errors import InvalidInput
from trustflow_core.roles.capsule_manager import identity_keys
from trustflow_core.roles.capsule_manager.audit_log import AuditLog, mac_key
from trustflow_core.roles.capsule_manager.database import Database, NewKey
from trustflow_core.roles.capsule_manager.db_models import (
    SCHEMA_VERSION,
    AuditEntryRow,
    AuditHeadRow,
    AuditRefusalBucket,
    AuditSizeRow,
    Base,
    RequestRow,
)
from trustflow_core.roles.capsule_manager.policy import OpConstraint, Rule
from trustflow_core.roles.capsule_manager.sealing import Sealer
from trustflow_core.roles.capsule_manager.settings import load_settings
from trustflow_core.roles.capsule_manager_protocol.errors import CMError, Kind
from trustflow_core.roles.capsule_manager_protocol.freshness import (
    FreshnessWindow,
    RequestMark,
    check_claims,
    request_digest,
)

ALICE, BOB = "A" * 52, "B" * 52
DATA = Path(__file__).parent / "data"
#: The storage key of data/cm_schema_v1.db, written by the schema-1 Capsule Manager.
V1_STORAGE_KEY = bytes(range(32))


def rule(rule_id: str, grantee: str = BOB) -> Rule:
    return Rule(rule_id, (grantee,), (OpConstraint("psi", ("r.op_name == 'psi'",)),), ("*",), ())


def mark(party: str = ALICE, jti: str | None = None) -> RequestMark:
    return RequestMark(request_digest(os.urandom(12), os.urandom(16), os.urandom(40)), party, jti)


def uid() -> str:
    return "d-" + os.urandom(6).hex()


@pytest.fixture
def store(db_url: str, key: bytes) -> Iterator[Database]:
    s = Database(db_url, Sealer(key))
    Base.metadata.drop_all(s._write_engine)
    s.create_schema()
    yield s
    s.close()


def rule_ids(store: Database, uuid: str) -> list[str]:
    policy = store.get_policy("default", uuid)
    return [] if policy is None else [r.rule_id for r in policy.rules]


# ---- recorded requests ----------------------------------------------------------------------


def test_recorded_request_applies_once(store: Database) -> None:
    u = uid()
    store.create_data_keys(ALICE, [NewKey(u, u, "a2V5MQ==")], mark())
    put = mark()
    store.put_policy(ALICE, "default", u, [rule("old")], put)
    store.put_policy(ALICE, "default", u, [rule("new")], mark())
    store.put_policy(ALICE, "default", u, [rule("old")], put)  # the replay: no effect
    assert rule_ids(store, u) == ["new"]
    delete = mark()
    store.delete_data_key(ALICE, u, u, delete)
    store.create_data_keys(ALICE, [NewKey(u, u, "a2V5Mg==")], mark())
    store.delete_data_key(ALICE, u, u, delete)
    assert store.get_keys([u]) == {u: "a2V5Mg=="}
    delete_rule = mark()
    store.delete_rule(ALICE, "default", u, "new", delete_rule)
    store.add_rule(ALICE, "default", u, rule("new"))
    store.delete_rule(ALICE, "default", u, "new", delete_rule)
    assert rule_ids(store, u) == ["new"]
    delete_policy = mark()
    store.delete_policy(ALICE, "default", u, delete_policy)
    store.put_policy(ALICE, "default", u, [rule("again")])
    store.delete_policy(ALICE, "default", u, delete_policy)
    assert rule_ids(store, u) == ["again"]


def test_refused_request_is_not_recorded(store: Database) -> None:
    u = uid()
    store.create_data_keys(ALICE, [NewKey(u, u, "a2V5MQ==")])
    m = mark(BOB)
    with pytest.raises(CMError, match="party_id"):
        store.put_policy(BOB, "default", u, [rule("r")], m)
    with store._read_engine.connect() as conn:
        digests = conn.execute(text("SELECT digest FROM cm_requests")).scalars().all()
    assert m.digest not in digests


def test_jti_is_single_use_per_party(store: Database) -> None:
    u, v = uid(), uid()
    store.create_data_keys(ALICE, [NewKey(u, u, "a2V5MQ==")], mark(ALICE, "j-1"))
    with pytest.raises(CMError) as err:
        store.create_data_keys(ALICE, [NewKey(v, v, "a2V5MQ==")], mark(ALICE, "j-1"))
    assert err.value.kind is Kind.INVALID_ARGUMENT and "JWS header jti" in err.value.detail
    assert store.get_keys([v]) == {}
    store.create_data_keys(BOB, [NewKey(v, v, "a2V5MQ==")], mark(BOB, "j-1"))  # other party


def test_concurrent_identical_requests_apply_once(store: Database) -> None:
    u = uid()
    store.create_data_keys(ALICE, [NewKey(u, u, "a2V5MQ==")])
    store.put_policy(ALICE, "default", u, [rule("r0")])
    m = mark(ALICE, "j-concurrent")
    errors: list[Exception] = []
    barrier = threading.Barrier(8)

    def add() -> None:
        barrier.wait()
        try:
            store.add_rule(ALICE, "default", u, rule("r1"), m)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert rule_ids(store, u) == ["r0", "r1"]


# ---- schema 1 -> 2 --------------------------------------------------------------------------


def _stamp(store: Database, version: str) -> None:
    with store._write_engine.begin() as conn:
        conn.execute(
            text("UPDATE cm_meta SET value = :v WHERE name = 'schema_version'"),
            {"v": version.encode()},
        )


IDENTITY = identity_keys.generate()


def _version(store: Database) -> str:
    with store._read_engine.connect() as conn:
        value = conn.execute(
            text("SELECT value FROM cm_meta WHERE name = 'schema_version'")
        ).scalar_one()
    return bytes(value).decode()


def test_migrates_the_committed_v1_database(tmp_path: Path) -> None:
    """A database written by the schema-1 Capsule Manager (data/cm_schema_v1.db): migrated at
    start, its keys and policies intact, replay protection working."""
    db = tmp_path / "cm.db"
    shutil.copy(DATA / "cm_schema_v1.db", db)
    store = Database(f"sqlite:///{db}", Sealer(V1_STORAGE_KEY))
    try:
        assert _version(store) == "1"
        assert not inspect(store._write_engine).has_table(RequestRow.__tablename__)
        store.create_schema()
        assert _version(store) == SCHEMA_VERSION == "4"
        assert inspect(store._write_engine).has_table(AuditEntryRow.__tablename__)
        assert store.get_keys(["d-v1", "d-v1/p1"]) == {"d-v1": "a2V5MQ==", "d-v1/p1": "a2V5Mg=="}
        assert rule_ids(store, "d-v1") == ["r1"]
        m = mark()
        store.put_policy(ALICE, "default", "d-v1", [rule("r2")], m)
        store.put_policy(ALICE, "default", "d-v1", [rule("r3")])
        store.put_policy(ALICE, "default", "d-v1", [rule("r2")], m)
        assert rule_ids(store, "d-v1") == ["r3"]
    finally:
        store.close()


def test_migrates_a_v1_database(store: Database, db_url: str, key: bytes) -> None:
    """Schema 1 is schema 2 without ``cm_requests``: drop it, stamp 1, start again."""
    u = uid()
    store.create_data_keys(ALICE, [NewKey(u, u, "a2V5MQ==")])
    store.put_policy(ALICE, "default", u, [rule("r1")])
    table = RequestRow.__table__
    with store._write_engine.begin() as conn:
        table.drop(conn)  # type: ignore[attr-defined]
    _stamp(store, "1")
    again = Database(db_url, Sealer(key))
    try:
        again.create_schema()
        assert _version(again) == "4"
        assert inspect(again._write_engine).has_table(RequestRow.__tablename__)
        assert again.get_keys([u]) == {u: "a2V5MQ=="} and rule_ids(again, u) == ["r1"]
        m = mark(ALICE, "j-migrated")
        again.add_rule(ALICE, "default", u, rule("r2"), m)
        again.add_rule(ALICE, "default", u, rule("r2"), m)
        assert rule_ids(again, u) == ["r1", "r2"]
        again.create_schema()  # a second start: nothing to migrate
        assert _version(again) == "4"
    finally:
        again.close()


def test_migrates_a_v2_database(store: Database, db_url: str, key: bytes) -> None:
    """Schema 2 is schema 3 without the audit tables: drop them, stamp 2, start again; the
    audit log starts empty and works."""
    u = uid()
    store.create_data_keys(ALICE, [NewKey(u, u, "a2V5MQ==")])
    with store._write_engine.begin() as conn:
        for model in (AuditHeadRow, AuditSizeRow, AuditEntryRow):
            model.__table__.drop(conn)  # type: ignore[attr-defined]
    _stamp(store, "2")
    again = Database(db_url, Sealer(key))
    try:
        again.create_schema()
        assert _version(again) == "4"
        again.audit = AuditLog(IDENTITY.private_key, mac_key(key))
        again.put_policy(ALICE, "default", u, [rule("r1")])
        assert [e.index for e in again.audit_entries(ALICE, limit=10)] == [0]
        assert again.audit_tree_head().size == 1
    finally:
        again.close()


def test_migrates_a_v3_database(store: Database, db_url: str, key: bytes) -> None:
    """Schema 3 is schema 4 without ``cm_data.revision`` and ``cm_audit_refusals``: drop
    them, stamp 3, start again; the records keep their keys and policies, get revision 0,
    and owner mutations bump it."""
    u = uid()
    store.create_data_keys(ALICE, [NewKey(u, u, "a2V5MQ==")])
    store.put_policy(ALICE, "default", u, [rule("r1")])
    with store._write_engine.begin() as conn:
        AuditRefusalBucket.__table__.drop(conn)  # type: ignore[attr-defined]
        conn.execute(text("ALTER TABLE cm_data DROP COLUMN revision"))
    _stamp(store, "3")
    again = Database(db_url, Sealer(key))
    try:
        again.create_schema()
        assert _version(again) == "4"
        assert inspect(again._write_engine).has_table(AuditRefusalBucket.__tablename__)
        view, _ = again.access_view("default", [u])
        info, policy = view[u]
        assert info is not None and info.revision == 0
        assert policy is not None and [r.rule_id for r in policy.rules] == ["r1"]
        again.add_rule(ALICE, "default", u, rule("r2"))
        info, _ = again.access_view("default", [u])[0][u]
        assert info is not None and info.revision == 1
        again.create_schema()  # a second start: nothing to migrate
        assert _version(again) == "4"
    finally:
        again.close()


def test_newer_schema_refused(store: Database, db_url: str, key: bytes) -> None:
    _stamp(store, "5")
    other = Database(db_url, Sealer(key))
    try:
        with pytest.raises(CMError, match="schema version 5, this Capsule Manager needs 4"):
            other.create_schema()
    finally:
        other.close()
    assert _version(store) == "5"


# ---- claims ---------------------------------------------------------------------------------


def test_claims_window_edges() -> None:
    window = FreshnessWindow(max_future=300, max_age=600)
    now = time.time()
    assert check_claims({"alg": "RS256"}, window, now) is None
    assert check_claims({"iat": now + 300, "jti": "j"}, window, now) == "j"
    assert check_claims({"iat": now - 600}, window, now) is None
    for header, claim in (
        ({"iat": now + 301}, "iat"),
        ({"iat": now - 601}, "iat"),
        ({"iat": True}, "iat"),
        ({"iat": float("nan")}, "iat"),
        ({"iat": now, "jti": 5}, "jti"),
        ({"iat": now, "jti": "x" * 129}, "jti"),
        ({"jti": "j"}, "jti"),
    ):
        with pytest.raises(CMError) as err:
            check_claims(header, window, now)
        assert err.value.code == 3 and err.value.detail.startswith(f"JWS header {claim} ")


def test_digest_binds_each_part_and_its_length() -> None:
    iv, tag, ct = b"i" * 12, b"t" * 16, b"c" * 40
    base = request_digest(iv, tag, ct)
    assert request_digest(iv, tag, ct) == base
    assert request_digest(iv + b"t", tag[1:], ct) != base  # a moved boundary
    assert request_digest(iv, tag, ct + b"\0") != base


def test_window_from_config(tmp_path: Path) -> None:
    config = tmp_path / "cm.yaml"
    config.write_text("requests: {max_age_seconds: 60}\n")
    assert load_settings(config).freshness == FreshnessWindow(max_future=300, max_age=60)
    assert load_settings(None).freshness == FreshnessWindow(max_future=300, max_age=600)
    config.write_text("requests: {max_future_seconds: -1}\n")
    with pytest.raises(InvalidInput, match=r"requests\.max_future_seconds"):
        load_settings(config)
    config.write_text("requests: {max_age: 5}\n")
    with pytest.raises(InvalidInput, match="unknown key"):
        load_settings(config)
