"""The Capsule Manager's SQL database: the transactional store of keys, policies and requests

URLs: ``sqlite:///<data dir>/cm.db`` (default), ``postgresql+psycopg://...``,
``mysql+pymysql://...``. The schema is created on start. Every mutating method runs in ONE
transaction: it either applies completely or not at all (a request killed mid-flight leaves
nothing half-written). Races between concurrent writers (two first inserts of the same row)
surface as integrity errors and the whole transaction is retried, so the checks (owner, already
exists) always see committed state. SQLite write transactions start with ``BEGIN IMMEDIATE``.
The owner mutations take an optional :class:`~.freshness.RequestMark`, recorded in the same
transaction as the effect; a request recorded before is not applied again (replay protection).

Ownership rules (sound where upstream is lax: docs/compat.md#data-owner-lookup,
docs/compat.md#policy-ownership, docs/compat.md#result-key-atomic,
docs/compat.md#create-keys-atomic):

* a data record (``data_uuid``) belongs to the party that first stored a key or a policy for
  it; nobody else may store or delete its keys, nor create, change or delete its policies;
* a result is registered once, under a new data_uuid, with ancestors whose policies release
  them to the registering app; its key is stored together with its derived policy, or not
  at all (:meth:`Database.create_result_key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.elements import BindParameter

from ...errors import TrustflowError
from .. import _metrics
from ..capsule_manager_protocol.audit import TreeHead
from ..capsule_manager_protocol.errors import CMError, Kind
from ..capsule_manager_protocol.freshness import RequestMark
from .access_reads import read_access_rows
from .audit_appends import DriverError, append_batch
from .audit_log import AuditDraft, AuditLog, GroupCommit, ReadSet, StoredEntry
from .db_models import (
    SCHEMA_VERSION,
    Base,
    Cert,
    DataKeyRow,
    DataRecord,
    Meta,
    PolicyRow,
    RequestRow,
    RuleRow,
)
from .migrations import SchemaMismatch, migrate
from .policy import Rule
from .sealing import Sealer
from .writer_lock import WriterLock

log = logging.getLogger(__name__)
T = TypeVar("T")
KEYS_TABLE = "cm_data_keys"
_CHECK_PLAINTEXT = b"trustflow-cm storage key check"
MAX_ATTEMPTS = 6
#: Seconds to wait for a database connection (server or pool).
CONNECT_TIMEOUT = 10
#: Seconds after which pooled connections are replaced.
POOL_RECYCLE = 1800
#: Seconds a starting replica waits for another one's schema creation or migration.
SCHEMA_LOCK_TIMEOUT = 120.0
#: The PostgreSQL advisory lock key of the schema (a fixed bigint: "tfcmschm").
SCHEMA_LOCK_KEY = int.from_bytes(b"tfcmschm", "big") - (1 << 63)
_PG_TRY_LOCK = text("SELECT pg_try_advisory_lock(:key)")
_PG_UNLOCK = text("SELECT pg_advisory_unlock(:key)")
_MY_DATABASE = text("SELECT DATABASE()")
_MY_GET_LOCK = text("SELECT GET_LOCK(:name, :wait)")
_MY_RELEASE_LOCK = text("SELECT RELEASE_LOCK(:name)")


@dataclass(frozen=True)
class StoredPolicy:
    data_uuid: str
    scope: str
    owner_party_id: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class DataInfo:
    data_uuid: str
    owner_party_id: str
    parents: tuple[str, ...]
    #: ``cm_data.revision`` when read (:meth:`Database.access_view`, :meth:`Database.data_info`).
    revision: int = 0


@dataclass(frozen=True)
class NewKey:
    resource_uri: str
    data_uuid: str
    data_key_b64: str

    def __repr__(self) -> str:
        return f"NewKey(resource_uri={self.resource_uri!r}, data_key_b64=<hidden>)"


IDENTITY_ROW = "cm_identity_cert"


class IdentityMismatch(TrustflowError):
    """The database records another CM identity than the one starting."""


def _check_identity(recorded_pem: str, cert_pem: str) -> None:
    from cryptography import x509

    from ...identity import party_id_of_key

    def party(pem: str) -> str:
        try:
            return party_id_of_key(x509.load_pem_x509_certificate(pem.encode()).public_key())
        except ValueError:
            return "(unreadable certificate)"

    recorded, own = party(recorded_pem), party(cert_pem)
    if recorded != own:
        raise IdentityMismatch(
            f"the database belongs to CM identity {recorded}, this Capsule Manager has {own}: "
            "give it that identity's key files, or (replicas) none and --join HOST:PORT of a "
            "running replica"
        )


def recorded_identity(url: str) -> str | None:
    """The CM certificate PEM the database at ``url`` records (None: none, or no schema yet);
    read on a connection of its own, before the store is opened with a storage key."""
    connect_args = {} if url.startswith("sqlite") else {"connect_timeout": CONNECT_TIMEOUT}
    engine = create_engine(url, connect_args=connect_args)
    try:
        if not inspect(engine).has_table(Meta.__tablename__):
            return None
        with engine.connect() as conn:
            value = conn.execute(select(Meta.value).where(Meta.name == IDENTITY_ROW)).scalar()
        return None if value is None else bytes(value).decode(errors="replace")
    finally:
        engine.dispose()


def _sqlite_engines(url: str) -> tuple[Engine, Engine]:
    def make(begin: str) -> Engine:
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql(begin)

        return engine

    return make("BEGIN IMMEDIATE"), make("BEGIN")


def _is_retryable(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError) or exc.connection_invalidated:
        return True
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    return any(
        s in text
        for s in ("deadlock", "database is locked", "could not serialize", "lock wait timeout")
    )


class Database:
    """All persistent Capsule Manager state. Thread-safe; methods block (use a thread).

    With ``audit`` set (:class:`~.audit_log.AuditLog`), every decision on an owner's data is
    appended to the audit log in the transaction of its effect (docs/audit.md)."""

    def __init__(self, url: str, sealer: Sealer, *, pool_size: int = 16) -> None:
        self.url = url
        self._sealer = sealer
        self.audit: AuditLog | None = None
        self.audit_commits = GroupCommit(self._append_audit)
        self._audit_connection: PoolProxiedConnection | None = None  # :meth:`_append_raw`
        if url.startswith("sqlite"):
            self._write_engine, self._read_engine = _sqlite_engines(url)
            self._sqlite_write_lock: WriterLock | None = WriterLock(self._write_engine.url.database)
        else:
            # No pre-ping (a round trip per transaction): a connection found dead is
            # invalidated by SQLAlchemy and the operation is retried once on a fresh one.
            connect_args = {"connect_timeout": CONNECT_TIMEOUT}
            engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_recycle=POOL_RECYCLE,
                pool_timeout=CONNECT_TIMEOUT,
                connect_args=connect_args,
            )
            self._write_engine = self._read_engine = engine
            self._sqlite_write_lock = None
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)
        self._read = sessionmaker(self._read_engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Database({self._write_engine.url.render_as_string(hide_password=True)!r})"

    # ---- lifecycle -------------------------------------------------------------------------

    def create_schema(self, identity_cert: str | None = None) -> None:
        """Migrate a database of an older schema version (:mod:`.migrations`, one
        transaction), create missing tables and check the storage key against the stored check
        value (written on first start). Raise :class:`CMError` (Data Integrity Violated) when
        the database is of an unknown or newer version, or sealed under another storage key.

        ``identity_cert`` (the CM certificate PEM, public) is recorded with the check value at
        founding (or on the first start that passes one) and later compared by public key: a
        CM whose key pair differs from the recorded one is refused (Data Integrity Violated)
        before the storage key is checked; this also stops the loser of two founders racing
        (docs/replicas.md).

        Replicas starting together (docs/replica-state.md): on PostgreSQL and MySQL/MariaDB all of
        this runs under one database-wide lock (:func:`schema_lock`), so exactly one replica
        migrates, creates the tables and writes the check value, and the others then find
        them; :class:`CMError` (Internal) when the lock is not obtained in
        :data:`SCHEMA_LOCK_TIMEOUT` seconds."""
        with schema_lock(self._write_engine):
            self._create_schema(identity_cert)

    def _create_schema(self, identity_cert: str | None) -> None:
        try:
            if inspect(self._read_engine).has_table(Meta.__tablename__):
                self._tx(migrate)
        except SchemaMismatch as exc:
            raise CMError(Kind.DATA_INTEGRITY, str(exc)) from None
        Base.metadata.create_all(self._write_engine)

        def check(session: Session) -> None:
            row = session.get(Meta, "storage_key_check")
            if row is None:
                nonce, sealed = self._sealer.seal(_CHECK_PLAINTEXT, "cm_meta", "check")
                session.add(Meta(name="storage_key_check", value=nonce + sealed))
                session.add(Meta(name="schema_version", value=SCHEMA_VERSION.encode()))
                if identity_cert is not None:
                    session.add(Meta(name=IDENTITY_ROW, value=identity_cert.encode()))
                return
            version = session.get(Meta, "schema_version")
            found = version.value.decode() if version is not None else "?"
            if found != SCHEMA_VERSION:
                raise SchemaMismatch(
                    f"database schema version {found}, this Capsule Manager needs "
                    f"{SCHEMA_VERSION} (no automatic migration between them)"
                )
            recorded = session.get(Meta, IDENTITY_ROW)
            if identity_cert is not None and recorded is not None:
                _check_identity(recorded.value.decode(errors="replace"), identity_cert)
            plain = self._sealer.open(row.value[:12], row.value[12:], "cm_meta", "check")
            if not hmac.compare_digest(plain, _CHECK_PLAINTEXT):
                raise CMError(Kind.DATA_INTEGRITY, "storage key check value differs")
            if identity_cert is not None and recorded is None:
                session.add(Meta(name=IDENTITY_ROW, value=identity_cert.encode()))

        try:
            self._tx(check)
        except SchemaMismatch as exc:
            raise CMError(Kind.DATA_INTEGRITY, str(exc)) from None
        except IdentityMismatch as exc:
            raise CMError(Kind.DATA_INTEGRITY, str(exc)) from None
        except CMError as exc:
            raise CMError(
                Kind.DATA_INTEGRITY,
                "the database was sealed under a different storage key "
                f"(share the storage key file between replicas): {exc.detail}",
            ) from None

    def close(self) -> None:
        self.audit_commits.close()
        if self._audit_connection is not None:
            self._audit_connection.close()
            self._audit_connection = None
        self._write_engine.dispose()
        self._read_engine.dispose()
        if self._sqlite_write_lock is not None:
            self._sqlite_write_lock.close()

    # ---- transactions ----------------------------------------------------------------------

    def _tx(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one write transaction, retrying on races (integrity errors,
        deadlocks). :class:`CMError` from ``fn`` rolls back and propagates."""

        def run() -> T:
            if self._sqlite_write_lock is not None:
                with self._sqlite_write_lock, self._write.begin() as session:
                    return fn(session)
            with self._write.begin() as session:
                return fn(session)

        return self._retrying(run)

    def _core_tx(self, fn: Callable[[Connection], T]) -> T:
        """:meth:`_tx` on a Core connection (no ORM session: the audit's hot path)."""

        def run() -> T:
            if self._sqlite_write_lock is not None:
                with self._sqlite_write_lock, self._write_engine.begin() as conn:
                    return fn(conn)
            with self._write_engine.begin() as conn:
                return fn(conn)

        return self._retrying(run)

    def _retrying(self, run: Callable[[], T]) -> T:
        delay = 0.005
        for attempt in range(MAX_ATTEMPTS):
            try:
                with _metrics.db_timer("write"):
                    return run()
            except (IntegrityError, OperationalError) as exc:
                if attempt + 1 == MAX_ATTEMPTS or not _is_retryable(exc):
                    log.warning("store transaction failed: %s", type(exc).__name__)
                    raise CMError(Kind.INTERNAL, "storage conflict, try again") from None
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _apply(self, op: Callable[[Session], None], request: RequestMark | None) -> None:
        """Run ``op`` in one write transaction (:meth:`_tx`) that also records ``request``
        (an owner request: :mod:`.freshness`). A request already recorded is a replay or a
        client retry: nothing is applied (the caller answers as the first time). A ``jti``
        already used by the party with another envelope: Invalid Argument. Two identical
        requests at once: the second insert of the digest fails, the retry sees it."""

        def once(session: Session) -> None:
            if request is None or _record(session, request):
                op(session)

        self._tx(once)

    def _ro(self, fn: Callable[[Session], T]) -> T:
        def run() -> T:
            with _metrics.db_timer("read"), self._read.begin() as session:
                return fn(session)

        return _retry_dead_connection(run)

    def ping(self) -> str | None:
        """None when the database answers a read of the meta table (on a fresh connection when
        the pooled one is dead; reading a table also finds a SQLite file that went away or
        cannot be read), else the first line of the error (it may name the URL: redact it)."""
        try:
            with _metrics.db_timer("ping"):
                _retry_dead_connection(self._select_one)
        except Exception as exc:  # a server gone, an unreadable SQLite file, a driver error
            cause = getattr(exc, "orig", None) or exc
            return (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        return None

    def _select_one(self) -> None:
        with self._read_engine.connect() as conn:
            conn.execute(select(Meta.name).limit(1)).all()

    # ---- helpers ---------------------------------------------------------------------------

    def _log(self, session: Session, drafts: Sequence[AuditDraft]) -> None:
        if self.audit is not None:
            self.audit.append(session.connection(), drafts)

    def _append_audit(self, batch: list[tuple[Sequence[AuditDraft], ReadSet | None]]) -> list[bool]:
        """Append a group commit's batch in one transaction: the drafts of every decision
        whose read set still holds (returned True), none of the others. The records read are
        locked (FOR SHARE; SQLite: the writer lock) until the commit, so no owner mutation of
        them commits between this check and the entries: a release is serialized before any
        change it did not see, and its entry precedes that change's entry."""
        log = self.audit
        if log is None:
            return [True] * len(batch)
        if not any(d.limited for drafts, _ in batch for d in drafts):
            return self._append_raw(log, batch)

        def run(conn: Connection) -> list[bool]:
            uuids = sorted({u for _, read in batch if read for u in read})
            current: dict[str, int] = {}
            if uuids:
                current = dict(conn.execute(_REVISIONS, {"uuids": uuids}).all())
            accepted = [
                read is None or all(current.get(u) == rev for u, rev in read.items())
                for _, read in batch
            ]
            pairs = zip(batch, accepted, strict=True)
            log.append(conn, [d for (drafts, _), ok in pairs if ok for d in drafts])
            return accepted

        return self._core_tx(run)

    def _append_raw(
        self, audit: AuditLog, batch: list[tuple[Sequence[AuditDraft], ReadSet | None]]
    ) -> list[bool]:
        """:meth:`_append_audit` of a batch without refusals on the driver's connection
        (:mod:`.audit_appends`), retried like :meth:`_tx`. PostgreSQL and MariaDB: on a
        pooled connection kept for the appends (they run one at a time, in the group
        commit's writer thread), not checked out and in per batch."""
        delay = 0.005
        for attempt in range(MAX_ATTEMPTS):
            try:
                with _metrics.db_timer("write"):
                    if self._sqlite_write_lock is None:
                        if self._audit_connection is None:
                            self._audit_connection = self._write_engine.raw_connection()
                        return append_batch(
                            self._write_engine, audit, batch, self._audit_connection
                        )
                    with self._sqlite_write_lock:
                        return append_batch(self._write_engine, audit, batch)
            except DriverError as exc:
                if exc.disconnected:
                    self._audit_connection = None  # invalidated: the next attempt opens one
                cause = type(exc.__cause__).__name__
                if not exc.retry:
                    log.warning("audit append failed: %s", cause)
                    raise CMError(Kind.INTERNAL, "the audit log could not be written") from None
                if attempt + 1 == MAX_ATTEMPTS:
                    log.warning("audit append failed: %s", cause)
                    raise CMError(Kind.INTERNAL, "storage conflict, try again") from None
                if not exc.disconnected:
                    time.sleep(delay)
                    delay *= 2
        raise AssertionError("unreachable")

    @staticmethod
    def _touch(session: Session, uuids: Iterable[str]) -> None:
        """Bump the revision of ``uuids``' records in the mutation's transaction (before its
        audit entries: the lock order of :meth:`_append_audit`), so that a release decided on
        the state before is not logged after it (docs/audit.md)."""
        wanted = sorted(set(uuids))
        if wanted:
            session.connection().execute(_BUMP_REVISION, {"uuids": wanted})

    @staticmethod
    def _owned_record(session: Session, data_uuid: str, owner: str) -> DataRecord | None:
        record = session.get(DataRecord, data_uuid)
        if record is not None and not hmac.compare_digest(
            record.owner_party_id.encode(), owner.encode()
        ):
            raise CMError(Kind.ASSERT, f"party_id {owner} is wrong")
        return record

    @staticmethod
    def _policy_row(session: Session, scope: str, data_uuid: str) -> PolicyRow | None:
        return session.scalars(
            select(PolicyRow).where(PolicyRow.scope == scope, PolicyRow.data_uuid == data_uuid)
        ).first()

    @staticmethod
    def _rules(session: Session, policy_id: int) -> tuple[Rule, ...]:
        rows = session.scalars(
            select(RuleRow.body_json).where(RuleRow.policy_id == policy_id).order_by(RuleRow.id)
        )
        return tuple(_rule(text) for text in rows)

    def _stored(self, session: Session, row: PolicyRow) -> StoredPolicy:
        return StoredPolicy(
            row.data_uuid, row.scope, row.owner_party_id, self._rules(session, row.id)
        )

    def _put_key(self, session: Session, key: NewKey) -> None:
        nonce, sealed = self._sealer.seal(key.data_key_b64.encode(), KEYS_TABLE, key.resource_uri)
        row = session.get(DataKeyRow, key.resource_uri)
        if row is None:
            session.add(DataKeyRow(**_key_columns(key, nonce, sealed)))
        else:
            row.data_uuid, row.nonce, row.sealed_key = key.data_uuid, nonce, sealed
        session.flush()

    def _replace_rules(
        self, session: Session, scope: str, data_uuid: str, owner: str, rules: Iterable[Rule]
    ) -> None:
        row = self._policy_row(session, scope, data_uuid)
        if row is None:
            row = PolicyRow(scope=scope, data_uuid=data_uuid, owner_party_id=owner)
            session.add(row)
            session.flush()
        else:
            session.execute(delete(RuleRow).where(RuleRow.policy_id == row.id))
            row.owner_party_id = owner
        for rule in rules:
            session.add(RuleRow(policy_id=row.id, rule_id=rule.rule_id, body_json=rule.to_json()))
        session.flush()

    # ---- certificates ----------------------------------------------------------------------

    def register_cert(self, party_id: str, public_key_pem: str) -> None:
        def op(session: Session) -> None:
            if session.get(Cert, party_id) is not None:
                raise CMError(Kind.ALREADY_EXISTS, f"party_id {party_id} public_key has stored.")
            session.add(Cert(party_id=party_id, public_key_pem=public_key_pem))
            session.flush()

        self._tx(op)

    def registered_key(self, party_id: str) -> str | None:
        return self._ro(lambda s: c.public_key_pem if (c := s.get(Cert, party_id)) else None)

    # ---- data keys -------------------------------------------------------------------------

    def create_data_keys(
        self, owner: str, keys: Sequence[NewKey], request: RequestMark | None = None
    ) -> None:
        """Store (or overwrite) keys; all or nothing. A data_uuid owned by another party
        refuses the whole request (Assert, 13)."""
        by_uri = {k.resource_uri: k for k in keys}  # a repeated URI: the last one wins
        uuids = {k.data_uuid for k in by_uri.values()}

        def op(session: Session) -> None:
            conn = session.connection()  # Core statements: no ORM bookkeeping on the hot path
            owners = dict(conn.execute(_OWNERS, {"uuids": list(uuids)}).all())
            for stored_owner in owners.values():
                if not hmac.compare_digest(stored_owner.encode(), owner.encode()):
                    raise CMError(Kind.ASSERT, f"party_id {owner} is wrong")
            new = [
                {"data_uuid": u, "owner_party_id": owner, "parents_json": "[]"}
                for u in sorted(uuids - set(owners))
            ]
            if new:
                conn.execute(_INSERT_RECORD, new)
            present = set(conn.scalars(_PRESENT_KEYS, {"uris": list(by_uri)}))
            inserts, updates = [], []
            for uri, key in by_uri.items():
                nonce, sealed = self._sealer.seal(key.data_key_b64.encode(), KEYS_TABLE, uri)
                if uri in present:
                    updates.append(
                        {
                            "b_uri": uri,
                            "b_uuid": key.data_uuid,
                            "b_nonce": nonce,
                            "b_sealed": sealed,
                        }
                    )
                else:
                    inserts.append(_key_columns(key, nonce, sealed))
            if inserts:
                conn.execute(_INSERT_KEY, inserts)
            if updates:
                conn.execute(_UPDATE_KEY, updates)
            self._touch(session, uuids)
            self._log(
                session,
                [
                    AuditDraft(
                        "keys_created",
                        owner,
                        u,
                        {"resource_uris": sorted(k for k, v in by_uri.items() if v.data_uuid == u)},
                    )
                    for u in sorted(uuids)
                ],
            )

        self._apply(op, request)

    def delete_data_key(
        self,
        owner: str,
        data_uuid: str,
        resource_uri: str,
        request: RequestMark | None = None,
    ) -> None:
        def op(session: Session) -> None:
            if self._owned_record(session, data_uuid, owner) is None:
                return
            deleted = session.execute(
                delete(DataKeyRow).where(
                    DataKeyRow.resource_uri == resource_uri, DataKeyRow.data_uuid == data_uuid
                )
            )
            if cast(Any, deleted).rowcount:
                self._touch(session, [data_uuid])
                self._log(
                    session,
                    [AuditDraft("key_deleted", owner, data_uuid, {"resource_uri": resource_uri})],
                )

        self._apply(op, request)

    def get_keys(self, resource_uris: Sequence[str]) -> dict[str, str]:
        """``resource_uri -> data_key_b64`` for the URIs that have a key."""

        def op(session: Session) -> list[DataKeyRow]:
            return list(
                session.scalars(
                    select(DataKeyRow).where(DataKeyRow.resource_uri.in_(set(resource_uris)))
                )
            )

        rows = self._ro(op)
        return {
            row.resource_uri: self._sealer.open(
                row.nonce, row.sealed_key, KEYS_TABLE, row.resource_uri
            ).decode()
            for row in rows
        }

    def data_info(self, data_uuid: str) -> DataInfo | None:
        def op(session: Session) -> DataInfo | None:
            row = session.get(DataRecord, data_uuid)
            if row is None:
                return None
            parents = tuple(json.loads(row.parents_json))
            return DataInfo(row.data_uuid, row.owner_party_id, parents, row.revision)

        return self._ro(op)

    def original_owners(self, data_uuid: str) -> set[str]:
        """Owners of the lineage roots above ``data_uuid`` (itself when it has no parents).
        A missing record on the way: NotFound ``data_uuid <x> has be not stored``."""

        def op(session: Session) -> set[str]:
            owners: set[str] = set()
            seen: set[str] = set()
            stack = [data_uuid]
            while stack:
                current = stack.pop()
                if current in seen:
                    continue
                seen.add(current)
                row = session.get(DataRecord, current)
                if row is None:
                    raise CMError(Kind.NOT_FOUND, f"data_uuid {current} has be not stored")
                parents = json.loads(row.parents_json)
                if parents:
                    stack.extend(reversed(parents))
                else:
                    owners.add(row.owner_party_id)
            return owners

        return self._ro(op)

    def create_result_key(
        self,
        owner: str,
        key: NewKey,
        scope: str,
        ancestors: Sequence[str],
        derive: Callable[[Sequence[Sequence[Rule]]], list[Rule]],
        releasable: Callable[[str, Sequence[Rule]], bool],
        app: dict[str, Any] | None = None,
    ) -> bool:
        """Register a result: its key, lineage and derived policy, in one transaction.

        The rule (docs/capsule-manager.md, "Result registration"):

        * a result is registered once, under a data_uuid nobody holds yet; repeating the
          identical registration (same resource, key, owner, ancestors) is a retry and changes
          nothing (returns False; True when stored). Anything else naming an existing data_uuid
          is refused: Already existed for a result, Assert for an owner's original data;
        * every ancestor needs a policy in ``scope`` (NotFound ``data policy is empty.``) owned
          by the ancestor's owner, and ``releasable(ancestor_uuid, rules)`` must say that the
          policy releases the ancestor to the calling app (PermissionDenied) -- evaluated
          here, on the rules the derived policy is made of;
        * nothing is stored unless all of this holds.

        Audit (docs/audit.md): one ``result_registered`` entry for the result's owner and one
        for each ancestor's owner, with ``app`` (the registering app's identity).
        """

        def op(session: Session) -> bool:
            record = session.get(DataRecord, key.data_uuid)
            if record is not None:
                if self._same_result(session, record, owner, key, scope, ancestors):
                    return False
                if not json.loads(record.parents_json):
                    raise CMError(Kind.ASSERT, f"data_uuid {key.data_uuid} is not result data")
                raise CMError(
                    Kind.ALREADY_EXISTS,
                    f"result {key.data_uuid} is already registered "
                    "(a result is registered once, under a new data_uuid)",
                )
            ancestor_rules = [self._ancestor_rules(session, scope, u) for u in ancestors]
            for uuid, rules in zip(ancestors, ancestor_rules, strict=True):
                if not releasable(uuid, rules):
                    raise CMError(
                        Kind.PERMISSION_DENIED,
                        f"ancestor {uuid}: its policy does not release it to this app",
                    )
            if self._policy_row(session, scope, key.data_uuid) is not None:
                raise CMError(Kind.ASSERT, f"data_uuid {key.data_uuid} has a policy of its own")
            session.add(
                DataRecord(
                    data_uuid=key.data_uuid,
                    owner_party_id=owner,
                    parents_json=json.dumps(list(ancestors)),
                )
            )
            session.flush()
            self._put_key(session, key)
            self._replace_rules(session, scope, key.data_uuid, owner, derive(ancestor_rules))
            details = {
                "result": key.data_uuid,
                "result_owner": owner,
                "resource_uri": key.resource_uri,
                "scope": scope,
                "ancestors": list(ancestors),
                **(app or {}),
            }
            drafts = [AuditDraft("result_registered", owner, key.data_uuid, details)]
            for uuid in dict.fromkeys(ancestors):
                record = session.get(DataRecord, uuid)
                if record is not None:
                    drafts.append(
                        AuditDraft("result_registered", record.owner_party_id, uuid, details)
                    )
            self._log(session, drafts)
            return True

        return self._tx(op)

    def _same_result(
        self,
        session: Session,
        record: DataRecord,
        owner: str,
        key: NewKey,
        scope: str,
        ancestors: Sequence[str],
    ) -> bool:
        """Whether ``record`` already holds exactly this registration (a client's retry, e.g.
        re-sent to another replica after the first committed it): same owner, key, ancestors
        and scope (the derived policy is in it)."""
        row = session.get(DataKeyRow, key.resource_uri)
        if row is None or record.owner_party_id != owner:
            return False
        if self._policy_row(session, scope, key.data_uuid) is None:
            return False
        if sorted(set(json.loads(record.parents_json))) != sorted(set(ancestors)):
            return False
        stored = self._sealer.open(row.nonce, row.sealed_key, KEYS_TABLE, row.resource_uri)
        return hmac.compare_digest(stored, key.data_key_b64.encode())

    def _ancestor_rules(self, session: Session, scope: str, data_uuid: str) -> tuple[Rule, ...]:
        row = self._policy_row(session, scope, data_uuid)
        if row is None:
            raise CMError(Kind.NOT_FOUND, "data policy is empty.")
        record = session.get(DataRecord, data_uuid)
        if record is not None and record.owner_party_id != row.owner_party_id:
            raise CMError(
                Kind.ASSERT,
                f"the owner of data key {record.owner_party_id} != the owner of data policy "
                f"{row.owner_party_id}",
            )
        return self._rules(session, row.id)

    # ---- policies --------------------------------------------------------------------------

    def _check_policy_owner(
        self, session: Session, scope: str, data_uuid: str, owner: str, *, claim: bool = False
    ) -> PolicyRow | None:
        """The policy ``(scope, data_uuid)`` that ``owner`` may change (None: there is none).

        The data_uuid's owner decides, whoever made the policy: another party's data is
        refused (Assert); on the caller's own data a policy left by another party (possible in
        databases written before policies claimed their data_uuid) is taken over. An unclaimed
        data_uuid is claimed by the caller when ``claim`` (creating or extending a policy),
        so that the keys and the policies of a data_uuid always have one owner."""
        record = self._owned_record(session, data_uuid, owner)
        row = self._policy_row(session, scope, data_uuid)
        if record is None:
            if row is not None and not _same_party(row.owner_party_id, owner):
                raise CMError(Kind.ASSERT, "party_id is wrong")
            if claim:
                session.add(DataRecord(data_uuid=data_uuid, owner_party_id=owner))
                session.flush()
        elif row is not None and not _same_party(row.owner_party_id, owner):
            row.owner_party_id = owner
        return row

    def put_policy(
        self,
        owner: str,
        scope: str,
        data_uuid: str,
        rules: Sequence[Rule],
        request: RequestMark | None = None,
    ) -> None:
        """Create or replace the policy ``(scope, data_uuid)``."""

        def op(session: Session) -> None:
            self._check_policy_owner(session, scope, data_uuid, owner, claim=True)
            self._replace_rules(session, scope, data_uuid, owner, rules)
            self._touch(session, [data_uuid])
            details = {"scope": scope, "rule_ids": [r.rule_id for r in rules]}
            self._log(session, [AuditDraft("policy_set", owner, data_uuid, details)])

        self._apply(op, request)

    def add_rule(
        self,
        owner: str,
        scope: str,
        data_uuid: str,
        rule: Rule,
        request: RequestMark | None = None,
    ) -> None:
        """Append a rule, creating the policy when there is none."""

        def op(session: Session) -> None:
            row = self._check_policy_owner(session, scope, data_uuid, owner, claim=True)
            self._touch(session, [data_uuid])
            details = {"scope": scope, "rule_id": rule.rule_id}
            self._log(session, [AuditDraft("rule_added", owner, data_uuid, details)])
            if row is None:
                self._replace_rules(session, scope, data_uuid, owner, [rule])
                return
            session.add(RuleRow(policy_id=row.id, rule_id=rule.rule_id, body_json=rule.to_json()))
            session.flush()

        self._apply(op, request)

    def delete_policy(
        self, owner: str, scope: str, data_uuid: str, request: RequestMark | None = None
    ) -> None:
        def op(session: Session) -> None:
            row = self._check_policy_owner(session, scope, data_uuid, owner)
            if row is None:
                return
            session.execute(delete(RuleRow).where(RuleRow.policy_id == row.id))
            session.delete(row)
            session.flush()
            self._touch(session, [data_uuid])
            self._log(session, [AuditDraft("policy_deleted", owner, data_uuid, {"scope": scope})])

        self._apply(op, request)

    def delete_rule(
        self,
        owner: str,
        scope: str,
        data_uuid: str,
        rule_id: str,
        request: RequestMark | None = None,
    ) -> None:
        def op(session: Session) -> None:
            row = self._check_policy_owner(session, scope, data_uuid, owner)
            if row is None:
                return
            deleted = session.execute(
                delete(RuleRow).where(RuleRow.policy_id == row.id, RuleRow.rule_id == rule_id)
            )
            if cast(Any, deleted).rowcount:
                self._touch(session, [data_uuid])
                details = {"scope": scope, "rule_id": rule_id}
                self._log(session, [AuditDraft("rule_deleted", owner, data_uuid, details)])

        self._apply(op, request)

    # ---- audit log (docs/audit.md) ---------------------------------------------------------

    def record_audit(self, drafts: Sequence[AuditDraft], read: ReadSet | None = None) -> None:
        """Commit audit entries of a decision that changes nothing else (a key release, a
        refusal, an export), grouped with those of concurrent decisions
        (:class:`~.audit_log.GroupCommit`): callers answer only after this returned. With
        ``read`` (``data_uuid -> revision`` the decision relied on): committed only if those
        records are unchanged, else :class:`~.audit_log.StaleDecision` (nothing committed)."""
        if self.audit is not None and drafts:
            self.audit_commits.submit(drafts, read)

    def record_audit_soon(
        self,
        drafts: Sequence[AuditDraft],
        loop: asyncio.AbstractEventLoop,
        committed: asyncio.Future[None],
        read: ReadSet | None = None,
    ) -> bool:
        """:meth:`record_audit` without waiting, from a worker thread, for a handler in
        ``loop``: True when ``drafts`` were queued, and then ``committed`` (a future of
        ``loop``) completes once they are committed, or fails with the error; the caller
        awaits it before answering. The commit overlaps whatever the caller does until it
        awaits (sealing the reply). False (``committed`` untouched): nothing to log, or (on
        SQLite, whose commits need no fsync) already committed in this thread because no
        other append was queued or running (:meth:`GroupCommit.write_now`): no hand-off to
        the writer thread and no wake-up of ``loop``.

        ``read`` (a release's ``data_uuid -> revision`` from :meth:`access_view`): the
        entries are appended only if those records are still at those revisions in the
        append transaction; else nothing is appended and :class:`~.audit_log.StaleDecision`
        is raised here or ``committed`` fails with it (decide again: the key must not
        leave)."""
        if self.audit is None or not drafts:
            return False
        if self._sqlite_write_lock is not None and self.audit_commits.write_now(drafts, read):
            return False
        self.audit_commits.submit_soon(drafts, loop, committed, read)
        return True

    def _audit_log(self) -> AuditLog:
        if self.audit is None:
            raise CMError(Kind.UNSUPPORTED, "the audit log is turned off on this CM")
        return self.audit

    def audit_entries(
        self, owner: str, *, data_uuid: str = "", since_ms: int = 0, start: int = 0, limit: int
    ) -> list[StoredEntry]:
        log = self._audit_log()
        return self._ro(
            lambda s: log.entries(
                s, owner, data_uuid=data_uuid, since_ms=since_ms, start=start, limit=limit
            )
        )

    def audit_tree_head(self) -> TreeHead:
        log = self._audit_log()
        return self._tx(log.tree_head)

    def audit_inclusion_proofs(
        self, owner: str, indexes: Sequence[int], tree_size: int
    ) -> list[list[bytes]]:
        log = self._audit_log()
        return self._ro(lambda s: log.inclusion_proofs(s, owner, indexes, tree_size))

    def audit_consistency_proof(self, first: int, second: int) -> list[bytes]:
        log = self._audit_log()
        return self._ro(lambda s: log.consistency_proof(s, first, second))

    def list_policies(self, owner: str, scope: str) -> list[StoredPolicy]:
        def op(session: Session) -> list[StoredPolicy]:
            rows = session.scalars(
                select(PolicyRow)
                .where(PolicyRow.owner_party_id == owner, PolicyRow.scope == scope)
                .order_by(PolicyRow.id)
            )
            return [self._stored(session, r) for r in rows]

        return self._ro(op)

    def get_policy(self, scope: str, data_uuid: str) -> StoredPolicy | None:
        def op(session: Session) -> StoredPolicy | None:
            row = self._policy_row(session, scope, data_uuid)
            return None if row is None else self._stored(session, row)

        return self._ro(op)

    def access_view(
        self, scope: str, data_uuids: Iterable[str], resource_uris: Iterable[str] = ()
    ) -> tuple[dict[str, tuple[DataInfo | None, StoredPolicy | None]], SealedKeys]:
        """For GetDataKeys, in one read transaction: each data_uuid's record and policy in
        ``scope``, and the still-sealed keys of ``resource_uris`` (open them with
        :meth:`SealedKeys.open` only after the request is authorized)."""
        uuids = list(dict.fromkeys(data_uuids))
        uris = list(dict.fromkeys(resource_uris))
        if not uuids:
            return {}, SealedKeys(self._sealer, {})
        with _metrics.db_timer("read"):
            record_rows, policy_rows, key_rows = read_access_rows(
                self._read_engine, scope, uuids, uris
            )
        records = {
            data_uuid: DataInfo(data_uuid, owner, tuple(json.loads(parents)), revision)
            for data_uuid, owner, parents, revision in record_rows
        }
        owners: dict[int, tuple[str, str]] = {}
        rules: dict[int, list[Rule]] = {}
        for policy_id, data_uuid, owner, body_json in policy_rows:
            owners.setdefault(policy_id, (data_uuid, owner))
            bucket = rules.setdefault(policy_id, [])
            if body_json is not None:
                bucket.append(_rule(body_json))
        by_uuid = {
            data_uuid: StoredPolicy(data_uuid, scope, owner, tuple(rules[policy_id]))
            for policy_id, (data_uuid, owner) in owners.items()
        }
        view = {u: (records.get(u), by_uuid.get(u)) for u in uuids}
        sealed = {uri: (bytes(nonce), bytes(key)) for uri, nonce, key in key_rows}
        return view, SealedKeys(self._sealer, sealed)


def _record(session: Session, request: RequestMark) -> bool:
    """Record ``request``; False when its digest is recorded already."""
    conn = session.connection()  # Core statements: this runs on every owner mutation
    seen = conn.execute(
        _SEEN_REQUEST, {"digest": request.digest, "party": request.party_id, "jti": request.jti}
    ).all()
    if any(digest == request.digest for (digest,) in seen):
        return False
    if seen:
        raise CMError(Kind.INVALID_ARGUMENT, f"JWS header jti {request.jti!r} was already used")
    conn.execute(
        _INSERT_REQUEST,
        {
            "digest": request.digest,
            "party_id": request.party_id,
            "jti": request.jti,
            "created": int(time.time()),
        },
    )
    return True


@contextlib.contextmanager
def schema_lock(engine: Engine, timeout: float | None = None) -> Iterator[None]:
    """Hold the schema lock of ``engine``'s database: an advisory lock on PostgreSQL
    (``pg_try_advisory_lock``, polled; its keys are per database), ``GET_LOCK`` on
    MySQL/MariaDB (named after the database: those locks are server-wide), on a connection of
    its own that lives as long as the lock (a replica that dies releases it with its
    connection). SQLite: nothing (its writes are serialized by the database file lock and
    :class:`.writer_lock.WriterLock`). Waits at most ``timeout`` seconds
    (:data:`SCHEMA_LOCK_TIMEOUT`), then raises :class:`CMError` (Internal)."""
    wait = SCHEMA_LOCK_TIMEOUT if timeout is None else timeout
    dialect = engine.dialect.name
    if dialect not in ("postgresql", "mysql", "mariadb"):
        yield
        return
    params: dict[str, Any]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if dialect == "postgresql":
            deadline = time.monotonic() + wait
            while not conn.execute(_PG_TRY_LOCK, {"key": SCHEMA_LOCK_KEY}).scalar():
                if time.monotonic() >= deadline:
                    raise _lock_timeout(wait)
                time.sleep(0.02)
            release, params = _PG_UNLOCK, {"key": SCHEMA_LOCK_KEY}
        else:
            name = f"trustflow_cm_schema:{conn.execute(_MY_DATABASE).scalar()}"[:64]
            if conn.execute(_MY_GET_LOCK, {"name": name, "wait": wait}).scalar() != 1:
                raise _lock_timeout(wait)
            release, params = _MY_RELEASE_LOCK, {"name": name}
        try:
            yield
        finally:
            with contextlib.suppress(DBAPIError):  # a lost connection released it already
                conn.execute(release, params)


def _lock_timeout(wait: float) -> CMError:
    return CMError(
        Kind.INTERNAL,
        f"the schema lock was not obtained in {wait:g} s "
        "(another Capsule Manager replica is creating or migrating the schema)",
    )


def _retry_dead_connection(fn: Callable[[], T]) -> T:
    """Run a read; once more when the pooled connection turned out to be dead."""
    try:
        return fn()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return fn()


class SealedKeys:
    """Sealed data keys read by :meth:`Database.access_view`."""

    def __init__(self, sealer: Sealer, rows: dict[str, tuple[bytes, bytes]]) -> None:
        self._sealer = sealer
        self._rows = rows

    def __repr__(self) -> str:
        return f"SealedKeys({sorted(self._rows)!r})"

    def __contains__(self, uri: object) -> bool:
        return uri in self._rows

    def open(self, uri: str) -> str:
        nonce, sealed = self._rows[uri]
        return self._sealer.open(nonce, sealed, KEYS_TABLE, uri).decode()


# Hot-path statements, built once so SQLAlchemy reuses their compiled form.
_OWNERS = select(DataRecord.data_uuid, DataRecord.owner_party_id).where(
    DataRecord.data_uuid.in_(bindparam("uuids", expanding=True))
)
_PRESENT_KEYS = select(DataKeyRow.resource_uri).where(
    DataKeyRow.resource_uri.in_(bindparam("uris", expanding=True))
)
_DATA_TABLE = cast(Table, DataRecord.__table__)
_UUIDS: BindParameter[Any] = bindparam("uuids", expanding=True)
_REVISIONS = (
    select(_DATA_TABLE.c.data_uuid, _DATA_TABLE.c.revision)
    .where(_DATA_TABLE.c.data_uuid.in_(_UUIDS))
    .order_by(_DATA_TABLE.c.data_uuid)
    .with_for_update(read=True)
)
_BUMP_REVISION = (
    update(_DATA_TABLE)
    .where(_DATA_TABLE.c.data_uuid.in_(_UUIDS))
    .values(revision=_DATA_TABLE.c.revision + 1)
)
_KEYS_TABLE = cast(Table, DataKeyRow.__table__)
_INSERT_RECORD = insert(_DATA_TABLE)
_INSERT_KEY = insert(_KEYS_TABLE)
_REQUESTS_TABLE = cast(Table, RequestRow.__table__)
_SEEN_REQUEST = select(_REQUESTS_TABLE.c.digest).where(
    or_(
        _REQUESTS_TABLE.c.digest == bindparam("digest"),
        and_(
            _REQUESTS_TABLE.c.party_id == bindparam("party"),
            _REQUESTS_TABLE.c.jti == bindparam("jti"),
        ),
    )
)
_INSERT_REQUEST = insert(_REQUESTS_TABLE)
_UPDATE_KEY = (
    update(_KEYS_TABLE)
    .where(_KEYS_TABLE.c.resource_uri == bindparam("b_uri"))
    .values(
        data_uuid=bindparam("b_uuid"), nonce=bindparam("b_nonce"), sealed_key=bindparam("b_sealed")
    )
)


def _same_party(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@functools.lru_cache(maxsize=8192)
def _rule(body_json: str) -> Rule:
    """Parsed rules are immutable, so equal JSON texts share one parsed value."""
    return Rule.from_json(body_json)


def _key_columns(key: NewKey, nonce: bytes, sealed: bytes) -> dict[str, Any]:
    return {
        "resource_uri": key.resource_uri,
        "data_uuid": key.data_uuid,
        "nonce": nonce,
        "sealed_key": sealed,
    }
