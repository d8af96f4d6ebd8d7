#!/usr/bin/env python3
"""Capsule Manager throughput on loopback, SQLite and PostgreSQL, in one run (about a
minute): GetDataKeys/s and CreateDataKeys/s with ``--clients`` concurrent clients, p50/p99
latency, and the ratio to the per-core ceiling of the RSA private-key operations each request
needs on the CM (one RSA-OAEP decryption of the request's content key with the CM's RSA-3072
key; everything else the CM does is public-key or symmetric), measured in the same run: the
ceiling and the two RPCs take turns in ``--rounds`` slices, so drift of the machine's speed
during the run affects them alike.

The CM runs as its own process (``trustflow capsule-manager --plat sim``), once with one server
process and once with one per core (``--workers``: the deployment form on a multi-core host;
the ratio still divides by ONE core's RSA ceiling); this process is the load generator, and its
own CPU per request is printed too, since it shares the cores. Requests are built before the
clock starts (GetDataKeys: SIM-attested, one pool reused; CreateDataKeys: one fresh request per
call, 4 keys each), so the clients only do gRPC work during the measurement.

The audit log (docs/audit.md) is measured on and off in the same run: two CMs per backend and
worker count, one with ``audit: {enabled: false}``, each on its own database, take turns in the
same rounds; ``audit on/off`` is the ratio of their GetDataKeys/s (target: at least 90%).

Replicas mode (``--replicas 1,2,3``, docs/replica-state.md#throughput-of-replicas): that
many CM processes (one server process each) share one identity (key pair and storage key
files) and one PostgreSQL database; the clients spread over the first N of them and measure
aggregate GetDataKeys/s for each N in interleaved rounds, with CPU per request of the CMs and
of the PostgreSQL backends serving them, and the database work per request (transactions, index
scans, rows written: ``pg_stat_database`` / ``pg_stat_user_tables``). It prints the 1-replica
baseline, the ratios, and the estimate for N replicas on N hosts.

    .venv/bin/python benchmarks/capsule_manager.py [--seconds 5] [--clients 16]
        [--backends sqlite,postgresql] [--workers 1,2] [--rounds 3] [--audit on,off]
    .venv/bin/python benchmarks/capsule_manager.py --replicas 1,2,3 [--seconds 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
from _loopback import capsule_manager_process, cpu_seconds
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding


@contextmanager
def capsule_manager(
    data_dir: Path,
    url: str,
    env: dict[str, str],
    workers: int,
    more: list[str] | None = None,
    audit: bool = True,
) -> Iterator[tuple[str, int]]:
    extra = ["--data-dir", str(data_dir), "--storage-url", url, "--workers", str(workers)]
    extra += more or []
    if not audit:
        config = data_dir / "no-audit.yaml"
        config.write_text("audit: {enabled: false}\n")
        extra += ["-c", str(config)]
    with capsule_manager_process(extra, env) as (target, proc, _):
        yield target, proc.pid


def rsa_decryptor(key_pem: bytes) -> Callable[[float], tuple[int, float]]:
    """``run(seconds) -> (decryptions, elapsed)``: RSA-OAEP decryptions with the CM's key on
    one core of this process."""
    key = serialization.load_pem_private_key(key_pem, None)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    blob = key.public_key().encrypt(os.urandom(16), oaep)  # type: ignore[union-attr]

    def run(seconds: float) -> tuple[int, float]:
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            key.decrypt(blob, oaep)  # type: ignore[union-attr]
            count += 1
        return count, time.perf_counter() - started

    return run


async def drive(
    calls: list[Callable[[Any], Any]], requests: list[Any], seconds: float, reuse: bool
) -> tuple[float, list[float]]:
    """One worker per entry of ``calls`` (each its own connection), for ``seconds`` or, when
    not ``reuse``, until every request was sent once; return (elapsed, latencies)."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    index = 0

    async def worker(call: Callable[[Any], Any]) -> None:
        nonlocal index
        while time.perf_counter() < stop:
            if not reuse and index >= len(requests):
                return
            request = requests[index % len(requests)]
            index += 1
            started = time.perf_counter()
            response = await call(request)
            latencies.append(time.perf_counter() - started)
            if response.status.code != 0:
                raise SystemExit(f"request refused: {response.status.message}")

    started = time.perf_counter()
    await asyncio.gather(*(worker(call) for call in calls))
    return time.perf_counter() - started, latencies


async def prepare(target: str, args: argparse.Namespace, pm: Any) -> tuple[list[Any], list[Any]]:
    """An owner's key and policy on the CM at ``target``; return the pools of enveloped
    GetDataKeys (SIM-attested, reused) and CreateDataKeys (one per call) requests."""
    from trustflow_core.attestation import ra_user_data
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2 as cm_pb2,
    )
    from trustflow_core.registry import ATTESTER, backend_class
    from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient
    from trustflow_core.roles.capsule_manager_client.keyexchange import ephemeral_credentials
    from trustflow_core.roles.capsule_manager_protocol.reports import report_to_pb
    from trustflow_core.wire import serialize_canonical

    owner, app = ephemeral_credentials("owner"), ephemeral_credentials("app")
    uuid = f"bench-{os.urandom(4).hex()}"
    async with CapsuleManagerClient(target, pm=pm) as client:
        await client.create_data_keys(owner, [(uuid, base64.b64encode(os.urandom(16)).decode())])
        rule = cm_pb2.Rule(
            rule_id="r",
            grantee_party_ids=[app.party_id],
            columns=["*"],
            global_constraints=['r.env.tee.platform == "sim"'],
        )
        rule.op_constraints.add(op_name="bench")
        await client.create_data_policy(owner, "default", uuid, [rule])
        rr = cm_pb2.ResourceRequest(
            initiator_party_id=app.party_id, scope="default", op_name="bench"
        )
        rr.resources.add(resource_uri=uuid)
        attester = backend_class(pm, ATTESTER, "sim").from_settings()
        digest = ra_user_data(app.chain_pems[0].encode(), serialize_canonical(rr))
        report = report_to_pb(await attester.generate(digest))
        gdk = cm_pb2.GetDataKeysRequest(cert=app.chain_pems[0], resource_request=rr)
        gdk.attestation_report.CopyFrom(report)
        get_pool = [await client.envelope(gdk, app) for _ in range(64)]
        create_pool = []
        for i in range(args.create_requests):
            req = cm_pb2.CreateDataKeysRequest(owner_party_id=owner.party_id)
            for j in range(4):
                req.data_keys.add(
                    resource_uri=f"{uuid}-c{i}/p{j}",
                    data_key_b64=base64.b64encode(os.urandom(16)).decode(),
                )
            create_pool.append(await client.envelope(req, owner))
    return get_pool, create_pool


async def run_backend(
    name: str, urls: dict[str, str], args: argparse.Namespace, env: dict[str, str], workers: int
) -> list[dict[str, Any]]:
    """Start one CM per audit mode (``urls``: mode -> database URL), measure them in the same
    interleaved rounds, return one result per mode."""
    from trustflow_core.manager import get_plugin_manager
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2_grpc as cm_grpc,
    )

    pm = get_plugin_manager()
    rpcs = ("GetDataKeys", "CreateDataKeys")
    with ExitStack() as stack:
        cms: dict[str, dict[str, Any]] = {}
        for mode, url in urls.items():
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            target, pid = stack.enter_context(
                capsule_manager(tmp, url, env, workers, audit=mode == "on")
            )
            get_pool, create_pool = await prepare(target, args, pm)
            cms[mode] = {
                "tmp": tmp,
                "pid": pid,
                "target": target,
                "pools": {"GetDataKeys": get_pool, "CreateDataKeys": create_pool},
                "totals": {
                    rpc: {"elapsed": 0.0, "latencies": [], "cm_cpu": 0.0, "own_cpu": 0.0}
                    for rpc in rpcs
                },
            }
        first = next(iter(cms.values()))
        decrypt = rsa_decryptor((first["tmp"] / "cm.key").read_bytes())
        # one connection per client (a local subchannel pool each), as separate clients have
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = []
        for cm in cms.values():
            mine = [
                grpc.aio.insecure_channel(cm["target"], options=options)
                for _ in range(args.clients)
            ]
            channels += mine
            stubs = [cm_grpc.CapsuleManagerStub(c) for c in mine]
            cm["calls"] = {rpc: [getattr(s, rpc) for s in stubs] for rpc in rpcs}
        decryptions, decrypt_time = 0, 0.0
        try:
            for cm in cms.values():  # warm-up
                await drive(cm["calls"]["GetDataKeys"], cm["pools"]["GetDataKeys"], 0.5, True)
            # interleaved rounds (RSA ceiling, then each CM's GetDataKeys and CreateDataKeys,
            # ...): a machine whose speed drifts during the run affects them all alike
            for round_ in range(args.rounds):
                count, took = decrypt(0.5)  # the CMs are idle meanwhile
                decryptions, decrypt_time = decryptions + count, decrypt_time + took
                order = list(cms.values())
                if round_ % 2:
                    order.reverse()  # neither mode always runs first
                for cm in order:
                    for rpc in rpcs:
                        pool = cm["pools"][rpc]
                        reuse = rpc == "GetDataKeys"
                        chunk = pool if reuse else pool[round_ :: args.rounds]
                        cpu0, own0 = cpu_seconds(cm["pid"]), time.process_time()
                        elapsed, latencies = await drive(
                            cm["calls"][rpc], chunk, args.seconds / args.rounds, reuse
                        )
                        total = cm["totals"][rpc]
                        total["elapsed"] += elapsed
                        total["latencies"] += latencies
                        total["cm_cpu"] += cpu_seconds(cm["pid"]) - cpu0
                        total["own_cpu"] += time.process_time() - own0
        finally:
            for c in channels:
                await c.close()
    results = []
    for mode, cm in cms.items():
        result: dict[str, Any] = {
            "backend": f"{name} x{workers}",
            "audit": mode,
            "ceiling": decryptions / decrypt_time,
        }
        for rpc, total in cm["totals"].items():
            rate = len(total["latencies"]) / total["elapsed"]
            result[rpc] = (rate, total["latencies"], (total["cm_cpu"], total["own_cpu"]))
        results.append(result)
    return results


#: backend -> (its driver module, the trustflow-core extra that installs it)
DRIVERS = {"postgresql": ("psycopg", "postgresql"), "mysql": ("pymysql", "mysql")}


def missing_driver(backend: str) -> str | None:
    """Why ``backend`` cannot be measured in this environment (its driver does not import),
    naming the extra to install; None when it can."""
    if backend not in (*DRIVERS, "sqlite"):
        raise SystemExit(f"unknown backend {backend!r}: choose from sqlite, postgresql, mysql")
    if backend in DRIVERS:
        module, extra = DRIVERS[backend]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            hint = f"pip install 'trustflow-core[{extra}]'"
            return f"its driver {module} cannot be imported ({exc}): {hint}"
    return None


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


STAT_TABLES = ("cm_data", "cm_policies", "cm_rules", "cm_data_keys", "cm_audit", "cm_audit_size")


def pg_counters(url: str) -> tuple[dict[str, float], dict[int, float]]:
    """Cumulative counters of the database at ``url``: transactions and per-table index scans
    and rows written (``pg_stat_*``, flushed first), and the CPU seconds so far of every
    PostgreSQL backend connected to it (``pid -> seconds``, from /proc)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_force_next_flush()"))
            counters: dict[str, float] = {}
            row = conn.execute(
                text(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                    "WHERE datname = current_database()"
                )
            ).one()
            counters["transactions"] = float(row[0])
            for name, scans, written in conn.execute(
                text(
                    "SELECT relname, COALESCE(idx_scan, 0) + COALESCE(seq_scan, 0), "
                    "n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables"
                )
            ):
                if name in STAT_TABLES:
                    counters[f"{name} scans"] = float(scans)
                    counters[f"{name} rows written"] = float(written)
            mine = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            pids = [
                int(pid)
                for (pid,) in conn.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> :mine"
                    ),
                    {"mine": mine},
                )
            ]
    finally:
        engine.dispose()
    return counters, {pid: cpu_seconds(pid) for pid in pids}


async def sql_per_request(
    tmp: Path, url: str, pool: list[Any], requests: int = 40
) -> dict[str, float]:
    """Statements and round trips to PostgreSQL per GetDataKeys, counted on the wire: a CM
    in this process on the same identity files (in ``tmp``) and database traces its
    connections with libpq's trace (``PQtrace``) while it answers ``requests`` GetDataKeys one
    after the other (so each audit commit carries one request's entries: the upper bound;
    concurrent requests share commits). Per request: ``statements`` (Parse or simple Query
    messages, transaction control included), ``round trips`` (ReadyForQuery answers)."""
    import psycopg
    from sqlalchemy import event
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2_grpc as cm_grpc,
    )
    from trustflow_core.roles.capsule_manager.server import CapsuleManager
    from trustflow_core.roles.capsule_manager.settings import CMSettings

    settings = CMSettings(
        port=0,
        plat="sim",
        data_dir=tmp / "traced",
        storage_url=url,
        private_key_file=tmp / "cm.key",
        cert_file=tmp / "cm.crt",
        storage_key_file=tmp / "storage.key",
    )
    cm = CapsuleManager(settings, health_interval=3600)
    trace = tmp / "pg-trace.txt"
    port = await cm.start()
    try:
        assert cm.store is not None
        engine = cm.store._write_engine
        with trace.open("w") as out:

            @event.listens_for(engine, "connect")
            def traced(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.pgconn.trace(out.fileno())
                dbapi_conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

            engine.dispose()  # new connections, traced from their first statement
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = cm_grpc.CapsuleManagerStub(channel).GetDataKeys
                await call(pool[0])  # connections opened (and their set-up) before counting
                out.flush()
                start = trace.stat().st_size
                for i in range(requests):
                    response = await call(pool[i % len(pool)])
                    assert response.status.code == 0, response.status
            out.flush()
    finally:
        await cm.stop()
    with trace.open() as text:
        text.seek(start)
        lines = [line.split("\t") for line in text]
    frontend = [p[2].strip() for p in lines if len(p) > 2 and p[0] == "F"]
    backend = [p[2].strip() for p in lines if len(p) > 2 and p[0] == "B"]
    return {
        "statements": sum(m in ("Parse", "Query") for m in frontend) / requests,
        "round trips": backend.count("ReadyForQuery") / requests,
    }


async def run_replicas(args: argparse.Namespace, env: dict[str, str], url: str) -> None:
    """Replicas mode: see the module docstring."""
    from trustflow_core.harness.replicas import shared_identity
    from trustflow_core.manager import get_plugin_manager
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2_grpc as cm_grpc,
    )

    counts = [int(n) for n in args.replicas.split(",")]
    pm = get_plugin_manager()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        shared = shared_identity(tmp)
        cms = []
        for i in range(max(counts)):
            cms.append(stack.enter_context(capsule_manager(tmp / f"cm{i}", url, env, 1, shared)))
        get_pool, _ = await prepare(cms[0][0], argparse.Namespace(create_requests=0), pm)
        options = [("grpc.use_local_subchannel_pool", 1)]
        totals: dict[int, dict[str, Any]] = {
            n: {"count": 0, "elapsed": 0.0, "cm_cpu": 0.0, "pg_cpu": 0.0, "own": 0.0, "db": {}}
            for n in counts
        }
        channels = []
        calls = {}
        for n in counts:  # client i talks to replica i mod n
            mine = [
                grpc.aio.insecure_channel(cms[i % n][0], options=options)
                for i in range(args.clients)
            ]
            channels += mine
            calls[n] = [cm_grpc.CapsuleManagerStub(c).GetDataKeys for c in mine]
        try:
            await drive(calls[max(counts)], get_pool, 1.0, True)  # warm-up, every replica
            for round_ in range(args.rounds):
                for n in counts if round_ % 2 == 0 else list(reversed(counts)):
                    db0, pg0 = pg_counters(url)
                    cpu0 = sum(cpu_seconds(pid) for _, pid in cms)
                    own0 = time.process_time()
                    elapsed, latencies = await drive(
                        calls[n], get_pool, args.seconds / args.rounds, True
                    )
                    own = time.process_time() - own0
                    cpu = sum(cpu_seconds(pid) for _, pid in cms) - cpu0
                    db1, pg1 = pg_counters(url)
                    total = totals[n]
                    total["count"] += len(latencies)
                    total["elapsed"] += elapsed
                    total["cm_cpu"] += cpu
                    total["own"] += own
                    total["pg_cpu"] += sum(t - pg0.get(pid, 0.0) for pid, t in pg1.items())
                    for name, value in db1.items():
                        total["db"][name] = total["db"].get(name, 0.0) + value - db0.get(name, 0)
        finally:
            for c in channels:
                await c.close()
        sql = await sql_per_request(tmp, url, get_pool)
    report_replicas(args, totals, sql)


def report_replicas(
    args: argparse.Namespace, totals: dict[int, dict[str, Any]], sql: dict[str, float]
) -> None:
    """The table, the ratios to the 1-replica baseline and the N-hosts estimate."""
    cores = os.cpu_count() or 1
    print(
        f"capsule manager replicas on one PostgreSQL, {args.clients} clients, "
        f"{args.seconds:.0f} s per replica count in {args.rounds} interleaved rounds, {cores} "
        "cores shared by CMs, PostgreSQL and the load generator"
    )
    print(
        f"{'replicas':>8} {'GetDataKeys/s':>14} {'x baseline':>11} {'CM CPU ms/req':>14} "
        f"{'PG CPU ms/req':>14} {'loadgen ms/req':>15} {'xacts/req':>10} {'cores busy':>11}"
    )
    base = None
    rows = {}
    for n, t in totals.items():
        count = max(1, t["count"])
        rate = t["count"] / t["elapsed"]
        base = base or rate
        rows[n] = (rate, t["cm_cpu"] / count, t["pg_cpu"] / count, t["own"] / count)
        print(
            f"{n:>8} {rate:14.1f} {rate / base:11.2f} {rows[n][1] * 1000:14.2f} "
            f"{rows[n][2] * 1000:14.2f} {rows[n][3] * 1000:15.2f} "
            f"{t['db'].get('transactions', 0) / count:10.2f} "
            f"{rate * (rows[n][1] + rows[n][2] + rows[n][3]):11.2f}"
        )
    print(
        "cores busy = GetDataKeys/s x (CM + PostgreSQL + load generator CPU per request): "
        f"how much of the {cores} cores this run's processes kept busy (one CM process is "
        "bounded near one core by its interpreter lock; replicas add cores until none is left)"
    )
    largest = max(totals)
    db = totals[largest]["db"]
    count = max(1, totals[largest]["count"])
    work = ", ".join(f"{k} {v / count:.2f}" for k, v in sorted(db.items()) if v)
    print(f"database work per GetDataKeys ({largest} replicas): {work}")
    print(
        "SQL per GetDataKeys, one request at a time (libpq trace): "
        f"{sql['statements']:.2f} statements, {sql['round trips']:.2f} round trips"
    )
    _, cm_cpu, pg_cpu, _ = rows[largest]
    sql_round_trips = sql["round trips"]
    print(estimate(cm_cpu, pg_cpu, sql_round_trips))


def estimate(cm_cpu: float, pg_cpu: float, round_trips: float, rtt: float = 0.0005) -> str:
    """The closing note (docs/replica-state.md#throughput-of-replicas): what N replicas on N
    hosts sustain, from the CPU per request of a CM and of PostgreSQL and the round trips a
    request makes (``rtt``: the network round trip between a replica and the database)."""
    per_core = 1 / cm_cpu if cm_cpu else float("inf")
    pg_per_core = 1 / pg_cpu if pg_cpu else float("inf")
    in_flight = 32  # a replica's connection pool: pool_size 16 + max_overflow 16
    pool_bound = in_flight / (round_trips * rtt + pg_cpu)
    return (
        f"estimate: a replica sustains ~{per_core:.0f} GetDataKeys/s per core of its host "
        f"(1 / CM CPU per request), so N hosts of C cores ~N x C x {per_core:.0f}/s, until "
        f"PostgreSQL saturates at ~{pg_per_core:.0f}/s per database core (1 / PG CPU per "
        f"request): with a P-core database, N x C ~ {pg_per_core / per_core:.1f} x P CM cores. "
        f"Each request makes {round_trips:.0f} round trips to the database: at "
        f"{rtt * 1000:.1f} ms RTT that is +{round_trips * rtt * 1000:.1f} ms latency, and a "
        f"replica's {in_flight} pooled connections bound it to ~{pool_bound:.0f}/s (not the "
        "limit before CPU is)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--create-requests", type=int, default=1500)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved slices each measurement is split into"
    )
    parser.add_argument(
        "--workers",
        default=",".join(dict.fromkeys(["1", str(os.cpu_count() or 1)])),
        help="CM server processes (--workers of the CM) to measure, comma-separated "
        "(default: 1 and one per core)",
    )
    parser.add_argument(
        "--audit", default="on,off", help="audit log modes to measure side by side (on, off)"
    )
    parser.add_argument(
        "--replicas",
        default="",
        help="replicas mode: CM replica counts to measure on one PostgreSQL database (1,2,3)",
    )
    args = parser.parse_args()
    if args.replicas:
        main_replicas(args)
        return
    modes = [m for m in args.audit.split(",") if m]
    if not modes or set(modes) - {"on", "off"}:
        raise SystemExit("--audit takes on, off or on,off")
    from sqlalchemy.exc import SQLAlchemyError
    from trustflow_core.testing.databases import throwaway_database

    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "channel_jwe,tee_sim"}
    results = []
    with tempfile.TemporaryDirectory() as sim_dir:
        env["TRUSTFLOW_SIM_DIR"] = os.environ["TRUSTFLOW_SIM_DIR"] = sim_dir
        os.environ["TRUSTFLOW_LOAD_PLUGINS"] = env["TRUSTFLOW_LOAD_PLUGINS"]
        for name in args.backends.split(","):
            problem = missing_driver(name)
            if problem:
                print(f"skipping {name}: {problem}")
                continue
            for workers in (int(w) for w in args.workers.split(",")):
                with ExitStack() as stack:
                    dbdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                    try:
                        urls = {
                            mode: stack.enter_context(throwaway_database(name, dbdir))
                            for mode in modes
                        }
                    except SQLAlchemyError as exc:
                        print(f"skipping {name}: its server cannot be reached: {one_line(exc)}")
                        break
                    results += asyncio.run(run_backend(name, urls, args, env, workers))
    if not results:
        raise SystemExit("no backend could be measured")
    print(
        f"capsule manager, {args.clients} concurrent clients, {args.seconds:.0f} s per RPC, "
        f"{os.cpu_count()} cores, {args.rounds} interleaved rounds; "
        "1 RSA-3072 private op per request"
    )
    print(
        f"{'backend':<14} {'audit':<6} {'rpc':<15} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'RSA ceiling/core':>17} {'ratio':>7} {'CM CPU ms/req':>14} {'CPU ratio':>10} "
        f"{'load gen ms/req':>15}"
    )
    for r in results:
        for rpc in ("GetDataKeys", "CreateDataKeys"):
            rate, lat, (cm_cpu, client_cpu) = r[rpc]
            cpu, own = cm_cpu / max(1, len(lat)), client_cpu / max(1, len(lat))
            print(
                f"{r['backend']:<14} {r['audit']:<6} {rpc:<15} {rate:8.1f} {pct(lat, 0.5):8.1f} "
                f"{pct(lat, 0.99):8.1f} {r['ceiling']:17.1f} {rate / r['ceiling']:7.0%} "
                f"{cpu * 1000:14.2f} {1 / r['ceiling'] / cpu:10.0%} {own * 1000:15.2f}"
            )
    by_key = {(r["backend"], r["audit"]): r for r in results}
    for backend in dict.fromkeys(r["backend"] for r in results):
        on, off = by_key.get((backend, "on")), by_key.get((backend, "off"))
        if on is not None and off is not None:
            for rpc in ("GetDataKeys", "CreateDataKeys"):
                print(f"{backend:<14} {rpc:<15} audit on/off: {on[rpc][0] / off[rpc][0]:6.1%}")
    print(
        "ratio = req/s / RSA-3072 decryptions/s of one core (measured in this run); CPU ratio ="
        " RSA time per request / CPU time the CM process spent per request; load gen = CPU"
        " of this process (the 16 clients) per request, on the same 2 cores"
    )


def main_replicas(args: argparse.Namespace) -> None:
    from sqlalchemy.exc import SQLAlchemyError
    from trustflow_core.testing.databases import throwaway_database

    problem = missing_driver("postgresql")
    if problem:
        raise SystemExit(f"replicas mode needs PostgreSQL: {problem}")
    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "channel_jwe,tee_sim"}
    with tempfile.TemporaryDirectory() as sim_dir:
        env["TRUSTFLOW_SIM_DIR"] = os.environ["TRUSTFLOW_SIM_DIR"] = sim_dir
        os.environ["TRUSTFLOW_LOAD_PLUGINS"] = env["TRUSTFLOW_LOAD_PLUGINS"]
        try:
            with throwaway_database("postgresql") as url:
                asyncio.run(run_replicas(args, env, url))
        except SQLAlchemyError as exc:
            raise SystemExit(f"PostgreSQL cannot be reached: {one_line(exc)}") from None


if __name__ == "__main__":
    main()
