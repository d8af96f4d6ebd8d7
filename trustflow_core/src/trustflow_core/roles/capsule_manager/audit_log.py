"""The Capsule Manager's append-only audit log in its SQL store (docs/audit.md).

Entries are appended inside the caller's write transaction (:meth:`AuditLog.append`): the
owner mutations, result registration and deletion log in the transaction of their effect; a
key release commits its entries before the key is sealed to the app, a refusal before the
refusal is answered. Entry ``i`` is leaf ``i`` of an RFC 9162 Merkle tree
(:mod:`..capsule_manager_protocol.merkle`); tree heads are signed with the CM's key and stored.

Integrity against the database's administrators (who can run SQL but do not hold the storage
key or the CM key): every row carries an HMAC under a key derived from the storage key over its
index and entry bytes. :meth:`AuditLog._verified_size` -- run before any head is signed or
proof is served, incrementally over a verified prefix kept in memory -- names the first row
that was changed (MAC), moved (MAC over another index) or removed (a gap, or fewer entries
than a signed head covers), and refuses a log whose prefix no longer has the root of the last
head the CM signed (when and how old rows are re-checked: :class:`AuditLog`). Owners verify
heads and proofs offline (:func:`..capsule_manager_protocol.audit.verify_bundle`).

Refusals are rate-limited per data_uuid (:class:`RefusalLimiter`) so that nobody can flood an
owner's log by sending requests that are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Connection, Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from .._thread_names import name_native_thread
from ..capsule_manager_protocol import merkle
from ..capsule_manager_protocol.audit import TreeHead, encode_entry
from ..capsule_manager_protocol.errors import CMError, Kind
from .db_models import AuditEntryRow, AuditHeadRow, AuditRefusalBucket, AuditSizeRow

#: The columns of :meth:`AuditLog.rows`, in order.
ENTRY_COLUMNS = ("idx", "owner_party_id", "data_uuid", "time_ms", "entry_json", "mac")
#: Most entries one ListEntries page returns.
MAX_PAGE = 500
_MAC_INFO = b"trustflow-cm audit entry mac v1"


class AuditDraft(NamedTuple):
    """An entry before it has an index and a time: ``kind`` of :data:`.audit.KINDS`, the
    ``owner`` who sees it, the ``data_uuid`` it is about, and its ``details``. ``limited``:
    a refusal, logged only within the bound of :class:`RefusalLimiter`."""

    kind: str
    owner: str
    data_uuid: str
    details: dict[str, Any]
    limited: bool = False


@dataclass(frozen=True)
class StoredEntry:
    index: int
    entry_json: str


def mac_key(storage_key: bytes) -> bytes:
    """The entry MAC key: HKDF-SHA256 of the storage key (replicas sharing it agree)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_MAC_INFO).derive(storage_key)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class AuditLog:
    """Appends, checks and proves the log. ``key`` signs tree heads; ``mac_secret`` is
    :func:`mac_key` of the storage key. Thread-safe.

    **The verified prefix** (docs/audit.md#tamper-evidence): the log's rows are read and
    their MACs checked once; their leaf hashes are kept in memory (a :class:`merkle.Tree`),
    so a head or proof only reads and checks the rows appended since (and roots and proofs
    cost O(log n)). What is kept is re-checked as follows:

    * every head or proof call counts the rows of the verified prefix in SQL (a row
      removed is named, after a full check);
    * every row :meth:`entries` serves is compared with its verified leaf (or its MAC
      checked, when newer than the prefix): an owner is never served a row that was
      changed or moved, and the row is named;
    * the whole log is read and every MAC re-checked on the first call of the process and
      on the first call after ``full_check_seconds`` since the last full check: a row
      changed in SQL that nobody read is named then at the latest.

    Heads and proofs are computed from verified leaves only, so a row changed after it was
    verified cannot change what the CM signs or proves."""

    def __init__(
        self,
        key: RSAPrivateKey,
        mac_secret: bytes,
        *,
        limiter: RefusalLimiter | None = None,
        clock_ms: Callable[[], int] = _now_ms,
        full_check_seconds: float = 300.0,
    ) -> None:
        self._key = key
        self._mac_secret = mac_secret
        self.limiter = limiter or RefusalLimiter()
        self._clock_ms = clock_ms
        self.full_check_seconds = full_check_seconds
        self._lock = threading.Lock()
        self._tree = merkle.Tree()
        self._full_at: float | None = None  # time.monotonic() of the last full check
        #: the last stored head whose signature verified (only the last one is ever checked)
        self._good_head: tuple[int, bytes, int, bytes] | None = None
        #: the log's size after this process's last append, or None: where the next append
        #: most likely starts (:func:`.audit_appends.append_batch` checks it in SQL)
        self.size_hint: int | None = None
        #: batches left that skip the one-statement append after it missed (the writer's)
        self.one_statement_paused = 0

    def _mac(self, index: int, entry_json: str) -> bytes:
        return hmac.new(
            self._mac_secret, index.to_bytes(8, "big") + entry_json.encode(), hashlib.sha256
        ).digest()

    # ---- appending -------------------------------------------------------------------------

    def append(self, conn: Connection, drafts: Sequence[AuditDraft]) -> None:
        """Append ``drafts`` in ``conn``'s transaction, at the next indexes, after leaving
        out the refusals over the bound (:class:`RefusalLimiter`). The size row is updated
        first, so a concurrent append waits for this transaction."""
        now = self._clock_ms()
        if any(d.limited for d in drafts):
            drafts = self.limiter.admit(conn, drafts, now)
        if not drafts:
            return
        n = len(drafts)
        if conn.dialect.update_returning:
            end = conn.execute(_GROW_RETURNING, {"n": n}).scalar()
        else:
            end = (
                conn.execute(_SIZE_NOW).scalar() if conn.execute(_GROW, {"n": n}).rowcount else None
            )
        if end is None:
            conn.execute(insert(_SIZE), {"id": 1, "size": n})  # first append ever (a race: retry)
            end = n
        start = end - n
        rows = [dict(zip(ENTRY_COLUMNS, row, strict=True)) for row in self.rows(drafts, start, now)]
        conn.execute(insert(_ENTRIES), rows)
        self.size_hint = end

    def rows(
        self, drafts: Sequence[AuditDraft], start: int, now_ms: int
    ) -> list[tuple[int, str, str, int, str, bytes]]:
        """The ``cm_audit`` rows (:data:`ENTRY_COLUMNS`) of ``drafts`` at indexes ``start``,
        ``start + 1``, ..., logged at ``now_ms``."""
        rows = []
        for index, draft in enumerate(drafts, start):
            text = encode_entry(
                index, now_ms, draft.kind, draft.owner, draft.data_uuid, draft.details
            ).decode()
            rows.append((index, draft.owner, draft.data_uuid, now_ms, text, self._mac(index, text)))
        return rows

    def now_ms(self) -> int:
        return self._clock_ms()

    # ---- reading ---------------------------------------------------------------------------

    def entries(
        self,
        session: Session,
        owner: str,
        *,
        data_uuid: str = "",
        since_ms: int = 0,
        start: int = 0,
        limit: int = MAX_PAGE,
    ) -> list[StoredEntry]:
        """``owner``'s entries from index ``start`` on, oldest first, at most ``limit``
        (capped at :data:`MAX_PAGE`); only about ``data_uuid`` / from ``since_ms`` when given.
        Each row is checked against its verified leaf, or its MAC when it is newer than the
        verified prefix: Data Integrity Violated names a row changed or moved in SQL."""
        query = (
            select(_ENTRIES.c.idx, _ENTRIES.c.entry_json, _ENTRIES.c.mac)
            .where(_ENTRIES.c.owner_party_id == owner, _ENTRIES.c.idx >= start)
            .order_by(_ENTRIES.c.idx)
            .limit(max(1, min(limit, MAX_PAGE)))
        )
        if data_uuid:
            query = query.where(_ENTRIES.c.data_uuid == data_uuid)
        if since_ms:
            query = query.where(_ENTRIES.c.time_ms >= since_ms)
        rows = session.execute(query).all()
        with self._lock:
            known = len(self._tree)
            leaves = [self._tree.leaf(i) if i < known else None for i, _, _ in rows]
        for (index, text, mac), leaf in zip(rows, leaves, strict=True):
            if leaf is not None:
                good = hmac.compare_digest(merkle.leaf_hash(text.encode()), leaf)
            else:
                good = hmac.compare_digest(bytes(mac), self._mac(index, text))
            if not good:
                raise CMError(
                    Kind.DATA_INTEGRITY,
                    f"audit entry #{index} was changed or moved in the database",
                )
        return [StoredEntry(i, text) for i, text, _ in rows]

    def _verified_size(self, session: Session) -> int:
        """Bring the verified prefix up to the log's size in ``session``'s snapshot (see the
        class docstring) and check the last signed head against it; return that size. Raise
        :class:`CMError` (Data Integrity Violated) naming the first entry that was changed,
        moved or removed in the database. Call with ``self._lock`` held."""
        now = time.monotonic()
        if self._full_at is None or now - self._full_at >= self.full_check_seconds:
            self._tree, self._full_at = merkle.Tree(), now
        size = session.execute(_SIZE_NOW).scalar() or 0
        if size < len(self._tree):  # a snapshot older than the prefix, or a log rolled back
            self._tree.truncate(size)
        verified = len(self._tree)
        if verified and session.execute(_COUNT_BELOW, {"n": verified}).scalar() != verified:
            self._tree, self._full_at, verified = merkle.Tree(), now, 0  # name the gap
        if size > len(self._tree):
            self._extend(session, size)
        last = self._last_head(session)
        if last is not None:
            self._check_head(last, size)
        return size

    def _extend(self, session: Session, size: int) -> None:
        tree = self._tree
        for index, text, mac in session.execute(
            select(_ENTRIES.c.idx, _ENTRIES.c.entry_json, _ENTRIES.c.mac)
            .where(_ENTRIES.c.idx >= len(tree), _ENTRIES.c.idx < size)
            .order_by(_ENTRIES.c.idx)
        ):
            expected = len(tree)
            if index != expected:
                raise CMError(
                    Kind.DATA_INTEGRITY,
                    f"audit entry #{expected} is missing from the database",
                )
            if not hmac.compare_digest(bytes(mac), self._mac(index, text)):
                raise CMError(
                    Kind.DATA_INTEGRITY,
                    f"audit entry #{index} was changed or moved in the database",
                )
            tree.append(merkle.leaf_hash(text.encode()))
        if len(tree) != size:
            raise CMError(
                Kind.DATA_INTEGRITY,
                f"audit entries #{len(tree)}..#{size - 1} are missing from the database",
            )

    def _check_head(self, head: TreeHead, size: int) -> None:
        signed = (head.size, head.root, head.timestamp_ms, head.signature)
        if signed != self._good_head:
            try:
                head.verify(self._key.public_key())
            except Exception:
                raise CMError(
                    Kind.DATA_INTEGRITY,
                    f"stored audit head of size {head.size} has a bad signature",
                ) from None
        if head.size > size:
            raise CMError(
                Kind.DATA_INTEGRITY,
                f"audit entries #{size}..#{head.size - 1} are missing from the database "
                f"(the head signed at {head.timestamp_ms} covers them)",
            )
        if not hmac.compare_digest(self._tree.root(head.size), head.root):
            raise CMError(
                Kind.DATA_INTEGRITY,
                f"the first {head.size} audit entries no longer have the root of the head "
                f"signed at {head.timestamp_ms}",
            )
        self._good_head = signed

    @staticmethod
    def _last_head(session: Session) -> TreeHead | None:
        row = session.execute(select(_HEADS).order_by(_HEADS.c.size.desc()).limit(1)).first()
        return None if row is None else _head(row)

    @staticmethod
    def stored_head(session: Session, size: int) -> TreeHead | None:
        row = session.execute(select(_HEADS).where(_HEADS.c.size == size)).first()
        return None if row is None else _head(row)

    # ---- heads and proofs ------------------------------------------------------------------

    def tree_head(self, session: Session) -> TreeHead:
        """The signed head of the whole (checked) log: the stored one when the log did not
        grow, else a new one, signed and stored in ``session``'s (write) transaction."""
        with self._lock:
            size = self._verified_size(session)
            last = self._last_head(session)
            if last is not None and last.size == size:
                return last
            root = self._tree.root(size)
        head = TreeHead.sign(self._key, size, root, self._clock_ms())
        session.execute(
            insert(_HEADS),
            {
                "size": head.size,
                "root": head.root,
                "timestamp_ms": head.timestamp_ms,
                "signature": head.signature,
            },
        )
        return head

    def inclusion_proofs(
        self, session: Session, owner: str, indexes: Sequence[int], tree_size: int
    ) -> list[list[bytes]]:
        """The proofs that ``owner``'s entries ``indexes`` (at most :data:`MAX_PAGE`) are in
        the signed tree of ``tree_size`` (one check of the log for all of them)."""
        if len(indexes) > MAX_PAGE:
            raise CMError(Kind.INVALID_ARGUMENT, f"at most {MAX_PAGE} proofs per request")
        wanted = set(indexes)
        owners = dict(
            session.execute(
                select(_ENTRIES.c.idx, _ENTRIES.c.owner_party_id).where(_ENTRIES.c.idx.in_(wanted))
            ).all()
        )
        for index in indexes:
            found = owners.get(index)
            if found is None or not hmac.compare_digest(found.encode(), owner.encode()):
                raise CMError(Kind.NOT_FOUND, f"audit entry #{index} is not one of yours")
            if index >= tree_size:
                raise CMError(
                    Kind.INVALID_ARGUMENT,
                    f"audit entry #{index} is not in the tree of {tree_size}",
                )
        self._signed_size(session, tree_size)
        with self._lock:
            size = self._verified_size(session)
            self._within(tree_size, size)
            return [self._tree.inclusion_proof(index, tree_size) for index in indexes]

    def consistency_proof(self, session: Session, first: int, second: int) -> list[bytes]:
        """The proof that the signed tree of ``first`` entries is a prefix of ``second``'s."""
        if not 0 <= first <= second:
            raise CMError(Kind.INVALID_ARGUMENT, f"tree size {first} is larger than {second}")
        if first:
            self._signed_size(session, first)
        self._signed_size(session, second)
        with self._lock:
            size = self._verified_size(session)
            self._within(second, size)
            return self._tree.consistency_proof(first, second)

    @staticmethod
    def _within(tree_size: int, size: int) -> None:
        if tree_size > size:  # a signed head the last-head check did not cover: a rollback
            raise CMError(
                Kind.DATA_INTEGRITY,
                f"audit entries #{size}..#{tree_size - 1} are missing from the database",
            )

    def _signed_size(self, session: Session, size: int) -> None:
        if self.stored_head(session, size) is None:
            raise CMError(Kind.NOT_FOUND, f"the CM signed no audit head of size {size}")


class _Waiter:
    """A thread blocked in :meth:`GroupCommit.submit` (``done`` is set when its batch
    finished), or a future of :meth:`GroupCommit.submit_soon` (completed in its event loop
    by :func:`_finish`, with the other futures of the batch in that loop)."""

    __slots__ = ("done", "error", "future", "loop")

    def __init__(
        self,
        done: threading.Event | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[None] | None = None,
    ) -> None:
        self.done = done
        self.error: BaseException | None = None
        self.loop, self.future = loop, future


def _finish(waiters: Sequence[_Waiter], error: BaseException | None) -> None:
    """Tell ``waiters`` that their batch committed (``error`` None) or failed: one wake-up
    per event loop for all of its futures (a self-pipe write each would cost more than the
    append), then the blocked threads."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for waiter in waiters:
        waiter.error = error
        if waiter.loop is not None and waiter.future is not None:
            by_loop.setdefault(waiter.loop, []).append(waiter.future)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody awaits them
            loop.call_soon_threadsafe(_settle, futures, error)
    for waiter in waiters:
        if waiter.done is not None:
            waiter.done.set()


def _settle(futures: Sequence[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


#: What a release decision read: ``data_uuid -> cm_data.revision`` (:class:`GroupCommit`).
ReadSet = Mapping[str, int]


class StaleDecision(CMError):
    """A release's read set changed before its entries were appended: nothing was logged and
    the key must not leave; decide the request again (:meth:`GroupCommit.submit_soon`)."""

    def __init__(self) -> None:
        super().__init__(
            Kind.INTERNAL, "the data's policy or keys changed while the request was decided, retry"
        )


class GroupCommit:
    """Commits the audit entries of concurrent decisions that change nothing else (key
    releases, refusals, exports) together: :meth:`submit` queues entries and returns once the
    transaction holding them committed (or raises its error); one writer thread writes
    whatever queued while the previous transaction committed, up to ``max_batch`` decisions,
    in one ``write(batch)`` call; when the previous batch held more than one, it first waits
    up to ``linger`` seconds for more (under load, fewer and larger transactions; a lone
    request never waits). Entries keep their submission order. A commit per release
    would cap releases at the database's commit rate (one fsync each on PostgreSQL).

    ``write`` receives ``[(drafts, read set or None), ...]`` and returns, per decision,
    whether its entries were appended: a decision whose read set (what it was decided on) no
    longer holds in the write transaction is left out and its waiter gets
    :class:`StaleDecision`. ``before_write`` (tests only) runs in the writer thread before
    each batch is written."""

    def __init__(
        self,
        write: Callable[[list[tuple[Sequence[AuditDraft], ReadSet | None]]], list[bool]],
        *,
        max_batch: int = 256,
        linger: float = 0.001,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._linger = linger
        self._queue: queue.SimpleQueue[
            tuple[Sequence[AuditDraft], ReadSet | None, _Waiter] | None
        ] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # held while a batch is written (thread or inline)
        self._thread: threading.Thread | None = None
        self._closed = False
        self.before_write: Callable[[], None] | None = None

    def write_now(self, drafts: Sequence[AuditDraft], read: ReadSet | None = None) -> bool:
        """Write ``drafts`` in the calling thread when no batch is queued or being written
        (an uncontended decision then needs no hand-off to the writer thread): True when
        they are committed (:class:`StaleDecision` when ``read`` no longer holds, the
        write's error when it failed: nothing committed); False, without writing, when the
        writer is busy (queue them instead)."""
        if not self._writing.acquire(blocking=False):
            return False
        try:
            if not self._queue.empty():
                return False
            hook = self.before_write
            if hook is not None:
                hook()
            if not self._write([(drafts, read)])[0]:
                raise StaleDecision()
            return True
        finally:
            self._writing.release()

    def submit(self, drafts: Sequence[AuditDraft], read: ReadSet | None = None) -> None:
        """Queue ``drafts``; return when they are committed (:class:`StaleDecision` when
        ``read`` no longer holds: nothing was committed)."""
        done = threading.Event()
        waiter = self._enqueue(drafts, read, _Waiter(done))
        done.wait()
        if waiter.error is not None:
            raise waiter.error

    def submit_soon(
        self,
        drafts: Sequence[AuditDraft],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[None],
        read: ReadSet | None = None,
    ) -> None:
        """Queue ``drafts`` from any thread and return at once: ``future`` (created in
        ``loop``) completes in ``loop`` when they are committed, or fails with the error
        (:class:`StaleDecision` when ``read`` no longer holds in the append transaction; a
        future already done, e.g. cancelled, is left alone)."""
        self._enqueue(drafts, read, _Waiter(loop=loop, future=future))

    def _enqueue(
        self, drafts: Sequence[AuditDraft], read: ReadSet | None, waiter: _Waiter
    ) -> _Waiter:
        with self._lock:
            if self._closed:
                raise CMError(Kind.INTERNAL, "the audit log is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cm-audit-commit", daemon=True
                )
                self._thread.start()
            self._queue.put((drafts, read, waiter))
        return waiter

    def _run(self) -> None:
        name_native_thread()
        busy = False  # the previous batch had company: wait briefly for more this time
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            deadline = time.monotonic() + (self._linger if busy else 0.0)
            while len(batch) < self._max_batch:
                try:
                    wait = deadline - time.monotonic()
                    more = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                with self._writing:
                    hook = self.before_write
                    if hook is not None:
                        hook()
                    accepted = self._write([(drafts, read) for drafts, read, _ in batch])
            except BaseException as exc:  # every waiter gets the failure: no key leaves
                _finish([waiter for *_, waiter in batch], exc)
            else:
                _finish([w for (*_, w), ok in zip(batch, accepted, strict=True) if ok], None)
                stale = [w for (*_, w), ok in zip(batch, accepted, strict=True) if not ok]
                if stale:
                    _finish(stale, StaleDecision())
            busy = len(batch) > 1
            if stop:
                return

    def close(self) -> None:
        """Finish what is queued, then stop the writer thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
            self._thread = None
        if thread is not None:
            self._queue.put(None)
            thread.join()


def _head(row: Any) -> TreeHead:
    return TreeHead(row.size, bytes(row.root), row.timestamp_ms, bytes(row.signature))


@dataclass(frozen=True)
class RefusalLimiter:
    """Bounds the refusal entries per data_uuid: a burst of ``burst`` entries, then one per
    ``interval`` seconds; refusals over the bound are not logged one by one but counted, and
    the count travels in the next refusal entry of that data_uuid (``details.suppressed``).
    The buckets are rows of ``cm_audit_refusals``, read and written in the append transaction
    (:meth:`admit`), so every worker and replica on the database shares one bound. Keyed by
    data_uuid, not by caller: a caller can mint new identities at will, a data_uuid's log must
    stay bounded whoever asks."""

    burst: int = 20
    interval: float = 3.0

    def admit(
        self, conn: Connection, drafts: Sequence[AuditDraft], now_ms: int
    ) -> list[AuditDraft]:
        """``drafts`` without the refusals (``limited``) over the bound, in ``conn``'s write
        transaction: each admitted refusal carries the count left out before it. The bucket
        rows are locked until the commit; two first refusals of a data_uuid at once collide
        on its key and the transaction is retried."""
        uuids = sorted({d.data_uuid for d in drafts if d.limited})
        if not uuids:
            return list(drafts)
        cost = max(1, int(self.interval * 1000))
        capacity = self.burst * cost
        stored = {
            row.data_uuid: [row.credit_ms, row.stamp_ms, row.suppressed]
            for row in conn.execute(_BUCKETS, {"uuids": uuids})
        }
        state = {u: stored.get(u, [capacity, now_ms, 0]) for u in uuids}
        admitted = []
        for draft in drafts:
            if not draft.limited:
                admitted.append(draft)
                continue
            bucket = state[draft.data_uuid]
            elapsed = max(0, now_ms - bucket[1])  # replicas' clocks may differ: never negative
            bucket[0] = min(capacity, bucket[0] + elapsed)
            bucket[1] = max(bucket[1], now_ms)
            if bucket[0] < cost:
                bucket[2] += 1
                continue
            bucket[0] -= cost
            details = dict(draft.details)
            if bucket[2]:
                details["suppressed"] = bucket[2]
            bucket[2] = 0
            admitted.append(draft._replace(details=details))
        rows = [
            {"b_uuid": u, "credit_ms": b[0], "stamp_ms": b[1], "suppressed": b[2]}
            for u, b in state.items()
        ]
        if updates := [r for r in rows if r["b_uuid"] in stored]:
            conn.execute(_UPDATE_BUCKET, updates)
        if inserts := [r for r in rows if r["b_uuid"] not in stored]:
            conn.execute(
                insert(_REFUSALS),
                [
                    {
                        "data_uuid": r["b_uuid"],
                        "credit_ms": r["credit_ms"],
                        "stamp_ms": r["stamp_ms"],
                        "suppressed": r["suppressed"],
                    }
                    for r in inserts
                ],
            )
        return admitted


_ENTRIES = cast(Table, AuditEntryRow.__table__)
_SIZE = cast(Table, AuditSizeRow.__table__)
_HEADS = cast(Table, AuditHeadRow.__table__)
_REFUSALS = cast(Table, AuditRefusalBucket.__table__)
_BUCKETS = (
    select(_REFUSALS)
    .where(_REFUSALS.c.data_uuid.in_(bindparam("uuids", expanding=True)))
    .order_by(_REFUSALS.c.data_uuid)
    .with_for_update()
)
_UPDATE_BUCKET = (
    update(_REFUSALS)
    .where(_REFUSALS.c.data_uuid == bindparam("b_uuid"))
    .values(
        credit_ms=bindparam("credit_ms"),
        stamp_ms=bindparam("stamp_ms"),
        suppressed=bindparam("suppressed"),
    )
)
_GROW = update(_SIZE).where(_SIZE.c.id == 1).values(size=_SIZE.c.size + bindparam("n"))
_GROW_RETURNING = _GROW.returning(_SIZE.c.size)
_SIZE_NOW = select(_SIZE.c.size).where(_SIZE.c.id == 1)
_COUNT_BELOW = select(func.count()).select_from(_ENTRIES).where(_ENTRIES.c.idx < bindparam("n"))
