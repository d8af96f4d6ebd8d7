"""The replay table's buckets (``roles.gateway.replay``): a full bucket evicts the id it has
held longest and raises its own floor, ids that left the window free their slots, a busy
shared lock is a 503, each refusal has its metrics cause. The guard's rules through a real
gateway are in ``test_core_roles_gateway_hardening.py``; the table shared by ``--workers`` in
``test_core_online_processes.py``."""

from __future__ import annotations

import hashlib
import itertools
import json
import mmap
import multiprocessing
import os
import random

import pytest
from test_core_roles_gateway_hardening import rfc_envelope

from trustflow_core.roles.gateway.freshness import NotFresh
from trustflow_core.roles.gateway.replay import MAX_WIDTH, TAG_SIZE, ReplayTable, geometry
from trustflow_core.roles.gateway.shared_replay import SharedReplayCache

KEY = bytes(range(16))
BUCKETS = 4
SIZE = BUCKETS * MAX_WIDTH


def bucket_of(jti: str) -> int:
    """The bucket the table picks for ``jti`` (its keyed hash's first 8 bytes)."""
    digest = hashlib.blake2b(jti.encode(), digest_size=16, key=KEY).digest()
    return int.from_bytes(digest[:8], "little") % BUCKETS


def ids_in(bucket: int, count: int, prefix: str = "id") -> list[str]:
    found = (f"{prefix}{i}" for i in itertools.count())
    return list(itertools.islice((j for j in found if bucket_of(j) == bucket), count))


class BusyLock:
    """A shared lock that another process holds for longer than the table waits."""

    def acquire(self, block: bool, timeout: float) -> bool:
        return False

    def release(self) -> None:
        raise AssertionError("never acquired")


def refusal(table: ReplayTable, jti: str, iat: float, horizon: float) -> tuple[int, str] | None:
    try:
        table.add(jti, iat, horizon)
    except NotFresh as exc:
        return exc.status, str(exc)
    return None


def test_geometry_covers_small_and_large_caches():
    assert geometry(3) == (1, 3, 16 + (8 + TAG_SIZE) * 3)
    assert geometry(MAX_WIDTH * 1000)[:2] == (1000, MAX_WIDTH)
    assert geometry(MAX_WIDTH + 1)[:2] == (2, MAX_WIDTH)  # rounded up, never fewer slots
    with pytest.raises(ValueError, match="wrong size"):
        ReplayTable(mmap.mmap(-1, 10), SIZE, KEY)


def test_a_full_bucket_evicts_its_longest_held_and_raises_only_its_own_floor():
    table = ReplayTable(mmap.mmap(-1, geometry(SIZE)[2]), SIZE, KEY)
    crowded = ids_in(0, MAX_WIDTH + 1)
    for age, jti in enumerate(crowded[:MAX_WIDTH]):
        assert refusal(table, jti, 1000.0 + age, 900.0) is None
    assert refusal(table, crowded[MAX_WIDTH], 2000.0, 900.0) is None  # evicts iat 1000
    evicted = refusal(table, crowded[0], 1000.0, 900.0)
    assert evicted is not None and evicted[0] == 400 and "older than the replay cache" in evicted[1]
    assert refusal(table, ids_in(0, 1, "late")[0], 999.0, 900.0)[0] == 400
    for jti in crowded[1:]:  # still remembered
        assert refusal(table, jti, 1500.0, 900.0) == (
            409,
            "replayed JWE: this jti was already accepted",
        )
    assert refusal(table, ids_in(1, 1, "other")[0], 950.0, 900.0) is None  # its own floor


def test_ids_that_left_the_window_free_their_slots():
    table = ReplayTable(mmap.mmap(-1, geometry(SIZE)[2]), SIZE, KEY)
    early, later = ids_in(2, MAX_WIDTH), ids_in(2, MAX_WIDTH, "later")
    for jti in early:
        table.add(jti, 100.0, 50.0)
    assert refusal(table, early[0], 100.0, 50.0)[0] == 409
    for jti in later:  # the window moved past iat 100: every slot is free again
        assert refusal(table, jti, 500.0, 400.0) is None
    assert refusal(table, early[0], 400.0, 400.0) is None  # forgotten with its window


def test_a_busy_shared_lock_refuses_with_503():
    table = ReplayTable(mmap.mmap(-1, geometry(SIZE)[2]), SIZE, KEY, BusyLock())
    status, message = refusal(table, "a", 1000.0, 900.0)
    assert status == 503 and "replay cache shared by the workers" in message


def _add_in_child(cache: SharedReplayCache, jti: str, iat: float) -> None:
    cache.table().add(jti, iat, iat - 60)


@pytest.mark.parametrize("memory", ["memfd", "unlinked temporary file"])
def test_a_spawned_process_writes_into_the_same_table(memory, monkeypatch):
    if memory != "memfd":  # as on a system without memfd_create
        monkeypatch.delattr(os, "memfd_create")
    cache = SharedReplayCache(SIZE)
    child = multiprocessing.get_context("spawn").Process(
        target=_add_in_child, args=(cache, "from-child", 1000.0)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert refusal(cache.table(), "from-child", 1000.0, 940.0)[0] == 409
    assert refusal(cache.table(), "from-parent", 1000.0, 940.0) is None


@pytest.mark.parametrize("cache_size", [1, 3, MAX_WIDTH, MAX_WIDTH + 1, 40, 1024])
@pytest.mark.parametrize("seed", range(4))
def test_random_traffic_never_lets_a_live_replay_through(cache_size, seed):
    """Against a model of every id accepted so far: resending an accepted (jti, iat) while
    its iat is inside the window is always refused; 409 only for an id accepted before; and
    a table with room for every id never refuses by its floor."""
    rng = random.Random(seed)
    table = ReplayTable(mmap.mmap(-1, geometry(cache_size)[2]), cache_size, KEY)
    accepted: dict[str, list[float]] = {}
    horizon = 1000.0
    for _ in range(3000):
        horizon += rng.choice((0.0, 0.0, 0.5, 3.0))
        if accepted and rng.random() < 0.4:  # a replay of something accepted
            jti = rng.choice(sorted(accepted))
            iat = rng.choice(accepted[jti])
        else:
            jti = f"id{rng.randrange(60)}"
            iat = horizon + rng.choice((0.0, 1.0, 5.0, 20.0, 60.0))
        outcome = refusal(table, jti, iat, horizon)
        live_before = [t for t in accepted.get(jti, []) if t >= horizon]
        if iat in live_before:
            assert outcome is not None, (jti, iat, horizon)
        if outcome is not None and outcome[0] == 409:
            assert live_before, (jti, iat, horizon)
        if cache_size == 1024:
            assert outcome is None or outcome[0] == 409, (jti, iat, outcome)
        if outcome is None:
            accepted.setdefault(jti, []).append(iat)


def test_each_freshness_refusal_has_its_own_cause_at_the_jwe_filter():
    """What the gateway answers and counts (``trustflow_jwe_failures_total{cause}``): an
    operator tells a replay from a cache too small for the traffic and from a stale clock."""
    import time

    from cryptography.hazmat.primitives.asymmetric import rsa

    from trustflow_core.channel import Jwe
    from trustflow_core.manager import get_plugin_manager
    from trustflow_core.registry import ENVELOPE_CHANNEL, backend_class
    from trustflow_core.roles.gateway.freshness import FreshnessConfig
    from trustflow_core.roles.gateway.jwe_filter import (
        CAUSES,
        PROFILES,
        EnvelopeRejected,
        JweFilter,
    )

    cls = backend_class(get_plugin_manager(), ENVELOPE_CHANNEL, "jwe")
    key = rsa.generate_private_key(65537, 2048)
    channels = {p: cls.from_settings({"profile": p}) for p in PROFILES}
    now = int(time.time())

    def envelope(iat: int, jti: str):
        return Jwe.from_dict(json.loads(rfc_envelope(key.public_key(), b"x", iat=iat, jti=jti)))

    def cause(jwe_filter: JweFilter, jwe) -> tuple[int, str] | None:
        try:
            jwe_filter.open(jwe, "application/jose+json")
        except EnvelopeRejected as refused:
            assert refused.cause in CAUSES
            return refused.status, refused.cause
        return None

    one_slot = JweFilter(key, channels, FreshnessConfig("required", 300, 1))
    first = envelope(now - 10, "first")
    assert cause(one_slot, first) is None
    assert cause(one_slot, first) == (409, "replay")
    assert cause(one_slot, envelope(now - 20, "second")) is None  # evicts "first": floor now-10
    assert cause(one_slot, envelope(now - 15, "third")) == (400, "replay_cache_full")
    assert cause(one_slot, envelope(now - 1000, "old")) == (400, "not_fresh")
    busy = ReplayTable(mmap.mmap(-1, geometry(SIZE)[2]), SIZE, KEY, BusyLock())
    shared = JweFilter(key, channels, FreshnessConfig("required"), replay_table=busy)
    assert cause(shared, envelope(now, "any")) == (503, "replay_cache_unavailable")
