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


def append_batch(engine: Engine, log: AuditLog, batch: Batch) -> list[bool]:
    """Append the drafts of every decision in ``batch`` whose read set holds, in one
    transaction; return which did (see :meth:`.database.Database._append_audit`). None of
    ``batch`` may be ``limited``. Raise :class:`DriverError` on a driver error (rolled back)."""
    dialect = engine.dialect
    ph = "?" if dialect.paramstyle == "qmark" else "%s"
    sqlite = dialect.name == "sqlite"
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            if sqlite:
                cursor.execute("BEGIN IMMEDIATE")
            uuids = sorted({u for _, read in batch if read for u in read})
            if dialect.name == "postgresql":
                done = _size_first(cursor, log, batch, uuids)
                if done is not None:
                    connection.commit()
                    return done
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
            if drafts:
                _insert(cursor, log, drafts, ph, bool(dialect.update_returning))
            if sqlite:
                cursor.execute("COMMIT")
            else:
                connection.commit()
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
        finally:
            with contextlib.suppress(dialect.loaded_dbapi.Error):
                cursor.close()
    finally:
        connection.close()


def _size_first(cur: Any, log: AuditLog, batch: Batch, uuids: Sequence[str]) -> list[bool] | None:
    """PostgreSQL (READ COMMITTED): take the size row's lock first, growing it by every draft
    of the batch, then read the revisions with a plain ``SELECT``. Its snapshot is taken
    after the lock was granted, and every owner mutation bumps its revisions before it
    appends (takes the same lock), so the ``SELECT`` sees every mutation committed before
    this append and none can commit before it: the same serialization as a share lock on
    the records, without writing a row lock into each record's tuple per batch. The drafts
    of decisions that no longer hold are taken back off the size. None (nothing written
    but a no-op update): there is no size row yet (the caller's path creates it)."""
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
    return accepted


def _insert(
    cur: Any, log: AuditLog, drafts: Sequence[AuditDraft], ph: str, returning: bool
) -> None:
    """Grow the size row (first: it orders concurrent appends), then insert the entries."""
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
