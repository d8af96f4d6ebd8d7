"""The audit log's parts without a server: the refusal limiter's bound and carried count, the
group commit's batching and error propagation, and the entry and head formats."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from trustflow_core.errors import InvalidInput
from trustflow_core.roles.capsule_manager import identity_keys
from trustflow_core.roles.capsule_manager.audit_log import (
    AuditDraft,
    GroupCommit,
    RefusalLimiter,
    StaleDecision,
)
from trustflow_core.roles.capsule_manager_protocol.audit import (
    AuditVerificationError,
    TreeHead,
    encode_entry,
    parse_entry,
)
from trustflow_core.roles.capsule_manager_protocol.errors import CMError, Kind


def _refusal(uuid: str) -> AuditDraft:
    return AuditDraft("key_refusal", "owner", uuid, {"reason": "r"}, True)


def _admit(limiter: RefusalLimiter, engine: Any, uuids: list[str], now_ms: int) -> list[Any]:
    """What each refusal of ``uuids`` gets, in one transaction: None (left out) or its
    carried count."""
    with engine.begin() as conn:
        kept = limiter.admit(conn, [_refusal(u) for u in uuids], now_ms)
    out: list[Any] = []
    remaining = list(kept)
    for u in uuids:  # kept drafts are in order; map them back
        if remaining and remaining[0].data_uuid == u and len(out) < len(uuids):
            out.append(remaining.pop(0).details.get("suppressed", 0))
        else:
            out.append(None)
    return out


@pytest.fixture
def bucket_db(tmp_path: Any) -> Any:
    from sqlalchemy import create_engine

    from trustflow_core.roles.capsule_manager.db_models import Base

    engine = create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_refusals_over_the_bound_are_counted_and_carried(bucket_db: Any) -> None:
    limiter = RefusalLimiter(burst=2, interval=10.0)
    assert _admit(limiter, bucket_db, ["d"] * 5, 0) == [0, 0, None, None, None]
    assert _admit(limiter, bucket_db, ["other"], 0) == [0]  # per data_uuid
    assert _admit(limiter, bucket_db, ["d"], 9_999) == [None]  # not a whole token yet
    assert _admit(limiter, bucket_db, ["d"], 10_000) == [4]  # the four left out travel along
    assert _admit(limiter, bucket_db, ["d"], 10_000) == [None]
    # frequent refusals still refill (credit is kept to the millisecond, never rounded away)
    fast = RefusalLimiter(burst=1, interval=1.0)
    assert _admit(fast, bucket_db, ["e"], 0) == [0]
    results = [_admit(fast, bucket_db, ["e"], 7 * i)[0] for i in range(1, 150)]
    assert [r for r in results if r is not None] == [142]  # after 1 s (i = 143), with count


def test_the_bucket_state_is_in_the_database(bucket_db: Any) -> None:
    """Two limiters (two workers, two replicas) on one database share the bucket."""
    first, second = RefusalLimiter(burst=2, interval=10.0), RefusalLimiter(burst=2, interval=10.0)
    assert _admit(first, bucket_db, ["d"], 0) == [0]
    assert _admit(second, bucket_db, ["d"], 0) == [0]
    assert _admit(first, bucket_db, ["d"], 0) == [None]
    assert _admit(second, bucket_db, ["d"], 0) == [None]
    assert _admit(first, bucket_db, ["d"], 10_000) == [2]
    # a replica whose clock is behind does not refill the bucket
    assert _admit(second, bucket_db, ["d"], 5_000) == [None]


def draft(n: int) -> AuditDraft:
    return AuditDraft("key_release", "owner", f"d-{n}", {})


def test_group_commit_batches_concurrent_submissions_in_order() -> None:
    batches: list[list[str]] = []
    gate = threading.Event()

    def write(batch: list[tuple[Sequence[AuditDraft], Any]]) -> list[bool]:
        gate.wait(5)  # the first batch commits slowly: the others queue meanwhile
        batches.append([d.data_uuid for drafts, _ in batch for d in drafts])
        return [True] * len(batch)

    commits = GroupCommit(write)
    threads = [threading.Thread(target=commits.submit, args=([draft(i)],)) for i in range(8)]
    threads[0].start()
    time.sleep(0.1)
    for t in threads[1:]:
        t.start()
        time.sleep(0.01)
    gate.set()
    for t in threads:
        t.join(5)
    commits.close()
    assert batches[0] == ["d-0"] and len(batches) < 8
    assert [u for b in batches for u in b] == [f"d-{i}" for i in range(8)]


def test_group_commit_fails_only_the_decisions_whose_read_set_changed() -> None:
    """``write`` leaves out a decision whose read set no longer holds: its waiter gets
    StaleDecision, the others of the batch commit."""
    revisions = {"d-1": 1, "d-2": 7}
    written: list[str] = []

    def write(batch: list[tuple[Sequence[AuditDraft], Any]]) -> list[bool]:
        ok = [read is None or all(revisions[u] == r for u, r in read.items()) for _, read in batch]
        written.extend(
            d.data_uuid for (drafts, _), good in zip(batch, ok, strict=True) if good for d in drafts
        )
        return ok

    commits = GroupCommit(write)
    commits.submit([draft(1)], {"d-1": 1})
    with pytest.raises(StaleDecision, match="retry"):
        commits.submit([draft(2)], {"d-2": 6})
    commits.submit([draft(3)])
    commits.close()
    assert written == ["d-1", "d-3"]


def test_group_commit_failure_reaches_every_waiter_and_the_next_batch_works() -> None:
    calls = []

    def write(batch: list[tuple[Sequence[AuditDraft], Any]]) -> list[bool]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise CMError(Kind.INTERNAL, "storage conflict, try again")
        return [True] * len(batch)

    commits = GroupCommit(write)
    with pytest.raises(CMError, match="storage conflict"):
        commits.submit([draft(1)])

    async def later() -> None:
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[None] = loop.create_future()
        # queued from another thread, as a GetDataKeys worker does
        await asyncio.to_thread(commits.submit_soon, [draft(2)], loop, committed)
        await committed

    asyncio.run(later())
    commits.close()
    assert calls == [1, 1]
    with pytest.raises(CMError, match="closed"):
        commits.submit([draft(3)])


def test_entries_are_canonical_and_heads_signed() -> None:
    text = encode_entry(3, 1000, "policy_set", "o", "d-1", {"scope": "s", "rule_ids": ["r"]})
    assert parse_entry(text.decode(), "entry #3")["index"] == 3
    with pytest.raises(AuditVerificationError, match="canonical"):
        parse_entry(text.decode().replace(",", ", "), "entry #3")
    with pytest.raises(InvalidInput, match="kind"):
        encode_entry(0, 0, "coffee", "o", "d", {})
    key = identity_keys.generate().private_key
    head = TreeHead.sign(key, 4, bytes(32), 1000)
    head.verify(key.public_key())
    assert TreeHead.from_dict(head.to_dict()) == head
    forged = TreeHead(5, head.root, head.timestamp_ms, head.signature)
    with pytest.raises(AuditVerificationError, match="size 5 is not signed"):
        forged.verify(key.public_key())


def test_the_incremental_tree_gives_the_rfc_roots_and_proofs() -> None:
    """merkle.Tree (the CM's verified prefix) against the recursive RFC 9162 definitions,
    for every prefix, leaf and earlier size of trees up to 40 leaves, and after truncation."""
    import hashlib

    from trustflow_core.roles.capsule_manager_protocol import merkle

    leaves = [merkle.leaf_hash(hashlib.sha256(bytes([i])).digest()) for i in range(40)]
    tree = merkle.Tree()
    for n in range(41):
        if n:
            tree.append(leaves[n - 1])
        for size in range(n + 1):
            assert tree.root(size) == merkle.root(leaves[:size])
            for i in range(size):
                assert tree.inclusion_proof(i, size) == merkle.inclusion_proof(i, leaves[:size])
            for first in range(size + 1):
                expected = merkle.consistency_proof(first, leaves[:size])
                assert tree.consistency_proof(first, size) == expected
    tree.truncate(13)
    assert len(tree) == 13 and tree.root(13) == merkle.root(leaves[:13])
    tree.append(leaves[0])
    assert tree.root(14) == merkle.root([*leaves[:13], leaves[0]])


def test_write_now_writes_in_the_caller_only_when_the_writer_is_idle() -> None:
    """GroupCommit.write_now (SQLite's uncontended releases): writes at once when nothing is
    queued or being written; refuses (False, nothing written) while a batch is written; a
    stale read set raises StaleDecision with nothing written."""
    written: list[str] = []
    gate, started = threading.Event(), threading.Event()

    def write(batch: list[tuple[Sequence[AuditDraft], Any]]) -> list[bool]:
        if any(d.data_uuid == "d-slow" for drafts, _ in batch for d in drafts):
            started.set()
            gate.wait(5)
        ok = [read is None or read.get("d", 0) == 1 for _, read in batch]
        written.extend(
            d.data_uuid for (drafts, _), good in zip(batch, ok, strict=True) if good for d in drafts
        )
        return ok

    commits = GroupCommit(write)
    assert commits.write_now([draft(1)]) is True
    with pytest.raises(StaleDecision):
        commits.write_now([draft(2)], {"d": 0})
    slow = threading.Thread(
        target=commits.submit, args=([AuditDraft("key_release", "o", "d-slow", {})],)
    )
    slow.start()
    assert started.wait(5)
    assert commits.write_now([draft(3)]) is False  # the writer thread is busy
    gate.set()
    slow.join(5)
    commits.close()
    assert written == ["d-1", "d-slow"]
