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


def test_refusals_over_the_bound_are_counted_and_carried() -> None:
    now = [0.0]
    limiter = RefusalLimiter(burst=2, interval=10.0, clock=lambda: now[0])
    assert [limiter.admit("d") for _ in range(5)] == [0, 0, None, None, None]
    assert limiter.admit("other") == 0  # per data_uuid
    now[0] = 10.0
    assert limiter.admit("d") == 3  # the three left out travel with the next entry
    assert limiter.admit("d") is None


def test_the_limiter_forgets_the_least_recently_used_data_uuid() -> None:
    limiter = RefusalLimiter(burst=1, interval=1000.0, max_tracked=2, clock=lambda: 0.0)
    assert limiter.admit("a") == 0 and limiter.admit("b") == 0
    assert limiter.admit("a") is None  # a is now the most recently used
    assert limiter.admit("c") == 0  # b is forgotten, not a
    assert limiter.admit("a") is None
    assert limiter.admit("b") == 0


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
