"""Capsule Manager replicas sharing one PostgreSQL database and one attested identity
(docs/replicas.md), on 127.0.0.1: a founder and two replicas that join it serve the same CM
certificate and each other's owner data; the responder refuses a joiner with another
measurement and a report bound to another key (and logs why); SQLite is refused for replicas;
readiness says "not joined" until the join succeeded; a database that records another identity
refuses a second founder."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.exc import OperationalError

from trustflow_core.attestation import Attributes, Policy, ra_user_data
from trustflow_core.errors import BackendUnavailable, InvalidInput
from trustflow_core.harness.cm_world import data_key_b64, grant_rule, new_data_uuid, new_party
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.proto.trustflowapis.replica.v1 import replica_pb2, replica_pb2_grpc
from trustflow_core.registry import ATTESTER, VERIFIER, backend_class, verifier_for_platform
from trustflow_core.roles.capsule_manager import identity_keys
from trustflow_core.roles.capsule_manager.replicas import (
    METRICS_ROLE,
    NONCE_BYTES,
    Bundle,
    JoinCheck,
    JoinFailed,
    JoinRefused,
    request_binding,
    seal_bundle,
)
from trustflow_core.roles.capsule_manager.server import CapsuleManager, capsule_manager_service
from trustflow_core.roles.capsule_manager.settings import CMSettings, ReplicaSettings
from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient
from trustflow_core.roles.capsule_manager_protocol.reports import report_to_pb
from trustflow_core.testing.databases import throwaway_database
from trustflow_core.testing.fixtures import free_port
from trustflow_core.testing.processes import RoleProcess
from trustflow_core.wire import serialize_canonical

pytestmark = [pytest.mark.asyncio, pytest.mark.plugins("channel_jwe", "tee_sim")]
TRUSTFLOW = str(Path(sys.executable).parent / "trustflow")
OTHER_TA = "ab" * 32


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards; skip when the server is absent."""
    try:
        with throwaway_database("postgresql") as url:
            yield url
    except OperationalError as exc:
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is not available: {exc}".splitlines()[0])


def replica(
    tmp: Path,
    name: str,
    url: str,
    *join: str,
    attester: dict[str, Any] | None = None,
    timeout: float = 5.0,
    port: int = 0,
    save: bool = False,
) -> CMSettings:
    return CMSettings(
        port=port,
        plat="sim",
        data_dir=tmp / name,
        storage_url=url,
        attester=attester or {},
        replicas=ReplicaSettings(join=join, join_timeout=timeout, save_joined_identity=save),
    )


@contextlib.asynccontextmanager
async def started(settings: CMSettings, pm: Any) -> AsyncIterator[CapsuleManager]:
    cm = CapsuleManager(settings, pm=pm)
    await cm.start()
    try:
        yield cm
    finally:
        await cm.stop(grace=0)


def verdicts(platform: str, verdict: str, check: str) -> float:
    """The join verdicts counted so far with these labels."""
    from prometheus_client import REGISTRY

    labels = {"role": METRICS_ROLE, "platform": platform, "verdict": verdict, "check": check}
    return REGISTRY.get_sample_value("trustflow_attestation_verdicts_total", labels) or 0.0


def verifier_for(pm: Any) -> Any:
    def get(platform: str) -> Any:
        return verifier_for_platform(pm, platform).from_settings()

    return get


def target(cm: CapsuleManager) -> str:
    return f"127.0.0.1:{cm.port}"


async def test_three_replicas_share_one_identity_and_the_data(pm, tmp_path, pg_url, caplog):
    caplog.set_level(logging.INFO, "trustflow_core.roles.capsule_manager.replicas")
    async with contextlib.AsyncExitStack() as stack:
        founder = await stack.enter_async_context(started(replica(tmp_path, "a", pg_url), pm))
        second = await stack.enter_async_context(
            started(replica(tmp_path, "b", pg_url, target(founder)), pm)
        )
        # the third joins through the second: any replica answers Join
        third = await stack.enter_async_context(
            started(replica(tmp_path, "c", pg_url, "127.0.0.1:1", target(second), save=True), pm)
        )
        clients = [
            await stack.enter_async_context(
                contextlib.aclosing(CapsuleManagerClient(target(cm), pm=pm, verify_sim=True))
            )
            for cm in (founder, second, third)
        ]
        certs = {await c.cm_cert_pem() for c in clients}
        assert len(certs) == 1
        assert {cm.identity.party_id for cm in (founder, second, third)} == {
            founder.identity.party_id
        }
        # joined replicas keep the identity in memory (no key files), unless told to save it
        assert (tmp_path / "a" / "cm.key").exists()
        assert not (tmp_path / "b" / "cm.key").exists()
        assert not (tmp_path / "b" / "storage.key").exists()
        for name in ("cm.key", "storage.key"):
            assert (tmp_path / "c" / name).stat().st_mode & 0o777 == 0o600
            assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
        assert "replica join from" in caplog.text and "accepted (SIM report" in caplog.text

        # an owner writes through the founder; the app reads through the others
        alice, bob, app = new_party("alice"), new_party("bob"), new_party("app")
        uuid, key = new_data_uuid(), data_key_b64()
        await clients[0].create_data_keys(alice, [(uuid, key)])
        await clients[0].create_data_policy(alice, "default", uuid, [grant_rule(bob.party_id)])
        for client in clients[1:]:
            policies = await client.list_data_policies(alice, "default")
            assert uuid in {p.data_uuid for p in policies}
            request = cm_pb2.ResourceRequest(
                initiator_party_id=bob.party_id,
                scope="default",
                op_name="psi",
                resources=[cm_pb2.ResourceRequest.Resource(resource_uri=uuid)],
            )
            digest = ra_user_data(app.chain_pems[0].encode(), serialize_canonical(request))
            sim = backend_class(pm, ATTESTER, "sim").from_settings()
            got = await client.get_data_keys(app, request, report_to_pb(await sim.generate(digest)))
            assert [(k.resource_uri, k.data_key_b64) for k in got] == [(uuid, key)]


async def test_a_joiner_with_another_measurement_is_refused(pm, tmp_path, pg_url, caplog):
    caplog.set_level(logging.INFO, "trustflow_core.roles.capsule_manager.replicas")
    async with started(replica(tmp_path, "a", pg_url), pm) as founder:
        rogue = CapsuleManager(
            replica(
                tmp_path,
                "rogue",
                pg_url,
                target(founder),
                attester={"measurements": {"hex_ta_measurement": OTHER_TA}},
            ),
            pm=pm,
        )
        with pytest.raises(JoinFailed, match="refused to let this CM join") as info:
            await rogue.start()
        assert "hex_ta_measurement" in str(info.value) and OTHER_TA in str(info.value)
        refusals = [r for r in caplog.records if "refused" in r.getMessage()]
        assert refusals and refusals[0].name.endswith("replicas")
        assert "report does not satisfy the join policy" in refusals[0].getMessage()
        assert "hex_ta_measurement" in refusals[0].getMessage()
        assert (await rogue.identity_ready() or "").startswith("identity: not joined yet")
        assert rogue.store is None


async def test_a_report_bound_to_another_key_is_refused(pm, tmp_path, pg_url, caplog):
    """A genuine report (right measurement) made for one key, replayed with another key: the
    responder refuses; with its own key it answers (the same request otherwise)."""
    async with started(replica(tmp_path, "a", pg_url), pm) as founder:
        sim = backend_class(pm, ATTESTER, "sim").from_settings()
        refused_before = verdicts("sim", "rejected", "binding")
        nonce = os.urandom(NONCE_BYTES)
        victim = ec.generate_private_key(ec.SECP256R1()).public_key()
        attacker = ec.generate_private_key(ec.SECP256R1()).public_key()
        report = report_to_pb(await sim.generate(request_binding(nonce, victim)))

        def pem(key: ec.EllipticCurvePublicKey) -> str:
            spki = serialization.PublicFormat.SubjectPublicKeyInfo
            return key.public_bytes(serialization.Encoding.PEM, spki).decode()

        async with grpc.aio.insecure_channel(target(founder)) as channel:
            stub = replica_pb2_grpc.ReplicaStub(channel)
            replayed = replica_pb2.JoinRequest(
                public_key_pem=pem(attacker), nonce=nonce, attestation_report=report
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Join(replayed, timeout=10)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "not bound to this join request's key" in (info.value.details() or "")
            assert "not bound to this join request's key" in caplog.text
            assert verdicts("sim", "rejected", "binding") == refused_before + 1
            other_nonce = replica_pb2.JoinRequest(
                public_key_pem=pem(victim), nonce=os.urandom(NONCE_BYTES), attestation_report=report
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Join(other_nonce, timeout=10)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            genuine = replica_pb2.JoinRequest(
                public_key_pem=pem(victim), nonce=nonce, attestation_report=report
            )
            reply = await stub.Join(genuine, timeout=10)
            assert reply.sealed_identity.count(".") == 4  # compact JWE, useless without the key


async def test_a_single_cm_serves_no_join(pm, tmp_path, pg_url):
    settings = CMSettings(port=0, plat="sim", data_dir=tmp_path / "single", storage_url=pg_url)
    async with started(settings, pm) as single, grpc.aio.insecure_channel(target(single)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await replica_pb2_grpc.ReplicaStub(ch).Join(replica_pb2.JoinRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_replicas_refuse_sqlite(pm, tmp_path, sim_env):
    settings = CMSettings(port=0, plat="sim", data_dir=tmp_path, replicas=ReplicaSettings())
    with pytest.raises(InvalidInput) as info:
        await CapsuleManager(settings, pm=pm).start()
    assert str(info.value).startswith(
        "replicas need a shared database (PostgreSQL or MySQL); sqlite:///"
    )
    assert "is local to one host" in str(info.value)
    run = subprocess.run(
        [
            TRUSTFLOW,
            "capsule-manager",
            "--data-dir",
            str(tmp_path),
            "--join",
            "127.0.0.1:1",
            "--check-config",
        ],
        env=sim_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "replicas need a shared database" in lines[0], run.stderr
    from click.testing import CliRunner

    from trustflow_core.cli import build_cli

    bad = CliRunner().invoke(build_cli(), ["capsule-manager", "--join", "cm-0", "--check-config"])
    assert bad.exit_code == 2 and "expected HOST:PORT, got 'cm-0'" in bad.output


async def test_readiness_says_not_joined_until_joined(pm, tmp_path, pg_url):
    founder_port, admin_port = free_port(), free_port()
    joiner = capsule_manager_service(
        replica(tmp_path, "b", pg_url, f"127.0.0.1:{founder_port}", timeout=30),
        "127.0.0.1",
        admin_port,
    )
    joiner.pm = pm
    starting = asyncio.create_task(joiner.start())

    async def readyz() -> tuple[int, str]:
        url = f"http://127.0.0.1:{admin_port}/-/readyz"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            return r.status, await r.text()

    try:
        status, text = 0, ""
        deadline = asyncio.get_running_loop().time() + 30
        while "identity" not in text and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            with contextlib.suppress(aiohttp.ClientConnectionError):
                status, text = await readyz()
        assert not starting.done(), starting.exception()
        assert status == 503
        assert "identity: not joined yet" in text and "database: not open" in text
        async with started(replica(tmp_path, "a", pg_url, port=founder_port), pm):
            await asyncio.wait_for(starting, 30)
            assert await readyz() == (200, "ready\n")
    finally:
        if not starting.done():
            starting.cancel()
        await joiner.stop(grace=0)


async def test_no_peer_answering_ends_the_join(pm, tmp_path, pg_url):
    lonely = CapsuleManager(replica(tmp_path, "b", pg_url, "127.0.0.1:1", timeout=0.5), pm=pm)
    with pytest.raises(JoinFailed, match=r"no replica to join answered within 0.5 s \(127.0.0.1:1"):
        await lonely.start()


async def test_the_database_keeps_its_identity(pm, tmp_path, pg_url):
    async with started(replica(tmp_path, "a", pg_url), pm):
        pass
    # neither key files nor peers: told to join instead of founding a second identity
    with pytest.raises(InvalidInput, match="pass --join HOST:PORT"):
        await CapsuleManager(replica(tmp_path, "b", pg_url), pm=pm).start()
    # its own (different) key pair, e.g. the loser of two founders racing: refused by the
    # recorded identity before its storage key is even tried
    other = CMSettings(port=0, plat="sim", data_dir=tmp_path / "c", storage_url=pg_url)
    with pytest.raises(BackendUnavailable, match="the database belongs to CM identity"):
        await CapsuleManager(other, pm=pm).start()


async def test_the_joiner_refuses_a_responder_with_another_measurement(pm, tmp_path, pg_url):
    """Mutual: a responder whose policy admits the joiner, but whose own report carries another
    measurement than the joiner's policy pins, does not give it an identity."""
    lax = replica(tmp_path, "a", pg_url)
    assert lax.replicas is not None
    lax = dataclasses.replace(
        lax,
        replicas=dataclasses.replace(
            lax.replicas,
            policy=(Attributes(str_tee_platform="SIM", hex_ta_measurement=OTHER_TA),),
        ),
    )
    async with started(lax, pm) as founder:
        joiner = CapsuleManager(
            replica(
                tmp_path,
                "b",
                pg_url,
                target(founder),
                attester={"measurements": {"hex_ta_measurement": OTHER_TA}},
                timeout=0.5,
            ),
            pm=pm,
        )
        with pytest.raises(JoinFailed, match="not trusted: report does not satisfy the join"):
            await joiner.start()


class SwappingProxy(replica_pb2_grpc.ReplicaServicer):
    """A network attacker between joiner and responder: forwards the join, then replaces the
    sealed identity with one of its own, sealed to the joiner's key, keeping the genuine
    report."""

    def __init__(self, upstream: str, fake: Bundle) -> None:
        self.upstream, self.fake = upstream, fake

    async def Join(self, request: Any, context: Any) -> Any:
        async with grpc.aio.insecure_channel(self.upstream) as channel:
            reply = await replica_pb2_grpc.ReplicaStub(channel).Join(request, timeout=10)
        key = serialization.load_pem_public_key(request.public_key_pem.encode())
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return replica_pb2.JoinResponse(
            sealed_identity=seal_bundle(self.fake, key),
            attestation_report=reply.attestation_report,
        )


async def test_the_joiner_refuses_an_identity_swapped_in_transit(pm, tmp_path, pg_url):
    async with started(replica(tmp_path, "a", pg_url), pm) as founder:
        fake = Bundle(identity_keys.generate(), os.urandom(32))
        server = grpc.aio.server()
        replica_pb2_grpc.add_ReplicaServicer_to_server(SwappingProxy(target(founder), fake), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            joiner = CapsuleManager(
                replica(tmp_path, "b", pg_url, f"127.0.0.1:{port}", timeout=0.5), pm=pm
            )
            with pytest.raises(JoinFailed, match="not trusted: report is not bound"):
                await joiner.start()
        finally:
            await server.stop(0)


async def test_simulated_joiners_need_a_simulated_responder(pm):
    """The check a responder whose own attester is genuine applies (simulation not allowed)
    refuses a sim report, even one with the right measurements and binding."""
    sim = backend_class(pm, ATTESTER, "sim").from_settings()
    verifier = backend_class(pm, VERIFIER, "sim").from_settings()
    binding = os.urandom(32)
    report = await sim.generate(binding)
    entry = type(verifier).acceptance_entry()
    assert await JoinCheck(Policy((entry,), True), lambda _: verifier).check(report, binding)
    with pytest.raises(JoinRefused, match="simulation"):
        await JoinCheck(Policy((entry,), False), lambda _: verifier).check(report, binding)
    with pytest.raises(JoinRefused, match="no verifier for platform"):
        await JoinCheck(Policy((entry,), True), verifier_for(pm)).check(
            dataclasses.replace(report, str_tee_platform="NOPE"), binding
        )


async def test_the_command_founds_joins_and_refuses(sim_env, tmp_path, pg_url):
    """``trustflow capsule-manager`` processes: a founder (``replicas: {}`` in its file), a
    replica joining through ``--join`` and one through the environment serve one certificate;
    a replica with another measurement exits with one line and the founder logs why."""
    import yaml

    def config(name: str, **extra: Any) -> str:
        path = tmp_path / f"{name}.yaml"
        settings = {"plat": "sim", "data_dir": str(tmp_path / name), "replicas": {}, **extra}
        settings["storage"] = {"url": pg_url}
        path.write_text(yaml.safe_dump(settings))
        return str(path)

    def cm(name: str, *args: str, env: dict[str, str] | None = None) -> RoleProcess:
        log = tmp_path / f"{name}.log"
        return RoleProcess(env or sim_env, log, "capsule-manager", "-c", config(name), *args)

    async def cert(target: str) -> str:
        async with contextlib.aclosing(CapsuleManagerClient(target, verify_sim=True)) as client:
            return await client.cm_cert_pem()

    with contextlib.ExitStack() as processes:
        founder = processes.enter_context(cm("a", "--port", "0")).wait_listening()
        # the others started together (each process's start-up is mostly imports)
        b = processes.enter_context(cm("b", "--port", "0", "--join", founder.target))
        join_env = {**sim_env, "TRUSTFLOW_CAPSULE_MANAGER_JOIN": f"127.0.0.1:1 {founder.target}"}
        c = processes.enter_context(cm("c", "--port", "0", env=join_env))
        measurement = {"measurements": {"hex_ta_measurement": OTHER_TA}}
        rogue = processes.enter_context(
            RoleProcess(
                sim_env,
                tmp_path / "rogue.log",
                "capsule-manager",
                "-c",
                config("rogue", attester=measurement),
                "--port",
                "0",
                "--join",
                founder.target,
            )
        )
        b.wait_listening()
        c.wait_listening()
        assert len({await cert(p.target) for p in (founder, b, c)}) == 1
        assert rogue.exit_code() == 1
        last = rogue.output().strip().splitlines()[-1]
        assert f"replica {founder.target} refused to let this CM join" in last
        assert "hex_ta_measurement" in last
        assert "replica join from" in founder.output() and "refused" in founder.output()


def _tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and one certificate for ``localhost`` signed by it (server and client use)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(name: str, key: Any, issuer: x509.Name, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.DNSName("localhost")])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    pem = serialization.Encoding.PEM
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "replicas-ca")])
    ca = cert("replicas-ca", ca_key, ca_name, ca_key, True)
    leaf = cert("localhost", key, ca.subject, ca_key, False)
    paths = tmp / "ca.crt", tmp / "server.crt", tmp / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(leaf.public_bytes(pem))
    private = serialization.PrivateFormat.PKCS8
    paths[2].write_bytes(key.private_bytes(pem, private, serialization.NoEncryption()))
    return paths


async def test_replicas_join_over_mutual_tls(pm, tmp_path, pg_url):
    from trustflow_core.roles.capsule_manager.settings import TlsSettings

    ca, cert, key = _tls_files(tmp_path)
    tls = TlsSettings(cert, key, ca)

    def with_tls(settings: CMSettings, **replicas: Any) -> CMSettings:
        assert settings.replicas is not None
        more = dataclasses.replace(settings.replicas, **replicas)
        return dataclasses.replace(settings, host="localhost", tls=tls, replicas=more)

    async with started(with_tls(replica(tmp_path, "a", pg_url)), pm) as founder:
        peer = f"localhost:{founder.port}"
        plain = replica(tmp_path, "b", pg_url, peer)
        with pytest.raises(InvalidInput, match=r"set replicas\.tls_ca_file"):
            await CapsuleManager(dataclasses.replace(plain, tls=tls), pm=pm).start()
        async with started(with_tls(plain, tls_ca_file=ca), pm) as joined:
            assert joined.identity.cert_pem == founder.identity.cert_pem
