#!/usr/bin/env python3
"""The audit log's heads and proofs with a long log (docs/audit.md#performance): the time to
sign a new head after one more entry, and to serve 500 inclusion proofs, with the verified
prefix kept between calls (the CM's default) and with the whole log re-checked on every call
(``full_check_seconds = 0``; what every call cost before the prefix was kept, except for
proofs, which the old code also built in O(n) each: shown as "500 proofs, O(n) each").

    .venv/bin/python benchmarks/audit_heads.py [--entries 10000] [--repeat 20]
        [--url sqlite|postgresql+psycopg://postgres@127.0.0.1:5432/DB]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from trustflow_core.roles.capsule_manager import identity_keys
from trustflow_core.roles.capsule_manager.audit_log import AuditDraft, AuditLog, mac_key
from trustflow_core.roles.capsule_manager.database import Database
from trustflow_core.roles.capsule_manager.sealing import Sealer
from trustflow_core.roles.capsule_manager_protocol import merkle


def draft(i: int) -> AuditDraft:
    details = {
        "app_party": "app-" + "x" * 40,
        "cert_sha256": "ab" * 32,
        "columns": ["id", "amount"],
        "measurement": "cd" * 32,
        "op": "psi",
        "platform": "SIM",
        "resource_uri": f"d-{i}",
        "rpc": "get_data_keys",
        "scope": "default",
    }
    return AuditDraft("key_release", "owner", f"d-{i}", details)


def timed(fn: object, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, max(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--url", default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'cm.db'}" if args.url == "sqlite" else args.url
        key = os.urandom(32)
        store = Database(url, Sealer(key))
        store.create_schema()
        log = AuditLog(identity_keys.generate().private_key, mac_key(key))
        store.audit = log
        try:
            for start in range(0, args.entries, 1000):
                n = min(1000, args.entries - start)
                store._append_audit([([draft(start + i) for i in range(n)], None)])
            print(f"{args.entries} entries on {url.split(':')[0]}")
            counter = [args.entries]

            def new_head() -> None:
                store._append_audit([([draft(counter[0])], None)])
                counter[0] += 1
                store.audit_tree_head()

            def proofs() -> None:
                size = store.audit_tree_head().size
                step = max(1, size // 500)
                store.audit_inclusion_proofs("owner", list(range(0, size, step))[:500], size)

            for label, seconds in (("prefix kept", 300.0), ("full check every call", 0.0)):
                log.full_check_seconds = seconds
                store.audit_tree_head()  # warm
                med, worst = timed(new_head, args.repeat)
                print(
                    f"  {label:24} new head after 1 entry: median {med:8.2f} ms, max {worst:8.2f}"
                )
                med, worst = timed(proofs, max(3, args.repeat // 4))
                print(
                    f"  {label:24} head + 500 proofs:      median {med:8.2f} ms, max {worst:8.2f}"
                )
            leaves = [merkle.leaf_hash(str(i).encode()) for i in range(counter[0])]
            step = max(1, len(leaves) // 500)
            start = time.perf_counter()
            for i in list(range(0, len(leaves), step))[:500]:
                merkle.inclusion_proof(i, leaves)
            elapsed = (time.perf_counter() - start) * 1000
            print(f"  500 proofs, O(n) each (the old code's proofs): {elapsed:8.2f} ms")
        finally:
            store.close()


if __name__ == "__main__":
    main()
