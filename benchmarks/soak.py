#!/usr/bin/env python3
"""Capsule Manager soak: a real CM process driven by ``--clients`` concurrent clients for
``--seconds``, watching it for errors and for growth of its memory and descriptors.

The CM runs as its own process (``trustflow capsule-manager --plat sim``, SQLite in a
temporary data directory unless ``--storage-url`` names another database; ``--workers``). Half
of the clients send GetDataKeys (a SIM-attested app, a CEL-constrained rule evaluated on every
request), the other half CreateDataKeys (an owner storing 2 new keys per request); every
request is sealed afresh like the upstream SDK does (new content key and IV), every response
opened and checked, and each client has its own connection. Every ``--interval`` seconds the
CM's resident memory (VmRSS), open descriptors and threads are read from /proc (summed over its
processes). The first sample after ``--warmup`` seconds is the baseline.

Printed: requests and errors per RPC, p50/p99 latency, and per resource the baseline, end, max,
least-squares slope per minute and growth (end - baseline). Exit status 1 on any failed
request, a CM that exits, or growth above ``--max-rss-growth-mib`` / ``--max-fd-growth``
(printed with the figures); 0 otherwise.

    .venv/bin/python benchmarks/soak.py [--seconds 60] [--clients 16] [--workers 1]
        [--interval 5] [--warmup 10] [--storage-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _loopback import capsule_manager_process

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Sample:
    at: float
    rss: int  # bytes
    fds: int
    threads: int
    requests: int


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + sum(self.errors.values())


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (Linux /proc)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [pid, *(p for c in children for p in process_tree(int(c)))]


def sample(pid: int, requests: int) -> Sample:
    """RSS, descriptors and threads of the CM's processes now."""
    rss = fds = threads = 0
    for p in process_tree(pid):
        try:
            rss += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
            fds += len(os.listdir(f"/proc/{p}/fd"))
            threads += len(os.listdir(f"/proc/{p}/task"))
        except OSError:  # a process that ended meanwhile
            continue
    return Sample(time.monotonic(), rss, fds, threads, requests)


@contextmanager
def capsule_manager(
    data_dir: Path, env: dict[str, str], args: argparse.Namespace
) -> Iterator[tuple[str, subprocess.Popen[str], list[str]]]:
    """Start the CM; yield its target, process and the lines it logs (kept from a thread)."""
    extra = ["--data-dir", str(data_dir), "--workers", str(args.workers)]
    if args.storage_url:
        extra += ["--storage-url", args.storage_url]
    with capsule_manager_process(extra, env) as running:
        yield running


async def soak(target: str, proc: subprocess.Popen[str], args: argparse.Namespace) -> Any:
    from trustflow_core.attestation import ra_user_data
    from trustflow_core.manager import get_plugin_manager
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2 as cm_pb2,
    )
    from trustflow_core.registry import ATTESTER, backend_class
    from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient
    from trustflow_core.roles.capsule_manager_client.keyexchange import ephemeral_credentials
    from trustflow_core.roles.capsule_manager_protocol.reports import report_to_pb
    from trustflow_core.wire import serialize_canonical

    pm = get_plugin_manager()
    owner = ephemeral_credentials("owner", key_size=2048)
    app = ephemeral_credentials("app", key_size=2048)
    run_id = os.urandom(4).hex()
    uuid = f"soak-{run_id}"
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    clients = [
        CapsuleManagerClient(target, pm=pm, channel_options=own_connection)
        for _ in range(args.clients)
    ]
    setup = clients[0]
    await setup.create_data_keys(owner, [(uuid, base64.b64encode(os.urandom(16)).decode())])
    rule = cm_pb2.Rule(
        rule_id="r",
        grantee_party_ids=[app.party_id],
        columns=["*"],
        global_constraints=['r.env.tee.platform == "sim" && r.op_name.startsWith("soak")'],
    )
    rule.op_constraints.add(op_name="soak")
    await setup.create_data_policy(owner, "default", uuid, [rule])
    rr = cm_pb2.ResourceRequest(initiator_party_id=app.party_id, scope="default", op_name="soak")
    rr.resources.add(resource_uri=uuid)
    attester = backend_class(pm, ATTESTER, "sim").from_settings()
    digest = ra_user_data(app.chain_pems[0].encode(), serialize_canonical(rr))
    report = report_to_pb(await attester.generate(digest))

    tally = Tally({"GetDataKeys": [], "CreateDataKeys": []})
    samples: list[Sample] = []
    started = time.monotonic()
    stop = started + args.seconds

    async def get_keys(client: CapsuleManagerClient, _index: int, _n: int) -> None:
        keys = await client.get_data_keys(app, rr, report)
        if [k.resource_uri for k in keys] != [uuid]:
            raise RuntimeError(f"unexpected keys {[k.resource_uri for k in keys]}")

    async def create_keys(client: CapsuleManagerClient, index: int, n: int) -> None:
        uris = [f"{uuid}-c{index}-{n}/p{j}" for j in range(2)]
        await client.create_data_keys(
            owner, [(u, base64.b64encode(os.urandom(16)).decode()) for u in uris]
        )

    async def run_client(index: int, client: CapsuleManagerClient) -> None:
        rpc, call = ("GetDataKeys", get_keys) if index % 2 == 0 else ("CreateDataKeys", create_keys)
        n = 0
        while time.monotonic() < stop and proc.poll() is None:
            n += 1
            began = time.perf_counter()
            try:
                await call(client, index, n)
            except Exception as exc:  # every failure is counted and reported
                tally.errors[f"{rpc}: {type(exc).__name__}: {str(exc)[:160]}"] += 1
                continue
            tally.latencies[rpc].append(time.perf_counter() - began)

    async def sampler() -> None:
        warm = started + args.warmup
        while (now := time.monotonic()) < stop and proc.poll() is None:
            if now < warm:
                await asyncio.sleep(min(warm - now, stop - now))
                continue
            samples.append(sample(proc.pid, tally.requests))
            await asyncio.sleep(min(args.interval, max(0.0, stop - now)))
        if proc.poll() is None:
            samples.append(sample(proc.pid, tally.requests))

    try:
        await asyncio.gather(sampler(), *(run_client(i, c) for i, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.aclose()
    return tally, samples, time.monotonic() - started


def slope_per_minute(samples: list[Sample], value: str) -> float:
    """Least-squares slope of ``value`` over the samples' times, per minute."""
    if len(samples) < 2:
        return 0.0
    xs = [s.at for s in samples]
    ys = [float(getattr(s, value)) for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def report(args: argparse.Namespace, tally: Tally, samples: list[Sample], elapsed: float) -> int:
    """Print the figures; return the exit status."""
    print(
        f"soak: capsule manager ({'SQLite' if not args.storage_url else 'external DB'}, "
        f"{args.workers} worker(s)), {args.clients} clients "
        f"({(args.clients + 1) // 2} GetDataKeys, {args.clients // 2} CreateDataKeys), "
        f"{elapsed:.0f} s, {os.cpu_count()} cores, samples every {args.interval:g} s "
        f"after {args.warmup:g} s warm-up"
    )
    errors = sum(tally.errors.values())
    for rpc, lat in tally.latencies.items():
        print(
            f"  {rpc:<15} {len(lat):8d} ok  {len(lat) / elapsed:7.1f}/s  "
            f"p50 {pct(lat, 0.5):6.1f} ms  p99 {pct(lat, 0.99):6.1f} ms"
        )
    print(f"  errors: {errors}")
    for message, count in tally.errors.most_common(5):
        print(f"    {count} x {message}")
    failures = [f"{errors} failed request(s)"] if errors else []
    if len(samples) < 2:
        failures.append("fewer than 2 samples after the warm-up (run longer)")
    else:
        first, last = samples[0], samples[-1]
        rows = (
            ("RSS MiB", "rss", 1 / 2**20, args.max_rss_growth_mib),
            ("open fds", "fds", 1, args.max_fd_growth),
            ("threads", "threads", 1, None),
        )
        print(
            f"  {'resource':<9} {'start':>9} {'end':>9} {'max':>9} {'slope/min':>10} "
            f"{'growth':>8} {'limit':>7}"
        )
        for name, attr, scale, limit in rows:
            start, end = getattr(first, attr) * scale, getattr(last, attr) * scale
            top = max(getattr(s, attr) for s in samples) * scale
            slope = slope_per_minute(samples, attr) * scale
            growth = end - start
            shown = "-" if limit is None else f"{limit:g}"
            print(
                f"  {name:<9} {start:9.1f} {end:9.1f} {top:9.1f} {slope:10.2f} "
                f"{growth:8.1f} {shown:>7}"
            )
            if limit is not None and growth > limit:
                failures.append(f"{name} grew by {growth:.1f} (limit {limit:g})")
        done = last.requests - first.requests
        rss_per_request = (last.rss - first.rss) / done if done else 0.0
        print(f"  RSS growth per request after warm-up: {rss_per_request:.1f} bytes ({done} req)")
    print("verdict: " + ("FAIL: " + "; ".join(failures) if failures else "OK"))
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the baseline")
    parser.add_argument("--storage-url", help="the CM's database (default: SQLite)")
    parser.add_argument("--max-rss-growth-mib", type=float, default=32.0)
    parser.add_argument("--max-fd-growth", type=int, default=8)
    args = parser.parse_args()
    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "channel_jwe,tee_sim"}
    with tempfile.TemporaryDirectory() as tmp:
        env["TRUSTFLOW_SIM_DIR"] = os.environ["TRUSTFLOW_SIM_DIR"] = str(Path(tmp) / "sim")
        os.environ["TRUSTFLOW_LOAD_PLUGINS"] = env["TRUSTFLOW_LOAD_PLUGINS"]
        with capsule_manager(Path(tmp) / "cm", env, args) as (target, proc, logged):
            tally, samples, elapsed = asyncio.run(soak(target, proc, args))
            exited = proc.poll()
        status = report(args, tally, samples, elapsed)
        if exited is not None:
            print(f"FAIL: the capsule manager exited with {exited} during the run")
            status = 1
        if logged:
            print(f"capsule manager logged {len(logged)} line(s) at WARNING or above, last ones:")
            print("".join(logged[-5:]), end="")
    sys.exit(status)


if __name__ == "__main__":
    main()
