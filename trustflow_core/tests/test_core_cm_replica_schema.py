"""Capsule Manager replicas starting together on one fresh database (issue 16, "schema changes
safe with replicas starting together"): :meth:`Database.create_schema` runs under a
database-wide lock (``pg_advisory_lock`` / ``GET_LOCK``), so exactly one replica creates or
migrates the schema and writes the storage-key check value, and every replica comes up.

Without the lock, three concurrent ``create_schema`` calls on a fresh PostgreSQL database fail
(``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``), on MariaDB
(``Table ... already exists``): :func:`test_concurrent_create_schema` shows the race, and
:func:`test_three_cm_processes_start_together` failed without the lock in every run tried
(on PostgreSQL, sometimes on MariaDB too)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from trustflow_core.harness.replicas import shared_identity, unreachable
from trustflow_core.roles.capsule_manager.database import Database, schema_lock
from trustflow_core.roles.capsule_manager.db_models import (
    SCHEMA_VERSION,
    AuditEntryRow,
    AuditHeadRow,
    AuditSizeRow,
    Base,
)
from trustflow_core.roles.capsule_manager.sealing import Sealer
from trustflow_core.roles.capsule_manager_protocol.errors import CMError
from trustflow_core.testing.databases import throwaway_database
from trustflow_core.testing.processes import RoleProcess

SERVERS = ["postgresql", "mysql"]
REPLICAS = 3


def reachable_or_skip(kind: str) -> None:
    """Skip the test (with the reason) when the database server of ``kind`` cannot be used."""
    reason = unreachable(kind)
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(params=SERVERS)
def fresh_url(request: pytest.FixtureRequest) -> Iterator[str]:
    reachable_or_skip(request.param)
    with throwaway_database(request.param) as url:
        yield url


def together(calls: list[Callable[[], None]]) -> list[BaseException]:
    """Run ``calls`` in threads released at the same moment; the exceptions they raised."""
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call: Callable[[], None]) -> None:
        barrier.wait()
        try:
            call()
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def assert_single_meta(url: str) -> None:
    """One schema version row and one storage-key check value (each meta row once)."""
    rows = dict(meta_rows(url))
    assert {"schema_version", "storage_key_check"} <= set(rows), rows
    assert set(rows.values()) == {1}, rows


def meta_rows(url: str) -> list[tuple[str, int]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT name, COUNT(*) FROM cm_meta GROUP BY name ORDER BY name")
            ).all()
            return [(name, int(count)) for name, count in rows]
    finally:
        engine.dispose()


def version(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                text("SELECT value FROM cm_meta WHERE name = 'schema_version'")
            ).scalar_one()
            return bytes(value).decode()
    finally:
        engine.dispose()


def start_together(url: str, key: bytes) -> None:
    stores = [Database(url, Sealer(key)) for _ in range(REPLICAS)]
    try:
        errors = together([s.create_schema for s in stores])
        assert errors == [], [str(e).splitlines()[0] for e in errors]
    finally:
        for s in stores:
            s.close()


def test_concurrent_create_schema(fresh_url: str) -> None:
    """Three replicas create the schema of a fresh database at once: all succeed, one check
    value, every table there (fails without the schema lock)."""
    key = os.urandom(32)
    start_together(fresh_url, key)
    assert_single_meta(fresh_url)
    assert version(fresh_url) == SCHEMA_VERSION
    engine = create_engine(fresh_url)
    try:
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    # and the check value is the one of this storage key: a replica with another key is refused
    other = Database(fresh_url, Sealer(os.urandom(32)))
    try:
        with pytest.raises(CMError, match="different storage key"):
            other.create_schema()
    finally:
        other.close()


def test_concurrent_migration(fresh_url: str) -> None:
    """Three replicas of the new version start together on a schema-2 database: it is
    migrated once to the current version and all of them start."""
    key = os.urandom(32)
    first = Database(fresh_url, Sealer(key))
    try:
        first.create_schema()
        with first._write_engine.begin() as conn:
            for model in (AuditHeadRow, AuditSizeRow, AuditEntryRow):
                model.__table__.drop(conn)  # type: ignore[attr-defined]
            conn.execute(
                text("UPDATE cm_meta SET value = :v WHERE name = 'schema_version'"), {"v": b"2"}
            )
    finally:
        first.close()
    start_together(fresh_url, key)
    assert version(fresh_url) == SCHEMA_VERSION
    assert_single_meta(fresh_url)
    engine = create_engine(fresh_url)
    try:
        assert inspect(engine).has_table(AuditEntryRow.__tablename__)
    finally:
        engine.dispose()


def test_schema_lock_wait_is_bounded(fresh_url: str) -> None:
    """A replica that cannot get the lock (another one holds it) gives up with a clear error."""
    holder = Database(fresh_url, Sealer(os.urandom(32)))
    waiter = Database(fresh_url, Sealer(os.urandom(32)))
    try:
        with (
            schema_lock(holder._write_engine),
            pytest.raises(CMError, match="schema lock was not obtained in 1 s"),
            schema_lock(waiter._write_engine, timeout=1),
        ):
            pass
        with schema_lock(waiter._write_engine, timeout=1):  # free again
            pass
    finally:
        holder.close()
        waiter.close()


def test_three_cm_processes_start_together(
    fresh_url: str, sim_env: dict[str, str], tmp_path: Path
) -> None:
    """Three ``trustflow capsule-manager`` processes started at once on one fresh database all
    become ready; the database has one schema and one check value."""
    shared = shared_identity(tmp_path)
    procs = []
    try:
        for i in range(REPLICAS):
            data_dir = tmp_path / f"cm{i}"
            procs.append(
                RoleProcess(
                    sim_env,
                    tmp_path / f"cm{i}.stderr",
                    "capsule-manager",
                    *("--plat", "sim", "--port", "0", "--data-dir", str(data_dir)),
                    *("--storage-url", fresh_url, *shared),
                )
            )
        for p in procs:
            p.wait_listening()
    finally:
        for p in procs:
            p.stop()
    assert_single_meta(fresh_url)
