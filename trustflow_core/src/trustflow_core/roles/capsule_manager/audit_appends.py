"""The group commit's append transaction (docs/audit.md) on the driver's DB-API connection.

Every key release ends in one: check the read sets of the batch's decisions (the revisions of
their data records, under a share lock), grow the size row, insert the entries, commit.
Through SQLAlchemy Core these statements cost about 100 µs of CPU each on SQLite, more than
the database's own work; as plain SQL on a pooled DB-API cursor a few µs (the same approach
as :mod:`.access_reads`). Batches holding refusals (whose limits,
:class:`~.audit_log.RefusalLimiter`, are kept in SQL too) and owner mutations stay on
SQLAlchemy.

The SQL is written for the tables of :mod:`.db_models`; placeholders follow the driver's
paramstyle. SQLite transactions start with ``BEGIN IMMEDIATE`` (its connections run with
``isolation_level=None``); PostgreSQL (READ COMMITTED) and MariaDB begin implicitly.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.pool import PoolProxiedConnection

from ...errors import TrustflowError
from .audit_log import AuditDraft, AuditLog

Batch = Sequence[tuple[Sequence[AuditDraft], Mapping[str, int] | None]]


class DriverError(TrustflowError):
    """A driver error in an append (``__cause__``); ``retry``: a race or a lock timeout
    worth another attempt; ``disconnected``: the pooled connection was dead (invalidated)."""

    def __init__(self, retry: bool, disconnected: bool) -> None:
        super().__init__("audit append failed")
        self.retry = retry
        self.disconnected = disconnected


_RETRYABLE = ("deadlock", "database is locked", "could not serialize", "lock wait timeout")


_REVISIONS = (
    "SELECT data_uuid, revision FROM cm_data WHERE data_uuid IN (:uuids) ORDER BY data_uuid"
)
#: MariaDB reads the revisions under a share lock before it takes the size row's lock
#: (PostgreSQL: :func:`_size_first`; SQLite: its writer lock serializes everything).
_SHARE_LOCK = {"mysql": " LOCK IN SHARE MODE"}
_GROW_RETURNING = "UPDATE cm_audit_size SET size = size + ? WHERE id = 1 RETURNING size"
_GROW = "UPDATE cm_audit_size SET size = size + ? WHERE id = 1"
_SIZE = "SELECT size FROM cm_audit_size WHERE id = 1"
_SHRINK = "UPDATE cm_audit_size SET size = size - ? WHERE id = 1"
_FIRST_SIZE = "INSERT INTO cm_audit_size (id, size) VALUES (1, ?)"
_INSERT = (
    "INSERT INTO cm_audit (idx, owner_party_id, data_uuid, time_ms, entry_json, mac) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


@functools.lru_cache(maxsize=64)
def _sql(statement: str, placeholder: str, count: int = 0, lock: str = "") -> str:
    """``statement`` in the driver's paramstyle, ``(:uuids)`` expanded to ``count``
    placeholders, ``lock`` appended. Only placeholders are interpolated."""
    if count:
        statement = statement.replace(":uuids", ", ".join(["?"] * count))
    return statement.replace("?", placeholder) + lock


def append_batch(
    engine: Engine, log: AuditLog, batch: Batch, kept: PoolProxiedConnection | None = None
) -> list[bool]:
    """Append the drafts of every decision in ``batch`` whose read set holds, in one
    transaction; return which did (see :meth:`.database.Database._append_audit`). None of
    ``batch`` may be ``limited``. Raise :class:`DriverError` on a driver error (rolled back;
    a dead connection is invalidated, ``kept`` too: the caller drops it). ``kept``: a pooled
    connection the caller holds for its appends (not returned to the pool here); else one is
    checked out for this call."""
    dialect = engine.dialect
    ph = "?" if dialect.paramstyle == "qmark" else "%s"
    sqlite = dialect.name == "sqlite"
    connection = engine.raw_connection() if kept is None else kept
    try:
        cursor = connection.cursor()
        try:
            if sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            uuids = sorted({u for _, read in batch if read for u in read})
            if dialect.name == "postgresql":
                if _one_statement(connection.driver_connection, cursor, log, batch):
                    return [True] * len(batch)
                done = _size_first(cursor, log, batch, uuids)
                if done is not None:
                    connection.commit()
                    log.size_hint = done[1]
                    return done[0]
            current: dict[str, int] = {}
            if uuids:
                lock = _SHARE_LOCK.get(dialect.name, "")
                cursor.execute(_sql(_REVISIONS, ph, len(uuids), lock), uuids)
                current = {u: rev for u, rev in cursor.fetchall()}
            accepted = [
                read is None or all(current.get(u) == rev for u, rev in read.items())
                for _, read in batch
            ]
            drafts = [d for (ds, _), ok in zip(batch, accepted, strict=True) if ok for d in ds]
            end = (
                _insert(cursor, log, drafts, ph, bool(dialect.update_returning)) if drafts else None
            )
            if sqlite:
                cursor.execute("COMMIT")
            else:
                connection.commit()
            if end is not None:
                log.size_hint = end
            return accepted
        except dialect.loaded_dbapi.Error as exc:
            with contextlib.suppress(dialect.loaded_dbapi.Error):
                if sqlite:
                    cursor.execute("ROLLBACK")
                else:
                    connection.rollback()
            if dialect.is_disconnect(exc, connection.driver_connection, cursor):
                # as SQLAlchemy does for its own statements: this connection and every pooled
                # one opened before it (a restarted server dropped them all) are replaced
                engine.pool._invalidate(connection, exc)
                raise DriverError(True, True) from exc
            text = str(exc).lower()
            retry = isinstance(exc, dialect.loaded_dbapi.IntegrityError) or any(
                s in text for s in _RETRYABLE
            )
            raise DriverError(retry, False) from exc
        except BaseException:  # not the driver's: nothing stays open on a kept connection
            with contextlib.suppress(dialect.loaded_dbapi.Error):
                if sqlite:
                    cursor.execute("ROLLBACK")
                else:
                    connection.rollback()
            raise
        finally:
            with contextlib.suppress(dialect.loaded_dbapi.Error):
                cursor.close()
    finally:
        if kept is None:
            connection.close()


#: PostgreSQL: a whole append in one statement, run in autocommit (its own transaction, committed
#: before the server answers): the entries at the indexes ``start`` ... the caller expects, if
#: the size row still holds ``start`` and every ``(data_uuid, revision)`` read still holds.
#: Scalar placeholders (psycopg adapts lists into arrays at several times their cost).
_ONE_GROW = """
WITH grown AS (
    UPDATE cm_audit_size SET size = size + %s WHERE id = 1 AND size = %s{holds}
    RETURNING size
)
INSERT INTO cm_audit (idx, owner_party_id, data_uuid, time_ms, entry_json, mac)
SELECT * FROM (VALUES {rows}) AS e WHERE EXISTS (SELECT FROM grown)
"""
_ONE_HOLDS = (
    " AND (SELECT count(*) FROM cm_data WHERE (data_uuid, revision) IN ({pairs})) = {count}"
)
_ONE_ROW = "(%s::bigint, %s, %s, %s::bigint, %s, %s::bytea)"


@functools.lru_cache(maxsize=64)
def _one_statement_sql(entries: int, pairs: int) -> str:
    """:data:`_ONE_GROW` for ``entries`` rows and ``pairs`` read ``(data_uuid, revision)``
    (only placeholders and counts are interpolated)."""
    holds = ""
    if pairs:
        holds = _ONE_HOLDS.format(pairs=", ".join(["(%s, %s::bigint)"] * pairs), count=pairs)
    return _ONE_GROW.format(holds=holds, rows=", ".join([_ONE_ROW] * entries))


#: Batches that take the general path after the one statement wrote nothing: when several
#: processes append (``--workers``, replicas), the size this process expects is often stale,
#: and each miss costs a round trip before the general path.
PAUSE_AFTER_MISS = 16


def _one_statement(driver: Any, cur: Any, log: AuditLog, batch: Batch) -> bool:
    """PostgreSQL: append every draft of ``batch`` in ONE round trip, at the indexes from
    ``log.size_hint`` (the size this process last wrote or read), if every decision's read
    set holds; False when nothing was written (no hint, a wrong hint -- another process or
    transaction appended meanwhile --, or a read set that changed: the caller takes the
    general path, which finds out which; the next :data:`PAUSE_AFTER_MISS` batches take it
    directly).

    The statement's snapshot is taken before it waits for the size row's lock, but it is
    enough: it commits only if the size row still holds ``start`` both in that snapshot and
    once locked, and an owner mutation bumps its revisions and appends at least one entry in
    one transaction, and no append shrinks the log, so a mutation that committed after the
    snapshot has grown the size and the statement writes nothing; one that committed before
    it has its revision read; one not committed yet appends after these entries (it needs
    the size row). Runs in autocommit, so the entries are committed (and durable) when
    ``execute`` returns."""
    start = log.size_hint
    if start is None:
        return False
    if log.one_statement_paused:
        log.one_statement_paused -= 1
        return False
    pairs = {(u, rev) for _, read in batch if read for u, rev in read.items()}
    drafts = [d for ds, _ in batch for d in ds]
    params: list[Any] = [len(drafts), start]
    for pair in pairs:
        params += pair
    for row in log.rows(drafts, start, log.now_ms()):
        params += row
    log.size_hint = None  # until this statement tells (an error: the general path learns it)
    driver.autocommit = True
    try:
        cur.execute(_one_statement_sql(len(drafts), len(pairs)), params)
    finally:
        driver.autocommit = False
    if cur.rowcount != len(drafts):
        log.one_statement_paused = PAUSE_AFTER_MISS
        return False
    log.size_hint = start + len(drafts)
    return True


def _size_first(
    cur: Any, log: AuditLog, batch: Batch, uuids: Sequence[str]
) -> tuple[list[bool], int] | None:
    """PostgreSQL (READ COMMITTED): take the size row's lock first, growing it by every draft
    of the batch, then read the revisions with a plain ``SELECT``. Its snapshot is taken
    after the lock was granted, and every owner mutation bumps its revisions before it
    appends (takes the same lock), so the ``SELECT`` sees every mutation committed before
    this append and none can commit before it: the same serialization as a share lock on
    the records, without writing a row lock into each record's tuple per batch. The drafts
    of decisions that no longer hold are taken back off the size. None (nothing written
    but a no-op update): there is no size row yet (the caller's path creates it); else which
    decisions were appended and the log's size after them."""
    drafts = [d for ds, _ in batch for d in ds]
    cur.execute(_sql(_GROW_RETURNING, "%s"), (len(drafts),))
    row = cur.fetchone()
    if row is None:
        return None
    end = row[0]
    current: dict[str, int] = {}
    if uuids:
        cur.execute(_sql(_REVISIONS, "%s", len(uuids)), list(uuids))
        current = {u: rev for u, rev in cur.fetchall()}
    accepted = [
        read is None or all(current.get(u) == rev for u, rev in read.items()) for _, read in batch
    ]
    kept = [d for (ds, _), ok in zip(batch, accepted, strict=True) if ok for d in ds]
    if len(kept) < len(drafts):
        cur.execute(_sql(_SHRINK, "%s"), (len(drafts) - len(kept),))
        end -= len(drafts) - len(kept)
    if kept:
        cur.executemany(_sql(_INSERT, "%s"), log.rows(kept, end - len(kept), log.now_ms()))
    return accepted, end


def _insert(cur: Any, log: AuditLog, drafts: Sequence[AuditDraft], ph: str, returning: bool) -> int:
    """Grow the size row (first: it orders concurrent appends), then insert the entries;
    return the log's size after them."""
    n = len(drafts)
    end = None
    if returning:
        cur.execute(_sql(_GROW_RETURNING, ph), (n,))
        row = cur.fetchone()
        end = None if row is None else row[0]
    else:
        cur.execute(_sql(_GROW, ph), (n,))
        if cur.rowcount:
            cur.execute(_SIZE)
            end = cur.fetchone()[0]
    if end is None:  # the first append ever (two at once: one fails on the key, retried)
        cur.execute(_sql(_FIRST_SIZE, ph), (n,))
        end = n
    cur.executemany(_sql(_INSERT, ph), log.rows(drafts, end - n, log.now_ms()))
    return end
