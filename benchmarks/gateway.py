#!/usr/bin/env python3
"""Gateway throughput on loopback, all measured in one run (bounded: well under a minute).

Scenarios, each driven for ``--duration`` seconds by ``--concurrency`` keep-alive clients, in
``--rounds`` interleaved slices (a, b, c, a, b, c, ...) so that drift of the machine's speed
during the run does not favour one scenario:

  (a) client -> app directly
  (b) client -> gateway (no JWE filter) -> app
  (c) client -> gateway (JWE filter, upstream dialect: RSA-OAEP-256 + A128GCM) -> app,
      every reply opened and checked by the client
  (d) client -> gateway (JWE filter, RFC 7516 profile: ECDH-ES+A128KW on P-256 + A256GCM,
      replay protection on) -> app, every reply opened and checked; the client reuses one
      ephemeral key as the online client does (the gateway's KEK cache hits); target:
      (d)/(b) >= 70%
  (e) as (d) with a fresh ephemeral key per envelope (what plain jwcrypto sends: every
      request a P-256 ECDH on the gateway; informational)

plus the RSA-OAEP-SHA256 private-key decryption ceiling of one core with the same key, and
(``--peers``, the default; see ``_peers.py``) in the same rounds: the gateway's plain
pass-through, nginx and haproxy in front of the same app with small bodies, 64 KiB replies and
1 MiB uploads (req/s, p50/p99, proxy CPU per request; exit 1 when the gateway's CPU per request
is above the issue 18 targets: 2x nginx's for small requests, 1.5x at 64 KiB and 1 MiB, unless
``--peer-targets-informational``), and the gateway's upstream client against aiohttp's.
The gateway is the compiled build (``--build compiled``, the default: a ``TRUSTFLOW_COMPILE=1``
wheel of this checkout, built first, about a minute; docs/packaging.md#the-compiled-gateway),
with the interpreted one beside it in the peer rounds as an unjudged row, and the floor
(``_floor.py``: a proxy on the same stack without the gateway's features, unjudged);
``--build interpreted`` runs the venv's install alone.
The app and the gateway run as separate processes (``trustflow gateway``); the load generator
is this process. CPU per request is printed for each of the three: on a small machine they
share the cores, so the req/s ratios also carry the load generator's own cost. Its
cryptography is kept out of the measured time at both ends, so that in every scenario the
client's cost in it is the same small HTTP work as in (a) and (b): every reply of (c)-(e)
is opened and checked after its slice's clock stops (the client CPU column leaves those
checks out), and envelopes for (c) are sealed before the run (a pool of fresh CEKs).
Envelopes for (d) carry a unique ``jti`` each (the gateway refuses replays), so a fresh pool
is sealed before each (d) slice, sized from the preceding (b) slice, outside the measured
time; likewise for (e). Exit status 1 when (d)/(b) misses its target.

    .venv/bin/python benchmarks/gateway.py [--duration 6] [--rounds 3] [--concurrency 16]
        [--key-bits 3072]
        [--workers N]   # gateway processes (and nginx workers, haproxy threads)
        [--no-peers] [--peer-duration 3] [--peer-targets-informational]
        [--build compiled|interpreted]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from _compiled import build_compiled, with_path
from _ecdh import ECDH_TARGET, Fresh, print_ecdh, write_ecdh_identity
from _loopback import cpu_seconds, free_port, plain_gateway, wait_port
from _peers import (
    APP_CODE,
    FLOOR,
    ClientBench,
    PeerBench,
    Peers,
    Proxy,
    peer_verdicts,
    print_peer_table,
    start_floor,
)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding


def rsa_ceiling(key, seconds: float) -> float:
    """RSA-OAEP-SHA256 private-key decryptions per second on this core."""
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    ciphertext = key.public_key().encrypt(os.urandom(16), oaep)
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            key.decrypt(ciphertext, oaep)
        count += 20
    return count / elapsed


async def drive(
    url: str,
    bodies: list[tuple[bytes, Callable[[bytes], None]]],
    duration: float,
    concurrency: int,
) -> dict:
    """POST bodies round-robin for ``duration`` s (after a short warm-up on new connections);
    return the latencies, the measured time, the error count and ``check_cpu``. Each 200
    reply is checked (``check(data)``: for JWE, opened and compared) after the clock stops,
    as the envelopes are sealed before it starts: the load generator's own cryptography
    shares the machine's cores with the gateway, and is not the gateway's cost.
    ``check_cpu`` is the CPU time of this process those checks took."""
    latencies: list[float] = []
    replies: list[tuple[Callable[[bytes], None], bytes]] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < stop:
                body, check = bodies[i % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as r:
                    data = await r.read()
                    ok = r.status == 200
                latencies.append(time.perf_counter() - t0)
                if ok:
                    replies.append((check, data))
                else:
                    errors += 1

        # warm-up: open the connections
        stop = time.perf_counter() + 0.5
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        warmup = len(latencies)
        latencies.clear()
        start = time.perf_counter()
        stop = start + duration
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    checks_started = time.process_time()
    for check, data in replies:
        check(data)
    served = warmup + len(latencies)
    return {
        "latencies": latencies,
        "elapsed": elapsed,
        "errors": errors,
        "warmup": warmup,
        "served": served,
        "check_cpu": time.process_time() - checks_started,
    }


def summarize(slices: list[dict]) -> dict[str, float]:
    """req/s over all slices of a scenario (total requests / total measured time), latency
    percentiles over all their requests."""
    latencies = sorted(x for s in slices for x in s["latencies"])
    return {
        "rps": len(latencies) / sum(s["elapsed"] for s in slices),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "errors": sum(s["errors"] for s in slices),
        "requests": len(latencies),
        "warmup_requests": sum(s["warmup"] for s in slices),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per scenario")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved slices each scenario is split into"
    )
    parser.add_argument("--key-bits", type=int, default=3072, choices=(2048, 3072, 4096))
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="gateway worker processes (default: one per CPU, as Envoy's --concurrency)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--build",
        choices=("compiled", "interpreted"),
        default="compiled",
        help="the gateway's request path: compiled by mypyc (a TRUSTFLOW_COMPILE=1 wheel of this "
        "checkout, the default; the interpreted gateway then joins the peers as an informational "
        "row) or interpreted (the venv's install)",
    )
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run nginx/haproxy and the upstream client comparison (default: on)",
    )
    parser.add_argument(
        "--peer-duration", type=float, default=3.0, help="seconds per peer workload and proxy"
    )
    parser.add_argument(
        "--peer-targets-informational",
        action="store_true",
        help="print the CPU-per-request ratios to nginx without failing when a target is missed",
    )
    args = parser.parse_args()
    if args.duration * 5 + args.rounds * 5 * 0.5 + 3 > 50:
        parser.error("--duration and --rounds must keep the whole run under a minute")
    if args.peers and args.peer_duration * 13 + args.rounds * 13 * 0.3 > 70:
        parser.error("--peer-duration and --rounds must keep the peers under 70 s")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    from trustflow_core.manager import get_plugin_manager
    from trustflow_core.registry import ENVELOPE_CHANNEL, backend_class

    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "tee_sim,channel_jwe"}
    os.environ.update(env)
    trustflow = shutil.which("trustflow", path=str(Path(sys.executable).parent)) or "trustflow"
    procs: list[subprocess.Popen] = []
    extra_procs: list[subprocess.Popen] = []  # not in the (a)-(e) CPU accounting
    with tempfile.TemporaryDirectory(prefix="trustflow-bench-") as tmp:
        work = Path(tmp)
        from cryptography import x509
        from trustflow_core.cli import util

        key_pem, cert_pem, _ = util.generate_self_signed(days=1, key_bits=args.key_bits)
        (work / "app.key").write_bytes(key_pem)
        (work / "app.key").chmod(0o600)
        (work / "app.crt").write_bytes(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        gateway_env = env
        if args.build == "compiled":
            gateway_env = with_path(env, build_compiled(work))
        public_key = x509.load_pem_x509_certificate(cert_pem).public_key()
        app_port, plain_port, jwe_port = free_port(), free_port(), free_port()
        ecdh_port, ecdh_key = free_port(), write_ecdh_identity(work)
        config = {
            "listeners": [
                {
                    "name": "plain",
                    "address": f"127.0.0.1:{plain_port}",
                    "routes": [{"prefix": "/teeapp", "cluster": "app"}],
                },
                {
                    "name": "jwe",
                    "address": f"127.0.0.1:{jwe_port}",
                    "routes": [{"prefix": "/teeapp", "cluster": "app", "require_jwe": True}],
                    "jwe": {"cert_path": "app.crt", "private_key_path": "app.key"},
                },
                {
                    "name": "jwe_ecdh",
                    "address": f"127.0.0.1:{ecdh_port}",
                    "routes": [{"prefix": "/teeapp", "cluster": "app", "require_jwe": True}],
                    "jwe": {
                        "cert_path": "app.crt",
                        "private_key_path": "app.key",
                        "ecdh_cert_path": "app-ecdh.crt",
                        "ecdh_private_key_path": "app-ecdh.key",
                    },
                },
            ],
            "clusters": {"app": {"endpoints": [f"127.0.0.1:{app_port}"]}},
        }
        (work / "gateway.yml").write_text(json.dumps(config))
        try:
            procs.append(subprocess.Popen([sys.executable, "-c", APP_CODE, str(app_port)], env=env))
            wait_port(app_port, procs[-1])
            procs.append(
                subprocess.Popen(
                    [
                        trustflow,
                        "gateway",
                        "-c",
                        str(work / "gateway.yml"),
                        "--log-level",
                        "error",
                        "--workers",
                        str(args.workers),
                    ],
                    env=gateway_env,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_port(ecdh_port, procs[-1])
            wait_port(jwe_port, procs[-1])
            peers = Peers(work, app_port, args.workers)
            peer_bench = client_bench = None
            if args.peers:
                peers.start()
                gateway = Proxy("gateway", plain_port, procs[1].pid)
                unjudged = []  # rows of ours beside the gateway's
                if args.build == "compiled":  # the interpreted gateway
                    interpreted, port = plain_gateway(
                        trustflow, work, "interpreted", app_port, args.workers, env
                    )
                    extra_procs.append(interpreted)
                    unjudged.append(Proxy("gateway (interpreted)", port, interpreted.pid))
                floor, port = start_floor(app_port, args.workers)  # the stack alone
                extra_procs.append(floor)
                unjudged.append(Proxy(FLOOR, port, floor.pid))
                peer_bench = PeerBench(
                    [gateway, *unjudged, *peers.proxies],
                    procs[0].pid,
                    args.concurrency,
                    args.peer_duration / args.rounds,
                )
                client_bench = ClientBench(
                    app_port, args.concurrency, args.peer_duration / args.rounds / 2
                )

            channel = backend_class(get_plugin_manager(), ENVELOPE_CHANNEL, "jwe").from_settings(
                {"profile": "upstream", "alg": "RSA-OAEP-256"}
            )
            expected = b"I got your message: hello\n"

            def plain_check(data: bytes) -> None:
                assert data == expected, data

            def sealed(i: int) -> tuple[bytes, Callable[[bytes], None]]:
                envelope = channel.seal(b"hello", public_key)

                def check(data: bytes) -> None:
                    reply = channel.open_reply(_jwe(json.loads(data)), envelope.cek)
                    assert reply == expected, reply

                return json.dumps(envelope.jwe.to_dict()).encode(), check

            plain_bodies = [(b"hello", plain_check)]
            jwe_bodies = [sealed(i) for i in range(512)]
            jwe_cls = backend_class(get_plugin_manager(), ENVELOPE_CHANNEL, "jwe")
            rfc = jwe_cls.from_settings({"profile": "rfc"})  # one epk per 60 s / 10,000
            rfc_fresh = jwe_cls.from_settings({"profile": "rfc", "epk_reuse_envelopes": 1})

            def sealed_ecdh(channel: Any = rfc) -> tuple[bytes, Callable[[bytes], None]]:
                envelope = channel.seal(b"hello", ecdh_key)

                def check(data: bytes) -> None:
                    reply = channel.open_reply(_jwe(json.loads(data)), envelope.cek)
                    assert reply == expected, reply

                members = {k: v for k, v in envelope.jwe.to_dict().items() if v}
                return json.dumps(members).encode(), check

            def ecdh_bodies(channel: Any = rfc) -> Fresh:
                """Enough unique envelopes for one (d) slice: twice what the busiest (b) slice
                so far served; each is handed out once (the gateway refuses replays)."""
                most = max(r["served"] for r in slices["b_gateway_plain"])
                return Fresh(
                    [sealed_ecdh(channel) for _ in range(2 * most + 200)],
                    lambda: sealed_ecdh(channel),
                )

            ceiling = rsa_ceiling(key, 1.5)
            scenarios = {
                "a_direct": (app_port, plain_bodies),
                "b_gateway_plain": (plain_port, plain_bodies),
                "c_gateway_jwe": (jwe_port, jwe_bodies),
                "d_gateway_jwe_ecdh": (ecdh_port, ecdh_bodies),
                "e_gateway_jwe_ecdh_fresh": (ecdh_port, lambda: ecdh_bodies(rfc_fresh)),
            }
            slices: dict[str, list[dict]] = {name: [] for name in scenarios}
            cpu = {name: [0.0, 0.0] for name in scenarios}
            client_cpu = dict.fromkeys(scenarios, 0.0)  # this process: the load generator
            # interleaved rounds (a, b, c, a, b, c, ...): a machine that speeds up or slows
            # down during the run affects every scenario alike, not just one of them
            for _ in range(args.rounds):
                for name, (port, pool) in scenarios.items():
                    bodies = pool() if callable(pool) else pool
                    before = [cpu_seconds(p.pid) for p in procs]
                    client_before = time.process_time()
                    slices[name].append(
                        asyncio.run(
                            drive(
                                f"http://127.0.0.1:{port}/teeapp",
                                bodies,
                                args.duration / args.rounds,
                                args.concurrency,
                            )
                        )
                    )
                    client_cpu[name] += (
                        time.process_time() - client_before - slices[name][-1]["check_cpu"]
                    )
                    for i, (p, b) in enumerate(zip(procs, before, strict=True)):
                        cpu[name][i] += cpu_seconds(p.pid) - b
                if peer_bench and client_bench:
                    peer_bench.run_round()
                    client_bench.run_round()
            results = {}
            for name in scenarios:
                result = summarize(slices[name])
                total = result["requests"] + result["warmup_requests"]
                result["app_cpu_us_per_req"] = 1e6 * cpu[name][0] / total
                result["gateway_cpu_us_per_req"] = 1e6 * cpu[name][1] / total
                result["client_cpu_us_per_req"] = 1e6 * client_cpu[name] / total
                results[name] = result
            ceiling = max(ceiling, rsa_ceiling(key, 1.5))
        finally:
            if "peers" in locals():
                peers.stop()
            for proc in procs + extra_procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs + extra_procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    ratio_b = results["b_gateway_plain"]["rps"] / results["a_direct"]["rps"]
    ratio_c = results["c_gateway_jwe"]["rps"] / ceiling
    ratio_d = results["d_gateway_jwe_ecdh"]["rps"] / results["b_gateway_plain"]["rps"]
    ratio_e = results["e_gateway_jwe_ecdh_fresh"]["rps"] / results["b_gateway_plain"]["rps"]
    summary = {
        **results,
        "rsa_oaep_sha256_decrypt_per_s_one_core": ceiling,
        "key_bits": args.key_bits,
        "concurrency": args.concurrency,
        "gateway_workers": args.workers,
        "gateway_build": args.build,
        "b_over_a": ratio_b,
        "c_over_rsa_ceiling": ratio_c,
        "d_over_b": ratio_d,
        "d_over_b_target": ECDH_TARGET,
        "e_over_b": ratio_e,
    }
    peer_lines: list[str] = []
    missed: list[str] = []
    if peer_bench and client_bench:
        peer_results = peer_bench.results()
        peer_lines, missed = peer_verdicts(peer_results)
        summary["peers"] = peer_results
        summary["peers_skipped"] = peers.skipped
        summary["upstream_clients"] = client_bench.results()
        summary["peer_targets_missed"] = missed
    fail = bool(missed) and not args.peer_targets_informational
    if args.json:
        print(json.dumps(summary, indent=2))
        sys.exit(1 if fail or ratio_d < ECDH_TARGET else 0)
    print(
        f"loopback, {args.concurrency} keep-alive clients, {args.duration:g} s per scenario "
        f"in {args.rounds} interleaved rounds, "
        f"RSA-{args.key_bits} app key, {os.cpu_count()} CPUs, {args.workers} gateway worker(s), "
        f"{args.build} gateway"
    )
    print(
        f"{'scenario':<28}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}"
        f"{'app CPU us/req':>16}{'gateway CPU us/req':>20}{'client CPU us/req':>19}"
    )
    labels = {
        "a_direct": "(a) client -> app",
        "b_gateway_plain": "(b) via gateway, no JWE",
        "c_gateway_jwe": "(c) via gateway, JWE",
        "d_gateway_jwe_ecdh": "(d) via gateway, JWE ECDH",
        "e_gateway_jwe_ecdh_fresh": "(e) (d), fresh epk each",
    }
    for name, label in labels.items():
        r = results[name]
        print(
            f"{label:<28}{r['rps']:>8.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>7}"
            f"{r['app_cpu_us_per_req']:>16.0f}{r['gateway_cpu_us_per_req']:>20.0f}"
            f"{r['client_cpu_us_per_req']:>19.0f}"
        )
    met = print_ecdh(results, ratio_d, ratio_e)
    print(f"RSA-OAEP-SHA256 decrypt ceiling, one core: {ceiling:.0f} ops/s")
    print(f"(b)/(a) = {ratio_b:.0%}   (target >= 50%)")
    print(f"(c)/RSA ceiling = {ratio_c:.0%}   (target >= 50%)")
    cost = results["c_gateway_jwe"]["gateway_cpu_us_per_req"]
    print(
        f"gateway CPU per JWE request {cost:.0f} us vs one RSA decryption "
        f"{1e6 / ceiling:.0f} us: CPU-bound JWE ceiling of one gateway core "
        f"= {1e6 / cost / ceiling:.0%} of the RSA ceiling"
    )
    if peer_bench and client_bench:
        print()
        for name, reason in peers.skipped.items():
            print(f"skipping {name}: {reason}")
        print(
            f"peers: {args.peer_duration:g} s per workload and proxy in the same {args.rounds} "
            f"rounds, {args.concurrency} keep-alive connections, raw HTTP/1.1 load generator"
        )
        print_peer_table(summary["peers"])
        for line in peer_lines:
            print(line)
        client_bench.print_report()
        if missed:
            note = " (informational: --peer-targets-informational)" * (not fail)
            print(f"peer targets missed: {'; '.join(missed)}{note}")
    if fail or not met:
        sys.exit(1)


def _jwe(members: dict):
    from trustflow_core.channel import Jwe

    return Jwe.from_dict(members)


if __name__ == "__main__":
    main()
