"""Schema versions of the Capsule Manager store and the steps between them
(docs/capsule-manager.md, "Schema versions").

| version | change |
|---|---|
| 1 | ``cm_meta``, ``cm_certs``, ``cm_data``, ``cm_data_keys``, ``cm_policies``, ``cm_rules`` |
| 2 | + ``cm_requests`` (replay protection of owner requests) |
| 3 | + ``cm_audit``, ``cm_audit_size``, ``cm_audit_heads`` (the audit log, docs/audit.md) |
| 4 | + ``cm_data.revision`` (releases re-checked at append), ``cm_audit_refusals`` |

:func:`migrate` runs inside the caller's write transaction and stamps the new version there,
so on PostgreSQL and SQLite a migration applies completely or not at all. MySQL/MariaDB commit
DDL implicitly; every step is idempotent (``checkfirst``), so a start interrupted between a
step and the stamp repeats the step harmlessly.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Table, inspect, text
from sqlalchemy.orm import Session

from ...errors import TrustflowError
from .db_models import (
    SCHEMA_VERSION,
    AuditEntryRow,
    AuditHeadRow,
    AuditRefusalBucket,
    AuditSizeRow,
    DataRecord,
    Meta,
    RequestRow,
)


class SchemaMismatch(TrustflowError):
    """The database was created by an incompatible (unknown or newer) version."""


def _v1_to_v2(conn: Connection) -> None:
    table = RequestRow.__table__
    assert isinstance(table, Table)
    table.create(conn, checkfirst=True)


def _v2_to_v3(conn: Connection) -> None:
    for model in (AuditEntryRow, AuditSizeRow, AuditHeadRow):
        table = model.__table__
        assert isinstance(table, Table)
        table.create(conn, checkfirst=True)


def _v3_to_v4(conn: Connection) -> None:
    columns = {c["name"] for c in inspect(conn).get_columns(DataRecord.__tablename__)}
    if "revision" not in columns:
        conn.execute(
            text(f"ALTER TABLE {DataRecord.__tablename__} ADD revision BIGINT NOT NULL DEFAULT 0")
        )
    table = AuditRefusalBucket.__table__
    assert isinstance(table, Table)
    table.create(conn, checkfirst=True)


#: ``from version -> (step, to version)``.
STEPS: dict[str, tuple[Callable[[Connection], None], str]] = {
    "1": (_v1_to_v2, "2"),
    "2": (_v2_to_v3, "3"),
    "3": (_v3_to_v4, "4"),
}


def migrate(session: Session) -> str | None:
    """Bring the stamped database to :data:`SCHEMA_VERSION` in ``session``'s transaction.
    Return the version found (None for a database not stamped yet: nothing to migrate).
    Raise :class:`SchemaMismatch` for a version without a path to the current one."""
    row = session.get(Meta, "schema_version")
    if row is None:
        return None
    found = version = row.value.decode()
    while version != SCHEMA_VERSION:
        if version not in STEPS:
            raise SchemaMismatch(
                f"database schema version {found}, this Capsule Manager needs "
                f"{SCHEMA_VERSION} (no migration from {version})"
            )
        step, version = STEPS[version]
        step(session.connection())
    if version != found:
        row.value = version.encode()
    return found
