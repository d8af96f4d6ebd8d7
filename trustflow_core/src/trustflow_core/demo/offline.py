"""The offline PSI scenario end to end on 127.0.0.1 (the offline scenario), for ``trustflow demo
offline``, tests and docs.

Steps: start a Capsule Manager (SIM attestation, platform key in the work directory); alice and
bob each write a CSV, encrypt it (upstream data-capsule format), upload its key and a policy
granting carol's app the ``psi`` op on a SIM TEE; start carol's Data Capsule Proxy
(``capsule_manager`` key exchange); run :mod:`.psi_app` (``examples/offline/psi_app.py``) as a
separate process, which gets both inputs through the proxy, joins them on ``id`` and puts the
result; the proxy registers the result key with both inputs as ancestors; finally carol, whom
the derived policy allows, gets the result key from the CM and decrypts the result (either
result format). With ``s3=True`` the inputs and the result
live in a bucket of a loopback S3 server (moto, from ``trustflow-storage-oss[test]``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from .. import capsule
from ..harness.data_capsule_proxy import running_proxy
from ..keyexchange import Resource, ResourceRequest
from ..manager import get_plugin_manager
from ..registry import ATTESTER, backend_class
from ..roles.data_capsule_proxy.settings import DataCapsuleProxySettings

SCOPE = "default"
OPS = ("psi", "train_test_split", "xgb_train")
BUCKET = "trustflow-offline-demo"


@dataclass(frozen=True)
class OfflineResult:
    """What the demo produced: the joined CSV as carol decrypted it, and where it was stored."""

    joined_csv: bytes
    rows: int
    result_location: str
    app_output: str


def sample_tables(seed: int = 7) -> tuple[bytes, bytes]:
    """alice's and bob's CSVs (ids overlap on every third id)."""
    alice = ["id,age,income"] + [
        f"{i},{20 + (i * seed) % 50},{1000 + i * 37}" for i in range(0, 60, 2)
    ]
    bob = ["id,score,label"] + [f"{i},{(i * 13) % 100},{i % 2}" for i in range(0, 60, 3)]
    return ("\n".join(alice) + "\n").encode(), ("\n".join(bob) + "\n").encode()


def _write_identity(directory: Path, creds: Any, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_text(creds.chain_pems[0])
    key.write_bytes(
        creds.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    return cert, key


@contextlib.contextmanager
def _moto() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise SystemExit(
            "the S3 variant needs a loopback S3 server: pip install 'moto[server]>=5,<6'"
        ) from exc
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def _capsule_manager(work: Path, platform_key: Path, pm: Any) -> AsyncIterator[str]:
    from ..roles.capsule_manager.server import CapsuleManager
    from ..roles.capsule_manager.settings import CMSettings

    settings = CMSettings(
        port=0,
        data_dir=work / "cm",
        attester={"platform_key_file": str(platform_key)},
        verifiers={"sim": {"trusted_platform_keys": [str(platform_key)]}},
    )
    cm = CapsuleManager(settings, pm=pm)
    port = await cm.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await cm.stop(0.5)


async def run_offline(
    *,
    s3: bool = False,
    work: Path | None = None,
    say: Callable[[str], None] = lambda _: None,
    result_format: str = "v1",
) -> OfflineResult:
    """Run the scenario in ``work`` (default: a temporary directory) and return its result.
    The proxy writes the result in ``result_format`` (``v1`` upstream's, ``v2`` ours)."""
    if work is None:
        with tempfile.TemporaryDirectory(prefix="trustflow-offline-") as tmp:
            return await run_offline(s3=s3, work=Path(tmp), say=say, result_format=result_format)
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(_moto()) if s3 else None
        return await _run(work, endpoint, say, result_format)
    raise AssertionError("unreachable")


async def _run(
    work: Path, s3_endpoint: str | None, say: Callable[[str], None], result_format: str
) -> OfflineResult:
    from ..proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2
    from ..roles.capsule_manager_client.client import CapsuleManagerClient
    from ..roles.capsule_manager_client.keyexchange import (
        CapsuleManagerKeyExchange,
        ephemeral_credentials,
    )

    pm = get_plugin_manager()
    data, ids = work / "data", work / "identities"
    data.mkdir(parents=True, exist_ok=True)
    ids.mkdir(exist_ok=True)
    platform_key = work / "sim_platform_key.pem"
    parties = {p: ephemeral_credentials(p) for p in ("alice", "bob", "carol")}
    carol_cert, carol_key = _write_identity(ids, parties["carol"], "carol")
    s3_config = None
    if s3_endpoint:
        s3_config = {
            "endpoint": s3_endpoint,
            "bucket": BUCKET,
            "access_key_id": "demo-ak",
            "access_key_secret": "demo-sk",
            "type": "S3_STORAGE_TYPE_MINIO",
        }
        client = _s3_client(s3_config)
        await asyncio.to_thread(client.create_bucket, Bucket=BUCKET)

    async with _capsule_manager(work, platform_key, pm) as target:
        say(f"capsule manager on {target}")
        async with CapsuleManagerClient(target) as cms:
            for party, table in zip(("alice", "bob"), sample_tables(), strict=True):
                key = os.urandom(16)
                plain = data / f"{party}.source.csv"
                plain.write_bytes(table)
                enc = data / f"{party}.csv.enc"
                capsule.encrypt_file(plain, enc, key)
                plain.unlink()
                uuid = f"breast_cancer_{party}"
                await cms.create_data_keys(parties[party], [(uuid, base64.b64encode(key).decode())])
                rule = cm_pb2.Rule(
                    rule_id=f"{party}_rule_id_1",
                    grantee_party_ids=[parties["carol"].party_id],
                    op_constraints=[cm_pb2.Rule.OpConstraint(op_name=o) for o in OPS],
                    columns=["*"],
                    global_constraints=['r.env.tee.platform == "sim"'],
                )
                await cms.create_data_policy(parties[party], SCOPE, uuid, [rule])
                if s3_config:
                    await asyncio.to_thread(
                        client.upload_file, str(enc), BUCKET, f"inputs/{party}.csv.enc"
                    )
                    enc.unlink()
                say(f"{party}: encrypted her table, uploaded key and policy (grantee carol, psi)")

        settings = DataCapsuleProxySettings(
            cert_path=carol_cert,
            private_key_path=carol_key,
            allowed_roots=(str(data),),
            plat="sim",
            key_exchange="capsule_manager",
            key_exchange_settings={"attester_settings": {"platform_key_file": str(platform_key)}},
            cm_endpoint=target,
            allowed_object_store_endpoints=(s3_endpoint,) if s3_endpoint else (),
            result_format=result_format,
        )
        async with running_proxy(settings, pm) as proxy_url:
            say(f"data capsule proxy (carol's app) on {proxy_url}")
            args = [sys.executable, "-m", f"{__package__}.psi_app", "--proxy", proxy_url]
            args += ["--data", str(data), "--cm-endpoint", target]
            if s3_config:
                args += ["--s3-config", json.dumps(s3_config)]
            app = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await asyncio.wait_for(app.communicate(), 300)
            if app.returncode != 0:
                raise RuntimeError(f"the PSI app failed: {err.decode().strip()[-2000:]}")
            say(f"app: {out.decode().strip()}")

        if s3_config:
            location = f"s3://{BUCKET}/results/join.csv.enc"
            reply = await asyncio.to_thread(
                client.get_object, Bucket=BUCKET, Key="results/join.csv.enc"
            )
            blob = await asyncio.to_thread(reply["Body"].read)
        else:
            location = str(data / "join.csv.enc")
            blob = (data / "join.csv.enc").read_bytes()

        attester = backend_class(pm, ATTESTER, "sim").from_settings(
            {"platform_key_file": str(platform_key)}
        )
        carol = CapsuleManagerKeyExchange(
            target, attester=attester, credentials=parties["carol"], pm=pm
        )
        async with carol:
            request = ResourceRequest(
                parties["carol"].party_id, SCOPE, "psi", (Resource("join_uuid"),)
            )
            [result_key] = await carol.get_data_keys(request)
        say("carol: the derived policy of join_uuid lets her fetch its key from the CM")
    decryptor = capsule.open_reader(result_key.key, len(blob))
    joined = decryptor.update(blob)
    decryptor.finalize()
    return OfflineResult(joined, joined.count(b"\n") - 1, location, out.decode().strip())


def _s3_client(config: dict[str, str]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=f"http://{config['endpoint']}",
        aws_access_key_id=config["access_key_id"],
        aws_secret_access_key=config["access_key_secret"],
        region_name="us-east-1",
    )
