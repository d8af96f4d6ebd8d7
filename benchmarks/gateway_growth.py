#!/usr/bin/env python3
"""How the gateway's cost grows with open keep-alive connections (issue 18 item 6).

The gateway's plain pass-through (``trustflow gateway``, no JWE) in front of the benchmark app
(``_peers.APP_CODE``), small ``POST /teeapp`` requests from the raw HTTP/1.1 load generator of
``_peers.py``, three modes in interleaved rounds:

  base        16 keep-alive connections, 16 requests in flight
  idle-1000   1,000 keep-alive connections used in turn, 16 requests in flight: the cost of
              holding many connections (latency and CPU per request must stay flat)
  busy-1000   1,000 keep-alive connections, 1,000 requests in flight: CPU per request must
              stay flat; latency is then queueing (in flight / throughput, Little's law) and
              is printed with that expectation, not judged

Prints the baseline and each mode's ratio to it; exits 1 when a ratio is above ``--target``
(1.5, the issue's) unless ``--informational``. nginx (``_peers.Peers``; skipped when absent)
runs the same modes in the same rounds as a reference, not judged: what grows for nginx too
grows in the kernel or the load generator, whose own CPU per request is printed as well.
The open-file limit is raised to its hard limit (the gateway derives its connection limit
from it).

    .venv/bin/python benchmarks/gateway_growth.py [--seconds 6] [--rounds 3] [--workers N]
        [--connections 1000] [--target 1.5] [--informational]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _loopback import cpu_seconds, free_port, plain_gateway, wait_port
from _peers import APP_CODE, WORKLOADS, Peers, Proxy, drive_raw, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per mode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--base", type=int, default=16, help="connections of the baseline")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--target", type=float, default=1.5)
    parser.add_argument(
        "--informational", action="store_true", help="report a missed target, exit 0"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--nginx",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="nginx in the same modes as a reference (default: on)",
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.connections < args.base:
        parser.error("--rounds must be >= 1 and --connections >= --base")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * args.connections + 1024  # client + gateway (down and up) + app sides, slack
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        raise SystemExit(f"open-file limit {hard} is below the {need} this run needs")

    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "tee_sim"}
    trustflow = shutil.which("trustflow", path=str(Path(sys.executable).parent)) or "trustflow"
    work_item = WORKLOADS[0]
    modes = {
        "base": (args.base, args.base),
        "idle-many": (args.connections, args.base),
        "busy-many": (args.connections, args.connections),
    }
    labels = {
        "base": f"{args.base} conns, {args.base} in flight",
        "idle-many": f"{args.connections} conns, {args.base} in flight",
        "busy-many": f"{args.connections} conns, {args.connections} in flight",
    }
    procs: list[subprocess.Popen] = []
    slices: dict[tuple[str, str], list[dict]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    own: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="trustflow-gwgrowth-") as tmp:
        peers = Peers(Path(tmp), app_port=0, workers=args.workers)
        app_port = free_port()
        try:
            procs.append(subprocess.Popen([sys.executable, "-c", APP_CODE, str(app_port)], env=env))
            wait_port(app_port, procs[-1])
            gateway, gw_port = plain_gateway(
                trustflow, Path(tmp), "gateway", app_port, args.workers, env
            )
            procs.append(gateway)
            proxies = [Proxy("gateway", gw_port, procs[1].pid)]
            if args.nginx:
                peers.app_port = app_port
                peers.start()
                proxies += [p for p in peers.proxies if p.name == "nginx"]
            for _ in range(args.rounds):
                for mode, (conns, in_flight) in modes.items():
                    for proxy in proxies:
                        key = (proxy.name, mode)
                        before = [cpu_seconds(procs[0].pid), cpu_seconds(proxy.pid)]
                        own0 = time.process_time()
                        slices.setdefault(key, []).append(
                            asyncio.run(
                                drive_raw(
                                    proxy.port,
                                    work_item,
                                    args.seconds / args.rounds,
                                    in_flight,
                                    connections=conns,
                                    warmup=0.5,
                                )
                            )
                        )
                        own[key] = own.get(key, 0.0) + time.process_time() - own0
                        c = cpu.setdefault(key, [0.0, 0.0])
                        c[0] += cpu_seconds(procs[0].pid) - before[0]
                        c[1] += cpu_seconds(proxy.pid) - before[1]
        finally:
            peers.stop()
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()

    everything: dict[str, dict[str, dict[str, float]]] = {}
    for (name, mode), parts in slices.items():
        r = summarize(parts, cpu[(name, mode)][1])
        r["app_cpu_us_per_req"] = summarize(parts, cpu[(name, mode)][0])["cpu_us_per_req"]
        r["loadgen_cpu_us_per_req"] = summarize(parts, own[(name, mode)])["cpu_us_per_req"]
        everything.setdefault(name, {})[mode] = r
    results = everything["gateway"]

    def ratios(rows: dict[str, dict[str, float]]) -> dict[str, float]:
        base = rows["base"]
        return {
            "idle-many p50": rows["idle-many"]["p50_ms"] / base["p50_ms"],
            "idle-many CPU/req": rows["idle-many"]["cpu_us_per_req"] / base["cpu_us_per_req"],
            "busy-many CPU/req": rows["busy-many"]["cpu_us_per_req"] / base["cpu_us_per_req"],
        }

    checks = ratios(results)
    missed = [f"gateway {k} {v:.2f}x" for k, v in checks.items() if v > args.target]
    fail = bool(missed) and not args.informational
    if args.json:
        out = {"results": everything, "ratios": checks, "missed": missed}
        out["skipped"] = peers.skipped
        print(json.dumps(out, indent=2))
        sys.exit(1 if fail else 0)
    print(
        f"gateway plain pass-through, small POST, loopback, {args.seconds:g} s per mode in "
        f"{args.rounds} interleaved rounds, {os.cpu_count()} CPUs, {args.workers} worker(s)"
    )
    for name, reason in peers.skipped.items():
        print(f"skipping {name}: {reason}")
    print(
        f"{'proxy / mode':<38}{'req/s':>7}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}"
        f"{'proxy CPU us/req':>17}{'app us/req':>11}{'loadgen us/req':>15}"
    )
    for name, rows in everything.items():
        for mode, r in rows.items():
            print(
                f"{name + ' / ' + labels[mode]:<38}{r['rps']:>7.0f}{r['p50_ms']:>9.2f}"
                f"{r['p99_ms']:>9.2f}{r['errors']:>7}{r['cpu_us_per_req']:>17.0f}"
                f"{r['app_cpu_us_per_req']:>11.0f}{r['loadgen_cpu_us_per_req']:>15.0f}"
            )
    busy = results["busy-many"]
    print(
        f"gateway busy-many p50 {busy['p50_ms']:.1f} ms; queueing alone predicts "
        f"{1000 * args.connections / busy['rps']:.1f} ms (in flight / req/s), not judged"
    )
    for name, ratio in checks.items():
        print(
            f"gateway {name}: {ratio:.2f}x baseline (target <= {args.target:g}x: "
            f"{'ok' if ratio <= args.target else 'MISSED'})"
        )
    if "nginx" in everything:
        ref = ratios(everything["nginx"])
        shown = ", ".join(f"{k} {v:.2f}x" for k, v in ref.items())
        print(f"nginx (reference, not judged): {shown}")
    if missed:
        note = " (informational)" * (not fail)
        print(f"growth targets missed: {'; '.join(missed)}{note}")
    if fail:
        sys.exit(1)


if __name__ == "__main__":
    main()
