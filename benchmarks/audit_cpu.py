#!/usr/bin/env python3
"""Where the audit log's CPU per GetDataKeys goes (docs/audit.md#performance): two CMs in this
process, one with the audit on and one off, each on its own event loop thread and database,
driven by ``--clients`` concurrent gRPC clients from the main thread in interleaved rounds.
Prints each CM's CPU per request by thread -- its event loop, its executor (the decisions and
sealing), the group commit's writer (``cm-audit-commit``) and gRPC's native threads (the
clients' share of those is counted too, alike for both) -- read from /proc per thread, so the
load of other processes on a shared machine does not count; and the sizes of the group
commit's batches (how many releases share one append).

    .venv/bin/python benchmarks/audit_cpu.py [--backend postgresql|sqlite|mysql]
        [--clients 16] [--seconds 3] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from capsule_manager import drive, prepare

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(tid: int) -> float:
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_by_thread() -> dict[str, float]:
    """CPU seconds so far of every thread but the main one (the clients' event loop), by
    kind: a CM's event loop (``loop-on`` / ``loop-off``), ``executor`` (asyncio's worker threads
    of both CMs), ``cm-audit-commit``, ``native`` (threads Python did not start: gRPC's)."""
    main = threading.main_thread().native_id
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: collections.defaultdict[str, float] = collections.defaultdict(float)
    for entry in os.listdir("/proc/self/task"):
        tid = int(entry)
        if tid == main:
            continue
        name = names.get(tid, "native")
        if name.startswith("asyncio_"):
            name = "executor"
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            out[name] += thread_cpu(tid)
    return out


class CMThread:
    """A CM on its own event loop thread (``loop-<mode>``), started at construction."""

    def __init__(self, url: str, audit: bool, data_dir: Path) -> None:
        from trustflow_core.roles.capsule_manager.settings import CMSettings

        self.settings = CMSettings(
            port=0, plat="sim", data_dir=data_dir, storage_url=url, audit=audit
        )
        self.batches: collections.Counter[int] = collections.Counter()
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()),
            name=f"loop-{'on' if audit else 'off'}",
            daemon=True,
        )
        self._thread.start()
        if not self._ready.wait(60):
            raise SystemExit("the CM did not start")

    async def _main(self) -> None:
        from trustflow_core.manager import get_plugin_manager
        from trustflow_core.roles.capsule_manager.server import CapsuleManager

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        cm = CapsuleManager(self.settings, pm=get_plugin_manager())
        self.port = await cm.start()
        if cm.store is not None:  # count the batches the group commit writes
            commits = cm.store.audit_commits
            write = commits._write

            def counted(batch: list[Any]) -> list[bool]:
                self.batches[len(batch)] += 1
                return write(batch)

            commits._write = counted
        self._ready.set()
        await self._stop.wait()
        await cm.stop()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


async def measure(args: argparse.Namespace) -> None:
    from trustflow_core.manager import get_plugin_manager
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2_grpc as cm_grpc,
    )
    from trustflow_core.testing.databases import throwaway_database

    pm = get_plugin_manager()
    with tempfile.TemporaryDirectory() as on_dir, tempfile.TemporaryDirectory() as off_dir:
        dirs = {"on": Path(on_dir), "off": Path(off_dir)}
        with (
            throwaway_database(args.backend, dirs["on"]) as on_url,
            throwaway_database(args.backend, dirs["off"]) as off_url,
        ):
            cms = {
                "on": CMThread(on_url, True, dirs["on"]),
                "off": CMThread(off_url, False, dirs["off"]),
            }
            options = [("grpc.use_local_subchannel_pool", 1)]
            state: dict[str, dict[str, Any]] = {}
            channels = []
            try:
                for mode, cm in cms.items():
                    target = f"127.0.0.1:{cm.port}"
                    pool, _ = await prepare(target, argparse.Namespace(create_requests=0), pm)
                    mine = [
                        grpc.aio.insecure_channel(target, options=options)
                        for _ in range(args.clients)
                    ]
                    channels += mine
                    calls: Sequence[Callable[[Any], Any]] = [
                        cm_grpc.CapsuleManagerStub(c).GetDataKeys for c in mine
                    ]
                    await drive(list(calls), pool, 0.5, True)  # warm-up
                    cm.batches.clear()
                    state[mode] = {"pool": pool, "calls": calls, "requests": 0, "elapsed": 0.0}
                    state[mode]["cpu"] = collections.defaultdict(float)
                for round_ in range(args.rounds):
                    for mode in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                        before = cpu_by_thread()
                        elapsed, latencies = await drive(
                            list(state[mode]["calls"]), state[mode]["pool"], args.seconds, True
                        )
                        after = cpu_by_thread()
                        state[mode]["requests"] += len(latencies)
                        state[mode]["elapsed"] += elapsed
                        for name, seconds in after.items():
                            if name.startswith("loop-") and name != f"loop-{mode}":
                                continue  # the idle CM's loop
                            state[mode]["cpu"][name.replace(f"loop-{mode}", "loop")] += (
                                seconds - before.get(name, 0.0)
                            )
            finally:
                for channel in channels:
                    await channel.close()
                for cm in cms.values():
                    cm.close()
    kinds = ("loop", "executor", "cm-audit-commit", "native")
    print(
        f"{args.backend}, {args.clients} clients, {args.rounds} rounds of {args.seconds:.0f} s; "
        "CPU ms per GetDataKeys by thread (this process, both CMs' threads; native = gRPC)"
    )
    print(f"{'audit':<6} {'req/s':>7} " + " ".join(f"{k:>16}" for k in kinds) + f" {'total':>8}")
    totals = {}
    for mode in ("on", "off"):
        s = state[mode]
        n = max(1, s["requests"])
        cpu = {k: s["cpu"].get(k, 0.0) / n * 1000 for k in kinds}
        totals[mode] = sum(cpu.values())
        row = " ".join(f"{cpu[k]:16.3f}" for k in kinds)
        print(f"{mode:<6} {s['requests'] / s['elapsed']:7.1f} {row} {totals[mode]:8.2f}")
    print(f"audit on - off: {totals['on'] - totals['off']:+.2f} ms of CPU per request")
    sizes = cms["on"].batches
    count = sum(sizes.values())
    releases = sum(k * v for k, v in sizes.items())
    print(
        f"group commit: {count} batches, {releases / max(1, count):.2f} releases per batch "
        f"(sizes: {dict(sorted(sizes.items()))})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="postgresql")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as sim_dir:
        os.environ["TRUSTFLOW_SIM_DIR"] = sim_dir
        os.environ["TRUSTFLOW_LOAD_PLUGINS"] = "channel_jwe,tee_sim"
        asyncio.run(measure(args))


if __name__ == "__main__":
    main()
