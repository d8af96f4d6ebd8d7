#!/usr/bin/env python3
"""How the Capsule Manager's GetDataKeys cost grows with the data it holds (issue 18 item 6).

For each backend (SQLite, PostgreSQL), one CM process per size (default 10, 10,000 and
100,000 data items, each with its sealed data key and a policy of one rule in the requests'
scope), each on its own fresh database: the item the requests ask for is created through the
RPCs (``benchmarks/capsule_manager.py``'s ``prepare``), the others are seeded straight into
the same schema with bulk inserts (``roles/capsule_manager/db_models.py``), their keys sealed
with the CM's own storage key and ``Sealer`` exactly as the CM seals them (seeding 100,000
items through the RPCs would take most of an hour). Items belong to 1,000 owners, the
requests' owner among them. Then GetDataKeys through the real gRPC server with ``--clients``
concurrent clients, the sizes taking turns in ``--rounds`` slices.

Prints each size's p50/p99 latency and CM CPU per request, and the largest size's ratio to
the smallest (the baseline); exits 1 when a ratio is above ``--target`` (1.5, the issue's)
unless ``--informational``. PostgreSQL: the server of ``TRUSTFLOW_CM_POSTGRES_ADMIN_URL``
(default 127.0.0.1:5432, user postgres); each database is created for the run and dropped.

    .venv/bin/python benchmarks/cm_growth.py [--sizes 10,10000,100000]
        [--backends sqlite,postgresql] [--seconds 6] [--rounds 3] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
from _loopback import cpu_seconds
from capsule_manager import capsule_manager, drive, missing_driver, one_line, pct, prepare

OWNERS = 1000
BATCH = 5000


def seed(url: str, storage_key_file: Path, count: int, owner: str, grantee: str) -> float:
    """Insert ``count`` items (record, sealed key, policy in scope ``default`` with one rule)
    into the CM database at ``url``; every 1,000th belongs to ``owner`` and grants
    ``grantee``. Return the seconds it took."""
    from sqlalchemy import create_engine, insert, select
    from trustflow_core.roles.capsule_manager.database import KEYS_TABLE
    from trustflow_core.roles.capsule_manager.db_models import (
        DataKeyRow,
        DataRecord,
        PolicyRow,
        RuleRow,
    )
    from trustflow_core.roles.capsule_manager.policy import OpConstraint, Rule
    from trustflow_core.roles.capsule_manager.sealing import Sealer, load_or_create_key

    started = time.perf_counter()
    sealer = Sealer(load_or_create_key(storage_key_file))
    engine = create_engine(url)
    try:
        for first in range(0, count, BATCH):
            ids = range(first, min(count, first + BATCH))
            uuids = [f"seed-{i:07d}" for i in ids]
            owners = [
                owner if i % OWNERS == 0 else f"party-{i % OWNERS:04d}".ljust(40, "0") for i in ids
            ]
            keys = []
            for u in uuids:
                nonce, sealed = sealer.seal(
                    base64.b64encode(os.urandom(16)), KEYS_TABLE, f"{u}/part0"
                )
                keys.append(
                    {
                        "resource_uri": f"{u}/part0",
                        "data_uuid": u,
                        "nonce": nonce,
                        "sealed_key": sealed,
                    }
                )
            with engine.begin() as conn:
                conn.execute(
                    insert(DataRecord),
                    [
                        {"data_uuid": u, "owner_party_id": o, "parents_json": "[]"}
                        for u, o in zip(uuids, owners, strict=True)
                    ],
                )
                conn.execute(insert(DataKeyRow), keys)
                conn.execute(
                    insert(PolicyRow),
                    [
                        {"scope": "default", "data_uuid": u, "owner_party_id": o}
                        for u, o in zip(uuids, owners, strict=True)
                    ],
                )
                policy_ids = conn.execute(
                    select(PolicyRow.id, PolicyRow.owner_party_id).where(
                        PolicyRow.data_uuid.in_(uuids)
                    )
                ).all()
                rules = []
                for policy_id, policy_owner in policy_ids:
                    rule = Rule(
                        rule_id="r",
                        grantee_party_ids=(grantee if policy_owner == owner else policy_owner,),
                        op_constraints=(OpConstraint("bench"),),
                        columns=("*",),
                        global_constraints=('r.env.tee.platform == "sim"',),
                    )
                    rules.append(
                        {"policy_id": policy_id, "rule_id": "r", "body_json": rule.to_json()}
                    )
                conn.execute(insert(RuleRow), rules)
    finally:
        engine.dispose()
    if count:
        _check_seeded(url, sealer, "seed-0000000")
    return time.perf_counter() - started


def _check_seeded(url: str, sealer: Any, data_uuid: str) -> None:
    """Read a seeded item back through the CM's own ``Database.access_view`` and open its key
    (the seeding wrote what the CM reads, sealed as the CM seals)."""
    from trustflow_core.roles.capsule_manager.database import Database

    db = Database(url, sealer)
    try:
        view, keys = db.access_view("default", [data_uuid], [f"{data_uuid}/part0"])
        record, policy = view[data_uuid]
        if record is None or policy is None or len(policy.rules) != 1:
            raise SystemExit(f"seeded item {data_uuid} does not read back: {view}")
        if len(base64.b64decode(keys.open(f"{data_uuid}/part0"))) != 16:
            raise SystemExit(f"seeded key of {data_uuid} does not open to 16 bytes")
    finally:
        db.close()


async def run_backend(
    name: str, urls: dict[int, str], args: argparse.Namespace, env: dict[str, str]
) -> dict[int, dict[str, Any]]:
    """One CM per size (``urls``: size -> database URL), seeded, then measured in turns."""
    from trustflow_core.manager import get_plugin_manager
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2_grpc as cm_grpc,
    )

    pm = get_plugin_manager()
    prep = argparse.Namespace(create_requests=0)
    cms: dict[int, dict[str, Any]] = {}
    channels = []
    with ExitStack() as stack:
        for size, url in urls.items():
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            target, pid = stack.enter_context(capsule_manager(tmp, url, env, args.workers))
            pool, _ = await prepare(target, prep, pm)
            # the requests' owner: the policy's owner of the one item prepare() created
            owner, grantee = _prepared_parties(url)
            took = await asyncio.to_thread(seed, url, tmp / "storage.key", size - 1, owner, grantee)
            print(f"{name}: seeded {size - 1} items in {took:.1f} s", file=sys.stderr)
            options = [("grpc.use_local_subchannel_pool", 1)]
            mine = [grpc.aio.insecure_channel(target, options=options) for _ in range(args.clients)]
            channels += mine
            cms[size] = {
                "pid": pid,
                "pool": pool,
                "calls": [cm_grpc.CapsuleManagerStub(c).GetDataKeys for c in mine],
                "latencies": [],
                "elapsed": 0.0,
                "cpu": 0.0,
            }
        try:
            for cm in cms.values():  # warm-up (caches, connections, the database's pages)
                await drive(cm["calls"], cm["pool"], 0.5, True)
            for round_ in range(args.rounds):
                order = list(cms.values())
                if round_ % 2:
                    order.reverse()
                for cm in order:
                    cpu0 = cpu_seconds(cm["pid"])
                    elapsed, latencies = await drive(
                        cm["calls"], cm["pool"], args.seconds / args.rounds, True
                    )
                    cm["cpu"] += cpu_seconds(cm["pid"]) - cpu0
                    cm["elapsed"] += elapsed
                    cm["latencies"] += latencies
        finally:
            for c in channels:
                await c.close()
    return cms


def _prepared_parties(url: str) -> tuple[str, str]:
    """(owner, grantee) of the one policy in the database at ``url`` (made by prepare())."""
    import json

    from sqlalchemy import create_engine, select
    from trustflow_core.roles.capsule_manager.db_models import PolicyRow, RuleRow

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            owner, body = conn.execute(
                select(PolicyRow.owner_party_id, RuleRow.body_json).join(
                    RuleRow, RuleRow.policy_id == PolicyRow.id
                )
            ).one()
    finally:
        engine.dispose()
    return owner, json.loads(body)["grantee_party_ids"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,10000,100000")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="CM server processes")
    parser.add_argument("--target", type=float, default=1.5)
    parser.add_argument(
        "--informational", action="store_true", help="report a missed target, exit 0"
    )
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s})
    if not sizes or sizes[0] < 1 or args.rounds < 1:
        parser.error("--sizes must be positive integers, --rounds at least 1")
    from sqlalchemy.exc import SQLAlchemyError
    from trustflow_core.testing.databases import throwaway_database

    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "channel_jwe,tee_sim"}
    results: dict[str, dict[int, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as sim_dir:
        env["TRUSTFLOW_SIM_DIR"] = os.environ["TRUSTFLOW_SIM_DIR"] = sim_dir
        os.environ["TRUSTFLOW_LOAD_PLUGINS"] = env["TRUSTFLOW_LOAD_PLUGINS"]
        for name in args.backends.split(","):
            problem = missing_driver(name)
            if problem:
                print(f"skipping {name}: {problem}")
                continue
            with ExitStack() as stack:
                dbdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                try:
                    urls = {s: stack.enter_context(throwaway_database(name, dbdir)) for s in sizes}
                except SQLAlchemyError as exc:
                    print(f"skipping {name}: its server cannot be reached: {one_line(exc)}")
                    continue
                results[name] = asyncio.run(run_backend(name, urls, args, env))
    if not results:
        raise SystemExit("no backend could be measured")
    print(
        f"capsule manager GetDataKeys vs items in the database, {args.clients} concurrent "
        f"clients, {args.workers} CM process(es), {args.seconds:g} s per size in "
        f"{args.rounds} interleaved rounds, {os.cpu_count()} cores"
    )
    print(
        f"{'backend':<11}{'items':>8}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'CM CPU ms/req':>15}{'p50 ratio':>11}{'CPU ratio':>11}"
    )
    missed = []
    for name, cms in results.items():
        base = cms[sizes[0]]
        base_p50 = pct(base["latencies"], 0.5)
        base_cpu = base["cpu"] / len(base["latencies"])
        for size, cm in cms.items():
            lat = cm["latencies"]
            cpu = cm["cpu"] / len(lat)
            p50_ratio, cpu_ratio = pct(lat, 0.5) / base_p50, cpu / base_cpu
            print(
                f"{name:<11}{size:>8}{len(lat) / cm['elapsed']:>8.0f}{pct(lat, 0.5):>8.2f}"
                f"{pct(lat, 0.99):>8.2f}{cpu * 1000:>15.2f}{p50_ratio:>10.2f}x"
                f"{cpu_ratio:>10.2f}x"
            )
            for what, ratio in (("p50", p50_ratio), ("CPU/req", cpu_ratio)):
                if ratio > args.target:
                    missed.append(f"{name} {size} items {what} {ratio:.2f}x")
    print(f"ratios: to {sizes[0]} items (the baseline); target <= {args.target:g}x")
    if missed:
        fail = not args.informational
        note = "" if fail else " (informational)"
        print(f"growth targets missed: {'; '.join(missed)}{note}")
        if fail:
            sys.exit(1)


if __name__ == "__main__":
    main()
