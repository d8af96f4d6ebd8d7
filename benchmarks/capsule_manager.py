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

    .venv/bin/python benchmarks/capsule_manager.py [--seconds 5] [--clients 16]
        [--backends sqlite,postgresql] [--workers 1,2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from _loopback import capsule_manager_process, cpu_seconds
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding


@contextmanager
def capsule_manager(
    data_dir: Path, url: str, env: dict[str, str], workers: int
) -> Iterator[tuple[str, int]]:
    extra = ["--data-dir", str(data_dir), "--storage-url", url, "--workers", str(workers)]
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


async def run_backend(
    name: str, url: str, args: argparse.Namespace, env: dict[str, str], workers: int
) -> dict[str, Any]:
    from trustflow_core.attestation import ra_user_data
    from trustflow_core.manager import get_plugin_manager
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2 as cm_pb2,
    )
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2_grpc as cm_grpc,
    )
    from trustflow_core.registry import ATTESTER, backend_class
    from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient
    from trustflow_core.roles.capsule_manager_client.keyexchange import ephemeral_credentials
    from trustflow_core.roles.capsule_manager_protocol.reports import report_to_pb
    from trustflow_core.wire import serialize_canonical

    pm = get_plugin_manager()
    with (
        tempfile.TemporaryDirectory() as tmp,
        capsule_manager(Path(tmp), url, env, workers) as (target, pid),
    ):
        owner, app = ephemeral_credentials("owner"), ephemeral_credentials("app")
        uuid = f"bench-{os.urandom(4).hex()}"
        async with CapsuleManagerClient(target, pm=pm) as client:
            await client.create_data_keys(
                owner, [(uuid, base64.b64encode(os.urandom(16)).decode())]
            )
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
        decrypt = rsa_decryptor((Path(tmp) / "cm.key").read_bytes())
        # one connection per client (a local subchannel pool each), as separate clients have
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(args.clients)]
        stubs = [cm_grpc.CapsuleManagerStub(c) for c in channels]
        calls = {
            "GetDataKeys": [s.GetDataKeys for s in stubs],
            "CreateDataKeys": [s.CreateDataKeys for s in stubs],
        }
        pools = {"GetDataKeys": get_pool, "CreateDataKeys": create_pool}
        totals: dict[str, dict[str, Any]] = {
            rpc: {"elapsed": 0.0, "latencies": [], "cm_cpu": 0.0, "own_cpu": 0.0} for rpc in calls
        }
        decryptions, decrypt_time = 0, 0.0
        try:
            await drive(calls["GetDataKeys"], get_pool, 0.5, True)  # warm-up
            # interleaved rounds (RSA ceiling, GetDataKeys, CreateDataKeys, ...): a machine
            # whose speed drifts during the run affects the ceiling and the RPCs alike
            for round_ in range(args.rounds):
                count, took = decrypt(0.5)  # the CM is idle meanwhile
                decryptions, decrypt_time = decryptions + count, decrypt_time + took
                for rpc, pool in pools.items():
                    reuse = rpc == "GetDataKeys"
                    chunk = pool if reuse else pool[round_ :: args.rounds]
                    cpu0, own0 = cpu_seconds(pid), time.process_time()
                    elapsed, latencies = await drive(
                        calls[rpc], chunk, args.seconds / args.rounds, reuse
                    )
                    total = totals[rpc]
                    total["elapsed"] += elapsed
                    total["latencies"] += latencies
                    total["cm_cpu"] += cpu_seconds(pid) - cpu0
                    total["own_cpu"] += time.process_time() - own0
        finally:
            for c in channels:
                await c.close()
    result: dict[str, Any] = {
        "backend": f"{name} x{workers}",
        "ceiling": decryptions / decrypt_time,
    }
    for rpc, total in totals.items():
        rate = len(total["latencies"]) / total["elapsed"]
        result[rpc] = (rate, total["latencies"], (total["cm_cpu"], total["own_cpu"]))
    return result


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
    args = parser.parse_args()
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
                with contextlib.ExitStack() as stack:
                    dbdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                    try:
                        url = stack.enter_context(throwaway_database(name, dbdir))
                    except SQLAlchemyError as exc:
                        print(f"skipping {name}: its server cannot be reached: {one_line(exc)}")
                        break
                    results.append(asyncio.run(run_backend(name, url, args, env, workers)))
    if not results:
        raise SystemExit("no backend could be measured")
    print(
        f"capsule manager, {args.clients} concurrent clients, {args.seconds:.0f} s per RPC, "
        f"{os.cpu_count()} cores, {args.rounds} interleaved rounds; "
        "1 RSA-3072 private op per request"
    )
    print(
        f"{'backend':<14} {'rpc':<15} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'RSA ceiling/core':>17} {'ratio':>7} {'CM CPU ms/req':>14} {'CPU ratio':>10} "
        f"{'load gen ms/req':>15}"
    )
    for r in results:
        for rpc in ("GetDataKeys", "CreateDataKeys"):
            rate, lat, (cm_cpu, client_cpu) = r[rpc]
            cpu, own = cm_cpu / max(1, len(lat)), client_cpu / max(1, len(lat))
            print(
                f"{r['backend']:<14} {rpc:<15} {rate:8.1f} {pct(lat, 0.5):8.1f} "
                f"{pct(lat, 0.99):8.1f} {r['ceiling']:17.1f} {rate / r['ceiling']:7.0%} "
                f"{cpu * 1000:14.2f} {1 / r['ceiling'] / cpu:10.0%} {own * 1000:15.2f}"
            )
    print(
        "ratio = req/s / RSA-3072 decryptions/s of one core (measured in this run); CPU ratio ="
        " RSA time per request / CPU time the CM process spent per request; load gen = CPU"
        " of this process (the 16 clients) per request, on the same 2 cores"
    )


if __name__ == "__main__":
    main()
