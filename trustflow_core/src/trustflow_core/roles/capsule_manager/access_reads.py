"""The hottest read of the Capsule Manager, on the driver's DB-API connection directly.

Every GetDataKeys (and GetTlsAsset) reads, in one read transaction: the data records of the
requested ``data_uuid`` s, their policies in the request's scope with the rules in order, and
the sealed keys of the requested resource URIs. Through SQLAlchemy Core these three SELECTs
cost about 300 µs of CPU per request on SQLite; as plain SQL on a pooled DB-API cursor, about
25 µs (both measured with the same statements). Everything else in the store stays on
SQLAlchemy.

The SQL is written for the tables of :mod:`.db_models` (``tests`` run it on SQLite,
PostgreSQL and MariaDB); placeholders follow the driver's paramstyle (``?`` for sqlite3,
``%s`` for psycopg and PyMySQL). A pooled connection that the server closed (restart, idle
timeout, a failover) is invalidated together with the pooled connections opened before it,
and the read is run once more on a fresh one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from ...errors import TrustflowError

Row = tuple[Any, ...]


@functools.lru_cache(maxsize=256)
def _statements(placeholder: str, uuid_count: int, uri_count: int) -> tuple[str, str, str]:
    """The three SELECTs for that many uuids and uris. Only placeholders are interpolated
    the values always travel as parameters."""
    uuids = ", ".join([placeholder] * uuid_count)
    uris = ", ".join([placeholder] * uri_count)
    records = "SELECT data_uuid, owner_party_id, parents_json, revision FROM cm_data"
    policies = (
        "SELECT p.id, p.data_uuid, p.owner_party_id, r.body_json FROM cm_policies p "
        "LEFT OUTER JOIN cm_rules r ON r.policy_id = p.id"
    )
    keys = "SELECT resource_uri, nonce, sealed_key FROM cm_data_keys"
    return (
        f"{records} WHERE data_uuid IN ({uuids})",
        f"{policies} WHERE p.scope = {placeholder} AND p.data_uuid IN ({uuids})"
        " ORDER BY p.id, r.id",
        f"{keys} WHERE resource_uri IN ({uris})",
    )


class _Disconnected(TrustflowError):
    """The pooled connection was dead; it has been invalidated (``__cause__``: the error)."""


def read_access_rows(
    engine: Engine, scope: str, uuids: Sequence[str], uris: Sequence[str]
) -> tuple[list[Row], list[Row], list[Row]]:
    """``(records, policy rows, key rows)`` for ``uuids`` in ``scope`` and ``uris``:

    * records: ``(data_uuid, owner_party_id, parents_json, revision)`` (read first: whatever
      the later SELECTs see is at least as new as this revision);
    * policy rows: ``(policy id, data_uuid, owner_party_id, rule body_json or None)``,
      ordered by policy, then rule insertion order;
    * key rows: ``(resource_uri, nonce, sealed_key)`` (bytes-like; empty when ``uris`` is).

    ``uuids`` must not be empty. Driver errors (other than one dead pooled connection)
    propagate as the driver raised them.
    """
    try:
        return _read(engine, scope, uuids, uris)
    except _Disconnected:
        pass
    try:
        return _read(engine, scope, uuids, uris)
    except _Disconnected as exc:
        raise exc.__cause__ from None  # type: ignore[misc]


def _read(
    engine: Engine, scope: str, uuids: Sequence[str], uris: Sequence[str]
) -> tuple[list[Row], list[Row], list[Row]]:
    dialect = engine.dialect
    placeholder = "?" if dialect.paramstyle == "qmark" else "%s"
    records_sql, policies_sql, keys_sql = _statements(placeholder, len(uuids), len(uris))
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            if dialect.name == "sqlite":  # its connections run with isolation_level=None
                cursor.execute("BEGIN")
            cursor.execute(records_sql, tuple(uuids))
            records = list(cursor.fetchall())
            cursor.execute(policies_sql, (scope, *uuids))
            policies = list(cursor.fetchall())
            keys: list[Row] = []
            if uris:
                cursor.execute(keys_sql, tuple(uris))
                keys = list(cursor.fetchall())
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, connection.driver_connection, cursor):
                # as SQLAlchemy does for its own statements: this connection, and every pooled
                # one opened before it (a restarted or failed-over server dropped them all),
                # is replaced at its next checkout
                engine.pool._invalidate(connection, exc)
                raise _Disconnected from exc
            raise
        finally:
            with contextlib.suppress(dialect.loaded_dbapi.Error):
                cursor.close()
        connection.rollback()  # read only: this ends the snapshot
        return records, policies, keys
    finally:
        connection.close()  # back to the pool (or discarded, when invalidated)
