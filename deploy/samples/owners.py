"""The data owners' and the grantee's steps of the compose samples, run in the trustflow image
(``python /opt/trustflow/samples/owners.py COMMAND ...``) against a running Capsule Manager.

    offline-owners  alice and bob encrypt their tables (upstream data-capsule format), upload the
                    data keys and a policy granting the app's party (--grantee-cert) the psi op
                    on a SIM TEE; the capsules go to --data, or to the S3 bucket of --s3-config
    offline-result  carol (--cert/--key, the app's identity) fetches the key of the registered
                    result ``join_uuid`` from the CM, decrypts the result and writes the CSV to
                    --out; exit 1 if the result or its key is missing
    interact-owner  alice uploads the key of breast_cancer_alice and the rule granting the
                    interact op to every --grantee-cert (bob's and carol's apps)

Exit status 0 on success, 1 with one line on stderr otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

SCOPE = "default"
OFFLINE_OPS = ("psi", "train_test_split", "xgb_train")
RESULT_URI = "join_uuid"
INTERACT_DATA = "breast_cancer_alice"


def sample_tables() -> dict[str, bytes]:
    """alice's and bob's CSVs, joined on ``id`` by the PSI app (the demo's tables)."""
    from trustflow_core.demo.offline import sample_tables as tables

    alice, bob = tables()
    return {"alice": alice, "bob": bob}


def party_id(cert_file: Path) -> str:
    from cryptography import x509
    from trustflow_core.roles.capsule_manager_client.client import party_id_of_chain

    return party_id_of_chain(tuple(x509.load_pem_x509_certificates(cert_file.read_bytes())))


def owner_credentials(directory: Path, party: str) -> Any:
    """The data owner's key and certificate, made on the first run and kept in ``directory``
    (key 0600), so that a rerun against the same Capsule Manager is the same owner."""
    from cryptography.hazmat.primitives import serialization
    from trustflow_core.fileio import atomic_write_bytes
    from trustflow_core.roles.capsule_manager_client.client import Credentials
    from trustflow_core.roles.capsule_manager_client.keyexchange import ephemeral_credentials

    key_file, cert_file = directory / f"{party}.key", directory / f"{party}.crt"
    if key_file.exists() and cert_file.exists():
        return Credentials.from_files(key_file, [cert_file])
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    creds = ephemeral_credentials(party)
    key_pem = creds.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write_bytes(key_file, key_pem, mode=0o600)
    atomic_write_bytes(cert_file, creds.chain_pems[0].encode())
    return creds


def s3_client(config: dict[str, str]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=f"http://{config['endpoint']}",
        aws_access_key_id=config["access_key_id"],
        aws_secret_access_key=config["access_key_secret"],
        region_name="us-east-1",
    )


async def offline_owners(args: argparse.Namespace) -> str:
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2 as cm_pb2,
    )
    from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient

    from trustflow_core import capsule

    grantee = party_id(args.grantee_cert)
    s3 = json.loads(args.s3_config) if args.s3_config else None
    client = s3_client(s3) if s3 else None
    if client is not None:
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if s3["bucket"] not in existing:
            client.create_bucket(Bucket=s3["bucket"])
    args.data.mkdir(parents=True, exist_ok=True)
    async with CapsuleManagerClient(args.cm) as cms:
        for party, table in sample_tables().items():
            owner = owner_credentials(args.owners, party)
            key = os.urandom(16)
            with tempfile.TemporaryDirectory() as tmp:
                plain = Path(tmp) / f"{party}.csv"
                plain.write_bytes(table)
                enc = args.data / f"{party}.csv.enc"
                capsule.encrypt_file(plain, enc, key)
            uuid = f"breast_cancer_{party}"
            await cms.create_data_keys(owner, [(uuid, base64.b64encode(key).decode())])
            rule = cm_pb2.Rule(
                rule_id=f"{party}_rule_id_1",
                grantee_party_ids=[grantee],
                op_constraints=[cm_pb2.Rule.OpConstraint(op_name=o) for o in OFFLINE_OPS],
                columns=["*"],
                global_constraints=['r.env.tee.platform == "sim"']
                if args.platform == "sim"
                else [f'r.env.tee.platform == "{args.platform}"'],
            )
            await cms.create_data_policy(owner, SCOPE, uuid, [rule])
            if client is not None:
                client.upload_file(str(enc), s3["bucket"], f"inputs/{party}.csv.enc")
                enc.unlink()
    where = f"s3://{s3['bucket']}/inputs" if s3 else str(args.data)
    return f"alice and bob registered their keys and policies (grantee {grantee}); data in {where}"


async def offline_result(args: argparse.Namespace) -> str:
    from trustflow_core.keyexchange import Resource, ResourceRequest
    from trustflow_core.manager import get_plugin_manager
    from trustflow_core.registry import ATTESTER, backend_class
    from trustflow_core.roles.capsule_manager_client.client import Credentials
    from trustflow_core.roles.capsule_manager_client.keyexchange import (
        CapsuleManagerKeyExchange,
    )

    from trustflow_core import capsule

    s3 = json.loads(args.s3_config) if args.s3_config else None
    if s3:
        reply = s3_client(s3).get_object(Bucket=s3["bucket"], Key="results/join.csv.enc")
        blob = reply["Body"].read()
    else:
        blob = (args.data / "join.csv.enc").read_bytes()
    pm = get_plugin_manager()
    creds = Credentials.from_files(args.key, [args.cert])
    attester = backend_class(pm, ATTESTER, args.plat).from_settings({})
    async with CapsuleManagerKeyExchange(
        args.cm, attester=attester, credentials=creds, pm=pm
    ) as carol:
        request = ResourceRequest(creds.party_id, SCOPE, "psi", (Resource(RESULT_URI),))
        [result_key] = await carol.get_data_keys(request)
    reader = capsule.open_reader(result_key.key, len(blob))
    joined = reader.update(blob)
    reader.finalize()
    args.out.write_bytes(joined)
    rows = joined.count(b"\n") - 1
    return f"result {RESULT_URI} registered; {rows} joined rows in {args.out}"


async def interact_owner(args: argparse.Namespace) -> str:
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2 as cm_pb2,
    )
    from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient

    grantees = [party_id(cert) for cert in args.grantee_cert]
    owner = owner_credentials(args.owners, "alice")
    async with CapsuleManagerClient(args.cm) as cms:
        key = base64.b64encode(os.urandom(16)).decode()
        await cms.create_data_keys(owner, [(INTERACT_DATA, key)])
        rule = cm_pb2.Rule(
            rule_id="alice_rule_id2",
            grantee_party_ids=grantees,
            op_constraints=[cm_pb2.Rule.OpConstraint(op_name="interact")],
            columns=["*"],
        )
        await cms.create_data_policy(owner, SCOPE, INTERACT_DATA, [rule])
    return f"alice granted interact on {INTERACT_DATA} to {len(grantees)} apps"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    owners = commands.add_parser("offline-owners")
    owners.add_argument("--cm", required=True, help="Capsule Manager HOST:PORT")
    owners.add_argument("--grantee-cert", type=Path, required=True)
    owners.add_argument("--data", type=Path, required=True)
    owners.add_argument("--s3-config", default=None)
    owners.add_argument("--owners", type=Path, required=True, help="the owners' key directory")
    owners.add_argument("--platform", default="sim", help="the TEE platform the rule requires")
    result = commands.add_parser("offline-result")
    result.add_argument("--cm", required=True)
    result.add_argument("--cert", type=Path, required=True)
    result.add_argument("--key", type=Path, required=True)
    result.add_argument("--plat", default="sim", help="attester of carol's key request")
    result.add_argument("--data", type=Path, required=True)
    result.add_argument("--s3-config", default=None)
    result.add_argument("--out", type=Path, required=True)
    interact = commands.add_parser("interact-owner")
    interact.add_argument("--cm", required=True)
    interact.add_argument("--grantee-cert", type=Path, action="append", required=True)
    interact.add_argument("--owners", type=Path, required=True, help="alice's key directory")
    args = parser.parse_args(argv)
    run = {
        "offline-owners": offline_owners,
        "offline-result": offline_result,
        "interact-owner": interact_owner,
    }[args.command]
    from trustflow_core.errors import TrustflowError

    failures: tuple[type[BaseException], ...] = (TrustflowError, OSError, ValueError, KeyError)
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        failures += (BotoCoreError, ClientError)
    except ImportError:
        pass
    try:
        print(asyncio.run(run(args)))
    except failures as exc:
        print(f"{args.command} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
