"""CM replicas sharing one PostgreSQL database and one identity (the key pair and storage key
files), each a real ``trustflow capsule-manager`` process on 127.0.0.1, and clients failing
over between them (docs/failover.md):

* the failover test of issue 16: 16 clients doing GetDataKeys and CreateDataKeys through the
  failover client while one replica is SIGKILLed: no GetDataKeys fails, every CreateDataKeys
  is applied exactly once (its keys and one audit entry per data_uuid) or refused with no
  effect; clients of the killed replica alone (the old single-endpoint client) do fail;
* a request that a replica COMMITTED but whose answer never came back (a proxy cuts the
  connection when the answer starts) is re-sent to another replica and answered as the first
  time, without a second effect: CreateDataKeys, a result registration, RegisterCert,
  GetDataKeys; a different request for the same result, or with the same ``jti``, is still
  refused.

PostgreSQL at 127.0.0.1:5432 (TRUSTFLOW_CM_POSTGRES_ADMIN_URL); skipped when it is absent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from trustflow_core.errors import InvalidInput, TrustflowError
from trustflow_core.harness.cm_world import data_key_b64, grant_rule, new_data_uuid, new_party
from trustflow_core.keyexchange import Resource, ResourceRequest, ResultKey
from trustflow_core.manager import get_plugin_manager
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.registry import ATTESTER, backend_class
from trustflow_core.roles.capsule_manager.database import KEYS_TABLE
from trustflow_core.roles.capsule_manager.sealing import Sealer, load_or_create_key
from trustflow_core.roles.capsule_manager_client.client import (
    CapsuleManagerClient,
    CapsuleManagerError,
    Credentials,
)
from trustflow_core.roles.capsule_manager_client.keyexchange import CapsuleManagerKeyExchange
from trustflow_core.testing.databases import throwaway_database
from trustflow_core.testing.processes import RoleProcess
from trustflow_core.wire import to_json

SCOPE = "default"
asyncio_test = pytest.mark.asyncio


# ---- replicas ------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL (dropped afterwards); skip without it."""
    database = throwaway_database("postgresql")
    try:
        url = database.__enter__()
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0]
        pytest.skip(f"PostgreSQL (TRUSTFLOW_CM_POSTGRES_ADMIN_URL) is not reachable: {reason}")
    try:
        yield url
    finally:
        database.__exit__(None, None, None)


@dataclass
class Replicas:
    """CM processes sharing ``url`` and the identity files under ``shared``."""

    env: dict[str, str]
    url: str
    root: Path
    procs: list[RoleProcess] = field(default_factory=list)

    @property
    def shared(self) -> Path:
        return self.root / "identity"

    def start(self, count: int) -> Replicas:
        """Start ``count`` replicas: the first creates the identity and the schema, the others
        start together once it listens."""
        self.shared.mkdir(mode=0o700, exist_ok=True)
        self.procs.append(self._replica(len(self.procs)).wait_listening())
        more = [self._replica(len(self.procs) + i) for i in range(count - 1)]
        self.procs.extend(p.wait_listening() for p in more)
        return self

    def _replica(self, n: int) -> RoleProcess:
        data_dir = self.root / f"replica{n}"
        data_dir.mkdir(mode=0o700)
        return RoleProcess(
            self.env,
            self.root / f"replica{n}.stderr",
            "capsule-manager",
            "--plat", "sim", "--port", "0", "--data-dir", str(data_dir),
            "--storage-url", self.url,
            "--private-key-file", str(self.shared / "cm.key"),
            "--cert-file", str(self.shared / "cm.crt"),
            "--storage-key-file", str(self.shared / "storage.key"),
        )  # fmt: skip

    @property
    def targets(self) -> list[str]:
        return [p.target for p in self.procs]

    def kill(self, n: int) -> None:
        self.procs[n].proc.send_signal(signal.SIGKILL)
        self.procs[n].proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    # ---- what the database holds ------------------------------------------------------------

    def sealer(self) -> Sealer:
        return Sealer(load_or_create_key(self.shared / "storage.key"))

    def query(self, sql: str, **params: Any) -> list[Any]:
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql), params).all())
        finally:
            engine.dispose()

    def stored_keys(self, uris: Sequence[str]) -> dict[str, list[str]]:
        """Every stored key of ``uris`` (opened with the shared storage key)."""
        sealer = self.sealer()
        out: dict[str, list[str]] = {u: [] for u in uris}
        rows = self.query(
            "SELECT resource_uri, nonce, sealed_key FROM cm_data_keys "
            "WHERE resource_uri = ANY(:uris)",
            uris=list(uris),
        )
        for uri, nonce, sealed in rows:
            out[uri].append(sealer.open(bytes(nonce), bytes(sealed), KEYS_TABLE, uri).decode())
        return out

    def audit_events(self, uuids: Sequence[str], event: str) -> dict[str, int]:
        """How many audit entries of ``event`` each data_uuid has."""
        rows = self.query(
            "SELECT data_uuid, entry_json FROM cm_audit WHERE data_uuid = ANY(:uuids)",
            uuids=list(uuids),
        )
        counts = dict.fromkeys(uuids, 0)
        for uuid, entry in rows:
            if f'"{event}"' in entry:
                counts[uuid] += 1
        return counts


@pytest.fixture(scope="module")
def pair(sim_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Two replicas for the re-send tests."""
    with postgres_database() as url:
        replicas = Replicas(sim_env, url, tmp_path_factory.mktemp("pair"))
        try:
            yield replicas.start(2)
        finally:
            replicas.stop()


# ---- a connection cut when the answer starts ------------------------------------------------


class CuttingProxy:
    """A TCP proxy to ``upstream`` that forwards every request and, while ``armed``, closes
    both connections at the first HTTP/2 HEADERS frame of an answer (the CM has done the work
    and committed it; the client never learns): the replica "died before replying"."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.armed = False
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def target(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        u_reader, u_writer = await asyncio.open_connection(*self.upstream)

        def close() -> None:
            c_writer.close()
            u_writer.close()

        async def requests() -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await c_reader.read(65536):
                    u_writer.write(data)
                    await u_writer.drain()
            close()

        async def answers() -> None:
            buffer = b""
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await u_reader.read(65536):
                    buffer += data
                    while len(buffer) >= 9:
                        length = int.from_bytes(buffer[:3], "big")
                        if len(buffer) < 9 + length:
                            break
                        kind = buffer[3]
                        stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                        if self.armed and kind == 0x1 and stream:
                            self.cuts += 1
                            close()
                            return
                        c_writer.write(buffer[: 9 + length])
                        buffer = buffer[9 + length :]
                    await c_writer.drain()
            close()

        for coro in (requests(), answers()):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


@pytest_asyncio.fixture
async def cut(pair: Replicas) -> AsyncIterator[CuttingProxy]:
    """A cutting proxy in front of the first replica."""
    async with CuttingProxy(pair.targets[0]) as proxy:
        yield proxy


def sim_attester() -> Any:
    return backend_class(get_plugin_manager(), ATTESTER, "sim").from_settings()


async def owner_data(
    client: CapsuleManagerClient, owner: Credentials, app: Credentials, count: int = 1
) -> list[str]:
    """``count`` data_uuids of ``owner``, each with a key and a policy granting ``app`` psi."""
    uuids = [new_data_uuid() for _ in range(count)]
    await client.create_data_keys(owner, [(u, data_key_b64()) for u in uuids])
    for uuid in uuids:
        await client.create_data_policy(owner, SCOPE, uuid, [grant_rule(app.party_id)])
    return uuids


# ---- re-sending what a replica committed ---------------------------------------------------


@asyncio_test
async def test_committed_create_data_keys_resent_to_another_replica(
    pair: Replicas, cut: CuttingProxy
) -> None:
    alice = new_party("alice")
    async with CapsuleManagerClient([cut.target, pair.targets[1]]) as client:
        await client.cm_cert_pem()  # through the proxy, not cut
        uuid, key = new_data_uuid(), data_key_b64()
        cut.armed = True
        await client.create_data_keys(alice, [(uuid, key), (uuid + "/part2", key)])
    assert cut.cuts == 1  # the first replica applied it; its answer was lost
    assert pair.stored_keys([uuid, uuid + "/part2"]) == {uuid: [key], uuid + "/part2": [key]}
    assert pair.audit_events([uuid], "keys_created") == {uuid: 1}  # applied once


@asyncio_test
async def test_identical_resend_returns_the_original_result_and_a_reused_jti_is_refused(
    pair: Replicas,
) -> None:
    alice = new_party("alice")
    first, second = (CapsuleManagerClient(t) for t in pair.targets)
    async with first, second:
        uuid = new_data_uuid()
        await first.create_data_keys(alice, [(uuid, data_key_b64())])
        request = cm_pb2.CreateDataPolicyRequest(
            owner_party_id=alice.party_id,
            scope=SCOPE,
            policy=cm_pb2.Policy(data_uuid=uuid, rules=[grant_rule(alice.party_id)]),
        )
        claims = {"iat": int(time.time()), "jti": os.urandom(16).hex()}
        envelope = await sealed(first, request, alice, claims)
        assert (await first._call("CreateDataPolicy", envelope)).status.code == 0
        assert (await second._call("CreateDataPolicy", envelope)).status.code == 0
        # another request signed with the same jti, on the other replica: refused
        request.policy.rules[0].grantee_party_ids[:] = ["mallory"]
        other = await sealed(second, request, alice, claims)
        status = (await second._call("CreateDataPolicy", other)).status
        assert status.code == 3 and "JWS header jti" in status.message, status
        policies = await second.list_data_policies(alice, SCOPE)
    assert [list(r.grantee_party_ids) for p in policies for r in p.rules] == [[alice.party_id]]
    assert pair.audit_events([uuid], "policy_set") == {uuid: 1}


async def sealed(
    client: CapsuleManagerClient, inner: Any, creds: Credentials, claims: dict[str, Any]
) -> cm_pb2.EncryptedRequest:
    payload = to_json(inner, style="sdk").encode()
    jws = client.channel.sign(payload, creds.private_key, creds.chain, claims=claims)
    return await client.seal_request(json.dumps(jws.to_dict(), separators=(",", ":")).encode())


@asyncio_test
async def test_committed_result_registration_resent_to_another_replica(
    pair: Replicas, cut: CuttingProxy
) -> None:
    alice, app = new_party("alice"), new_party("app")
    async with CapsuleManagerClient(pair.targets[1]) as owner:
        (ancestor,) = await owner_data(owner, alice, app)
    kx = CapsuleManagerKeyExchange(
        [cut.target, pair.targets[1]], attester=sim_attester(), credentials=app
    )
    result = ResultKey(f"res-{os.urandom(4).hex()}", SCOPE, os.urandom(16), (ancestor,), "carol")
    async with kx:
        await kx.client.cm_cert_pem()
        cut.armed = True
        await kx.register_result_key(result)  # committed by the first replica, answer lost
        assert cut.cuts == 1
        cut.armed = False
        await kx.register_result_key(result)  # the owner's own retry: the same answer
        # a DIFFERENT registration of the same data_uuid is refused: another key, another scope
        with pytest.raises(InvalidInput, match="already registered"):
            await kx.register_result_key(
                ResultKey(result.resource_uri, SCOPE, os.urandom(16), (ancestor,), "carol")
            )
        async with CapsuleManagerClient(pair.targets[1]) as owner:
            await owner.create_data_policy(alice, "other", ancestor, [grant_rule(app.party_id)])
        with pytest.raises(InvalidInput, match="already registered"):
            await kx.register_result_key(
                ResultKey(result.resource_uri, "other", result.key, (ancestor,), "carol")
            )
    b64 = base64.b64encode(result.key).decode()
    assert pair.stored_keys([result.resource_uri]) == {result.resource_uri: [b64]}
    assert pair.audit_events([result.resource_uri], "result_registered") == {result.resource_uri: 1}


@asyncio_test
async def test_committed_register_cert_resent_to_another_replica(
    pair: Replicas, cut: CuttingProxy
) -> None:
    alice = new_party("alice")
    async with CapsuleManagerClient([cut.target, pair.targets[1]]) as client:
        await client.cm_cert_pem()
        cut.armed = True
        await client.register_cert(alice)  # "already existed" on the re-send: our own
        assert cut.cuts == 1
        cut.armed = False
        with pytest.raises(CapsuleManagerError, match="has stored"):  # not re-sent: upstream's
            await client.register_cert(alice)


@asyncio_test
async def test_key_request_resent_to_another_replica(pair: Replicas, cut: CuttingProxy) -> None:
    alice, app = new_party("alice"), new_party("app")
    async with CapsuleManagerClient(pair.targets[1]) as owner:
        (uuid,) = await owner_data(owner, alice, app)
    kx = CapsuleManagerKeyExchange(
        [cut.target, pair.targets[1]], attester=sim_attester(), credentials=app
    )
    async with kx:
        await kx.client.cm_cert_pem()
        cut.armed = True
        request = ResourceRequest(app.party_id, SCOPE, "psi", (Resource(uuid),))
        keys = await kx.get_data_keys(request)
    assert cut.cuts == 1 and [k.resource_uri for k in keys] == [uuid]


# ---- the failover test of issue 16 --------------------------------------------------------


@dataclass
class Tally:
    gets_ok: int = 0
    gets_failed: list[str] = field(default_factory=list)
    gets_after_kill: int = 0
    #: data_uuid pairs created (both keys in one request) with their key, and the outcome
    creates: list[tuple[str, str, str, str]] = field(default_factory=list)


async def worker(
    endpoints: Sequence[str],
    app: Credentials,
    owner: Credentials,
    readable: Sequence[tuple[str, str]],
    stop: asyncio.Event,
    killed: asyncio.Event,
    tally: Tally,
) -> None:
    """GetDataKeys of ``readable`` and CreateDataKeys of fresh data, alternately, until
    ``stop``; every outcome counted in ``tally``."""
    kx = CapsuleManagerKeyExchange(endpoints, attester=sim_attester(), credentials=app)
    async with kx:
        n = 0
        while not stop.is_set():
            uuid, key = readable[n % len(readable)]
            request = ResourceRequest(app.party_id, SCOPE, "psi", (Resource(uuid),))
            after_kill = killed.is_set()
            try:
                keys = await kx.get_data_keys(request)
                assert [(k.resource_uri, base64.b64encode(k.key).decode()) for k in keys] == [
                    (uuid, key)
                ]
                tally.gets_ok += 1
                tally.gets_after_kill += after_kill
            except TrustflowError as exc:
                tally.gets_failed.append(str(exc))
                if len(endpoints) == 1:
                    return  # the control: a client of one replica; one failure shows it
            new, new_key = new_data_uuid(), data_key_b64()
            try:
                await kx.client.create_data_keys(owner, [(new, new_key), (new + "/b", new_key)])
                outcome = "ok"
            except CapsuleManagerError as exc:
                outcome = f"refused: {exc}"
            except TrustflowError as exc:
                outcome = f"unknown: {exc}"
            tally.creates.append((new, new + "/b", new_key, outcome))
            n += 1


@asyncio_test
async def test_clients_fail_over_when_a_replica_is_killed(
    sim_env: dict[str, str], tmp_path: Path
) -> None:
    """Three replicas; 16 failover clients (half of them prefer the replica that is killed)
    and 2 clients of that replica alone (what every client was before failover). SIGKILL it
    mid-run: the failover clients see no failed GetDataKeys and every CreateDataKeys is
    applied exactly once or refused with no effect; the single-endpoint clients fail."""
    with postgres_database() as url:
        replicas = Replicas(sim_env, url, tmp_path).start(3)
        try:
            await failover_run(replicas)
        finally:
            replicas.stop()


def failovers(method: str) -> float:
    """How many calls of ``method`` moved to another replica (this process)."""
    value = REGISTRY.get_sample_value("trustflow_cm_client_failovers_total", {"rpc": method})
    return value or 0.0


async def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


async def failover_run(replicas: Replicas) -> None:
    r0, r1, r2 = replicas.targets
    alice, app = new_party("alice"), new_party("app")
    async with CapsuleManagerClient(r1) as owner:
        uuids = await owner_data(owner, alice, app, count=4)
    keys = {u: data_key_b64() for u in uuids}
    async with CapsuleManagerClient(r2) as owner:  # keys rewritten through another replica
        await owner.create_data_keys(alice, list(keys.items()))
    readable = list(keys.items())

    stop, killed = asyncio.Event(), asyncio.Event()
    tallies = [Tally() for _ in range(16)]
    orders = [[r0, r2, r1], [r1, r2, r0]]
    tasks = [
        asyncio.create_task(worker(orders[i % 2], app, alice, readable, stop, killed, t))
        for i, t in enumerate(tallies)
    ]
    pinned = [Tally() for _ in range(2)]
    tasks += [
        asyncio.create_task(worker([r0], app, alice, readable, stop, killed, t)) for t in pinned
    ]
    moved = {m: failovers(m) for m in ("GetDataKeys", "CreateDataKeys")}
    started = time.monotonic()
    try:
        # kill once every client is going, stop once every client went on after the kill
        await until(lambda: all(t.gets_ok for t in tallies), "every client got keys")
        await asyncio.to_thread(replicas.kill, 0)
        killed.set()
        killed_at = time.monotonic()
        await until(
            lambda: (
                all(t.gets_after_kill >= 2 for t in tallies) and all(t.gets_failed for t in pinned)
            ),
            "every client got keys after the kill",
        )
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    ended = time.monotonic()

    failed = [m for t in tallies for m in t.gets_failed]
    assert failed == [], failed[:3]
    assert all(t.gets_after_kill for t in tallies), "every client got keys after the kill"
    # the control: the same run without failover fails
    assert any(t.gets_failed for t in pinned), "the kill went unnoticed"

    creates = [c for t in tallies for c in t.creates]
    unknown = [c for c in creates if c[3].startswith("unknown")]
    assert unknown == [], unknown[:3]
    uris = [u for c in creates for u in c[:2]]
    stored = replicas.stored_keys(uris)
    events = replicas.audit_events([c[0] for c in creates], "keys_created")
    for first, second, key, outcome in creates:
        if outcome == "ok":  # applied exactly once, both keys
            assert stored[first] == [key] and stored[second] == [key], (first, outcome)
            assert events[first] == 1, (first, events[first])
        else:  # refused: nothing of it
            assert stored[first] == [] and stored[second] == [] and events[first] == 0
    applied = sum(c[3] == "ok" for c in creates)
    print(
        f"\n{sum(t.gets_ok for t in tallies)} GetDataKeys, {len(creates)} CreateDataKeys "
        f"({applied} applied) in {ended - started:.1f} s ({ended - killed_at:.1f} s after the "
        f"kill); {sum(len(t.gets_failed) for t in pinned)} failures of the single-endpoint "
        "clients; failovers: "
        + ", ".join(f"{m} {failovers(m) - before:.0f}" for m, before in moved.items())
    )
    assert applied, "no CreateDataKeys went through"
    digests = replicas.query("SELECT count(*) FROM cm_requests")[0][0]
    assert digests >= applied
