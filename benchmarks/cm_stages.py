#!/usr/bin/env python3
"""Where the Capsule Manager's CPU per GetDataKeys goes (issue 18 item 4), in one run (about
half a minute on SQLite):

* **total**: a ``trustflow capsule-manager --plat sim --workers 1`` process (one per audit
  mode, on its own SQLite database) answers SIM-attested GetDataKeys from ``--clients``
  concurrent clients (the requests are built before the clock starts, as in
  ``capsule_manager.py``); its CPU per request is read from /proc;
* **RSA**: the one RSA-3072 OAEP decryption each request needs (the content key, with the CM
  key), in CPU time of one thread of this process, in the same interleaved rounds as the CMs
  (CPU time on both sides of the share: wall time would count other processes' turns on a
  shared machine);
* **gRPC floor**: a gRPC server process whose GetDataKeys answers at once, driven the same
  way in the same rounds, on the CM's event loop (uvloop): what a unary call costs a Python
  gRPC server by itself;
* **stages**: every stage of the request path, called in this process on one of the same
  requests against an in-process CM (same plugins, its own SQLite database, audit on), timed
  with ``time.process_time`` over ``--iterations`` calls each (the audit stage appends and
  commits the request's release entry in this thread, as an uncontended release does). What
  the stages do not cover (gRPC, the event loop, the worker-thread hand-off, metrics, logging)
  is the total minus their sum.

It prints the stage table, the total per audit mode and the **RSA share** (RSA time per
decryption / CM CPU per GetDataKeys) and exits non-zero when the share with the audit log on
(the default configuration) is below ``--target`` (0.5).

    .venv/bin/python benchmarks/cm_stages.py [--seconds 6] [--clients 8] [--rounds 3]
        [--iterations 300] [--target 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
from _loopback import cpu_seconds, thread_cpu_seconds
from capsule_manager import capsule_manager, drive, prepare


async def serve_noop() -> None:
    """``--serve-noop``: a gRPC server whose GetDataKeys answers at once with an
    EncryptedResponse the size of the CM's (prints its port): the floor of a unary call."""
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2 as cm_pb2,
    )
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2_grpc as cm_grpc,
    )

    reply = cm_pb2.EncryptedResponse()
    reply.message.ciphertext = "A" * 3000
    reply.message.encrypted_key = "B" * 512

    class Noop(cm_grpc.CapsuleManagerServicer):
        async def GetDataKeys(self, request: Any, context: Any) -> Any:
            return reply

    server = grpc.aio.server()
    cm_grpc.add_CapsuleManagerServicer_to_server(Noop(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def rsa_cpu(key_pem: bytes) -> Callable[[float], tuple[int, float]]:
    """``run(seconds) -> (decryptions, CPU seconds)``: RSA-OAEP decryptions with the CM's key
    in this thread, timed in CPU time (``time.thread_time``) like the CM's CPU per request:
    on a shared machine wall time would count the time other processes held the core."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, rsa.RSAPrivateKey)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    blob = key.public_key().encrypt(os.urandom(16), oaep)

    def run(seconds: float) -> tuple[int, float]:
        count, started, cpu0 = 0, time.perf_counter(), time.thread_time()
        while time.perf_counter() - started < seconds:
            key.decrypt(blob, oaep)
            count += 1
        return count, time.thread_time() - cpu0

    return run


def per_call(fn: Callable[[], Any], iterations: int) -> float:
    """CPU seconds of this process per call of ``fn`` (after one warm-up call)."""
    fn()
    started = time.process_time()
    for _ in range(iterations):
        fn()
    return (time.process_time() - started) / iterations


async def per_await(fn: Callable[[], Awaitable[Any]], iterations: int) -> float:
    """:func:`per_call` for a coroutine function (awaited one at a time on this loop)."""
    await fn()
    started = time.process_time()
    for _ in range(iterations):
        await fn()
    return (time.process_time() - started) / iterations


def _busy() -> None:
    raise SystemExit("the audit log's writer was busy: the append stage would time nothing")


async def stages(args: argparse.Namespace, pm: Any) -> list[tuple[str, float]]:
    """The request path's stages, each timed in this process on one prepared request."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from trustflow_core.attestation import ra_user_data
    from trustflow_core.jose import b64url_decode
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2 as cm_pb2,
    )
    from trustflow_core.roles.capsule_manager.envelope import recipient_from_cert_pem
    from trustflow_core.roles.capsule_manager.resource_uri import parse_resource_uri
    from trustflow_core.roles.capsule_manager.server import CapsuleManager
    from trustflow_core.roles.capsule_manager.service import _app_identity
    from trustflow_core.roles.capsule_manager.settings import CMSettings
    from trustflow_core.wire import serialize_canonical

    n = args.iterations
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        settings = CMSettings(
            port=0, plat="sim", data_dir=tmp, storage_url=f"sqlite:///{tmp}/cm.db", audit=True
        )
        cm = CapsuleManager(settings, health_interval=3600)
        port = await cm.start()
        try:
            pool, _ = await prepare(f"127.0.0.1:{port}", argparse.Namespace(create_requests=0), pm)
            svc = cm.service
            assert svc is not None and cm.identity is not None
            request = pool[0]
            envelopes = svc.envelopes
            oaep = padding.OAEP(
                mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None
            )
            wrapped = b64url_decode(request.message.encrypted_key, "encrypted_key")
            key = cm.identity.private_key
            rows: list[tuple[str, float]] = []
            rsa = per_call(lambda: key.decrypt(wrapped, oaep), n)
            rows.append(("RSA-OAEP decryption of the content key (CM key)", rsa))
            opened = envelopes.open(request)
            rows.append(
                (
                    "envelope: JWE checks, AES-GCM, request digest",
                    per_call(lambda: envelopes.open(request), n) - rsa,
                )
            )
            inner = opened.parse(cm_pb2.GetDataKeysRequest)
            rows.append(
                (
                    "inner request JSON -> protobuf",
                    per_call(lambda: opened.parse(cm_pb2.GetDataKeysRequest), n),
                )
            )
            rows.append(
                (
                    "app certificate -> RSA key",
                    per_call(lambda: recipient_from_cert_pem(inner.cert), n),
                )
            )
            rr = inner.resource_request
            digest = ra_user_data(inner.cert.encode(), serialize_canonical(rr))
            rows.append(
                (
                    "report binding (canonical request, digest)",
                    per_call(lambda: ra_user_data(inner.cert.encode(), serialize_canonical(rr)), n),
                )
            )
            report = inner.attestation_report

            async def attest() -> Any:
                return await svc._attest(report, True, digest)

            rows.append(("attestation report verification", await per_await(attest, n)))
            verified = await attest()

            def identity() -> Any:
                app = _app_identity(rr, inner.cert, verified)
                return app, svc._env_for(verified, rr.env)

            rows.append(("policy env, app identity", per_call(identity, n)))
            app, env = identity()
            uris = [r.resource_uri for r in rr.resources]
            uuids = [parse_resource_uri(u).data_uuid for u in uris]
            read = per_call(lambda: svc.store.access_view(rr.scope, uuids, uris), n)
            rows.append(("decision: database read (SQLite)", read))
            decide = per_call(lambda: svc._decide(rr, env, uris, "get_data_keys"), n)
            rows.append(("decision: policies, rules, key unsealing", decide - read))
            keys, owners, revisions = svc._decide(rr, env, uris, "get_data_keys")
            rows.append(
                (
                    "release entries (audit drafts)",
                    per_call(lambda: svc._release_drafts(rr, app, "get_data_keys", owners), n),
                )
            )
            drafts = svc._release_drafts(rr, app, "get_data_keys", owners)
            commits = svc.store.audit_commits
            # the entries appended and committed in this thread, as an uncontended release does
            append = per_call(lambda: commits.write_now(drafts, revisions) or _busy(), n)
            rows.append(("audit entries: append and commit (SQLite)", append))
            response = cm_pb2.GetDataKeysResponse(
                data_keys=[cm_pb2.DataKey(resource_uri=u, data_key_b64=keys[u]) for u in uris],
                cert=cm.identity.cert_pem,
            )
            recipient = recipient_from_cert_pem(inner.cert)
            rows.append(
                (
                    "seal reply: JSON, RSA-OAEP to the app key, AES-GCM",
                    per_call(lambda: envelopes.seal(response, recipient), n),
                )
            )
        finally:
            await cm.stop()
    return rows


#: The CM's threads: its event loop (the main thread), then groups by OS-level name prefix (the
#: CM names its own threads); every other thread is gRPC's.
EVENT_LOOP = "event loop: gRPC handlers, request opening (its RSA decryption)"
NAMED_THREADS = (
    ("worker threads: decision, audit append, sealing", "cm-worker"),
    ("audit writer thread (contended appends)", "cm-audit-commit"),
)
OTHER_THREADS = "gRPC's own threads and the rest"
THREAD_GROUPS = (EVENT_LOOP, *(label for label, _ in NAMED_THREADS), OTHER_THREADS)


def thread_group(pid: int, tid: int, name: str) -> str:
    """Which of :data:`THREAD_GROUPS` thread ``tid`` (OS-level ``name``) of the CM process
    ``pid`` belongs to."""
    if tid == pid:
        return EVENT_LOOP
    for label, prefix in NAMED_THREADS:
        if name.startswith(prefix):
            return label
    return OTHER_THREADS


def by_thread_group(
    pid: int, before: dict[tuple[int, str], float], after: dict[tuple[int, str], float]
) -> dict[str, float]:
    """The CPU seconds each of :data:`THREAD_GROUPS` spent between two
    :func:`~_loopback.thread_cpu_seconds` readings of process ``pid``."""
    spent: dict[str, float] = {}
    for (tid, name), seconds in after.items():
        label = thread_group(pid, tid, name)
        spent[label] = spent.get(label, 0.0) + seconds - before.get((tid, name), 0.0)
    return spent


async def totals(args: argparse.Namespace, env: dict[str, str], pm: Any) -> dict[str, Any]:
    """CM CPU per GetDataKeys for each audit mode and RSA decryptions/s, interleaved."""
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2_grpc as cm_grpc,
    )

    with ExitStack() as stack:
        cms: dict[str, dict[str, Any]] = {}
        for mode in ("on", "off"):
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url = f"sqlite:///{tmp}/cm.db"
            target, pid = stack.enter_context(capsule_manager(tmp, url, env, 1, audit=mode == "on"))
            pool, _ = await prepare(target, argparse.Namespace(create_requests=0), pm)
            cms[mode] = {"tmp": tmp, "pid": pid, "target": target, "pool": pool}
            cms[mode].update(count=0, cpu=0.0, elapsed=0.0, threads={})
        noop = subprocess.Popen(
            [sys.executable, __file__, "--serve-noop"], stdout=subprocess.PIPE, text=True
        )
        stack.callback(noop.wait, 10)
        stack.callback(noop.terminate)
        assert noop.stdout is not None
        port = int(noop.stdout.readline())
        cms["noop"] = {"pid": noop.pid, "target": f"127.0.0.1:{port}", "pool": cms["on"]["pool"]}
        cms["noop"].update(count=0, cpu=0.0, elapsed=0.0, threads={})
        decrypt = rsa_cpu((cms["on"]["tmp"] / "cm.key").read_bytes())
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = []
        for cm in cms.values():
            mine = [
                grpc.aio.insecure_channel(cm["target"], options=options)
                for _ in range(args.clients)
            ]
            channels += mine
            cm["calls"] = [cm_grpc.CapsuleManagerStub(c).GetDataKeys for c in mine]
        decryptions, decrypt_time = 0, 0.0
        try:
            for cm in cms.values():
                await drive(cm["calls"], cm["pool"], 0.5, True)  # warm-up
            for round_ in range(args.rounds):
                count, took = decrypt(0.5)
                decryptions, decrypt_time = decryptions + count, decrypt_time + took
                order = list(cms.values())
                if round_ % 2:
                    order.reverse()
                for cm in order:
                    cpu0, threads0 = cpu_seconds(cm["pid"]), thread_cpu_seconds(cm["pid"])
                    elapsed, latencies = await drive(
                        cm["calls"], cm["pool"], args.seconds / args.rounds, True
                    )
                    cm["cpu"] += cpu_seconds(cm["pid"]) - cpu0
                    for group, seconds in by_thread_group(
                        cm["pid"], threads0, thread_cpu_seconds(cm["pid"])
                    ).items():
                        cm["threads"][group] = cm["threads"].get(group, 0.0) + seconds
                    cm["count"] += len(latencies)
                    cm["elapsed"] += elapsed
        finally:
            for c in channels:
                await c.close()
    on = cms["on"]
    return {
        "rsa": decrypt_time / decryptions,
        "threads": {g: seconds / max(1, on["count"]) for g, seconds in on["threads"].items()},
        "modes": {
            m: (cm["cpu"] / max(1, cm["count"]), cm["count"] / cm["elapsed"])
            for m, cm in cms.items()
        },
    }


async def run(args: argparse.Namespace, env: dict[str, str]) -> int:
    from trustflow_core.manager import get_plugin_manager

    pm = get_plugin_manager()
    measured = await totals(args, env, pm)
    rows = await stages(args, pm)
    rsa = measured["rsa"]
    noop_cpu = measured["modes"].pop("noop")[0]
    on_cpu = measured["modes"]["on"][0]
    print(
        f"capsule manager CPU per GetDataKeys by stage (SQLite, one CM process, {args.clients} "
        f"clients, {args.rounds} interleaved rounds, {os.cpu_count()} cores shared with the "
        "load generator)"
    )
    print(f"{'stage':<52} {'ms/req':>8} {'share':>7}")
    for name, seconds in rows:
        print(f"{name:<52} {seconds * 1000:8.3f} {seconds / on_cpu:7.1%}")
    rows.append(("gRPC unary call (no-op server, same clients)", noop_cpu))
    print(f"{rows[-1][0]:<52} {noop_cpu * 1000:8.3f} {noop_cpu / on_cpu:7.1%}")
    rest = on_cpu - sum(s for _, s in rows)
    rest_name = "rest: thread hand-off, event loop, metrics, logs, ..."
    print(f"{rest_name:<52} {rest * 1000:8.3f} {rest / on_cpu:7.1%}")
    print(f"{'total (CM process, audit on, /proc)':<52} {on_cpu * 1000:8.3f} {1:7.1%}")
    print("the same total, live, by thread (/proc per thread, audit on):")
    for label in THREAD_GROUPS:
        seconds = measured["threads"].get(label, 0.0)
        print(f"  {label:<66} {seconds * 1000:8.3f} {seconds / on_cpu:7.1%}")
    failed = False
    for mode, (cpu, rate) in measured["modes"].items():
        share = rsa / cpu
        print(
            f"audit {mode:<3}: {rate:7.1f} GetDataKeys/s, CM CPU {cpu * 1000:.3f} ms/req, "
            f"RSA-3072 decryption {rsa * 1000:.3f} ms CPU (this run) = {share:.1%} of it"
        )
        if mode == "on" and share < args.target:
            failed = True
    if failed:
        print(f"FAIL: RSA share with the audit log on is below the target {args.target:.0%}")
        return 1
    print(f"OK: RSA share with the audit log on >= {args.target:.0%}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--serve-noop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_noop:
        from trustflow_core.roles._server import use_uvloop

        use_uvloop()  # the event loop the CM serves on
        asyncio.run(serve_noop())
        return
    env = {**os.environ, "TRUSTFLOW_LOAD_PLUGINS": "channel_jwe,tee_sim"}
    with tempfile.TemporaryDirectory() as sim_dir:
        env["TRUSTFLOW_SIM_DIR"] = os.environ["TRUSTFLOW_SIM_DIR"] = sim_dir
        os.environ["TRUSTFLOW_LOAD_PLUGINS"] = env["TRUSTFLOW_LOAD_PLUGINS"]
        sys.exit(asyncio.run(run(args, env)))


if __name__ == "__main__":
    main()
