"""The SQLite writer lock serializes write transactions across processes and threads."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from trustflow_core.roles.capsule_manager.writer_lock import WriterLock

HOLDER = """
import sys, time
from trustflow_core.roles.capsule_manager.writer_lock import WriterLock
with WriterLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(0.6)
print("released", flush=True)
"""


def test_another_process_holding_the_lock_blocks_until_it_lets_go(tmp_path: Path) -> None:
    database = str(tmp_path / "cm.db")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, database], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    lock = WriterLock(database)
    started = time.monotonic()
    with lock:
        waited = time.monotonic() - started
        assert holder.stdout.readline() == "released\n"  # it let go before we got in
    lock.close()
    holder.wait(10)
    holder.stdout.close()
    assert waited > 0.2
    assert (tmp_path / "cm.db.writer-lock").stat().st_mode & 0o777 == 0o600


def test_threads_of_one_process_take_turns(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path / "cm.db"))
    inside, overlaps = [0], []

    def writer() -> None:
        for _ in range(200):
            with lock:
                inside[0] += 1
                overlaps.append(inside[0])
                inside[0] -= 1

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lock.close()
    assert set(overlaps) == {1}


def test_in_memory_databases_need_no_lock_file(tmp_path: Path) -> None:
    with WriterLock(":memory:"), WriterLock(None):
        pass
    assert list(tmp_path.iterdir()) == []
