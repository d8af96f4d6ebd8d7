"""A Capsule Manager loaded with the compat ``keys/cm.key``/``cm.crt`` accepts every recorded
upstream-SDK request (``rpc/*.encrypted_request.pb``) in ``rpc_flow`` order, over a real gRPC
channel on 127.0.0.1, with the recorded status codes; its responses are parsed here by an
independent implementation of the SDK's rules (strict ``json_format.Parse``, RSA-OAEP SHA-1
key transport, 12-byte IV, AES-GCM with the decoded ``aad``)."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from sqlalchemy.exc import OperationalError

from trustflow_core.harness.cm_world import running_cm
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.roles.capsule_manager.sealing import load_or_create_key
from trustflow_core.roles.capsule_manager.settings import CMSettings, ReplicaSettings
from trustflow_core.testing.databases import throwaway_database

pytestmark = pytest.mark.asyncio
PLUGINS = "channel_jwe,tee_sim"


def sdk_b64decode(text: str) -> bytes:
    """The SDK decodes leniently: std or url alphabet, with or without padding."""
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4))


def sdk_parse_response(response: cm_pb2.EncryptedResponse, key_pem: bytes, msg: Any) -> Any:
    """``parse_from_encrypted_response`` rules, plus the C++ proxy's stricter ones."""
    jwe = response.message
    header = json.loads(sdk_b64decode(jwe.protected_header))
    assert set(header) == {"alg", "enc"}
    assert header["alg"] == "RSA-OAEP"  # the C++ proxy always uses SHA-1 OAEP
    key = serialization.load_pem_private_key(key_pem, None)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    cek = key.decrypt(sdk_b64decode(jwe.encrypted_key), oaep)  # type: ignore[union-attr]
    assert len(cek) == 16
    iv = sdk_b64decode(jwe.iv)
    assert len(iv) == 12  # yacl enforces 12
    for member in (jwe.protected_header, jwe.encrypted_key, jwe.iv, jwe.ciphertext, jwe.tag):
        assert "=" not in member and "+" not in member and "/" not in member
    plaintext = AESGCM(cek).decrypt(
        iv, sdk_b64decode(jwe.ciphertext) + sdk_b64decode(jwe.tag), sdk_b64decode(jwe.aad)
    )
    json_format.Parse(plaintext.decode(), msg)  # strict: unknown or camelCase keys raise
    return msg


@pytest.fixture
def plugin_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", PLUGINS)
    monkeypatch.setenv("TRUSTFLOW_SIM_DIR", str(tmp_path / "sim"))


@pytest_asyncio.fixture
async def compat_cm(plugin_env: None, compat_dir: Path, tmp_path: Path) -> AsyncIterator[str]:
    settings = CMSettings(
        host="127.0.0.1",
        port=0,
        plat="sim",
        data_dir=tmp_path / "cm",
        private_key_file=compat_dir / "keys" / "cm.key",
        cert_file=compat_dir / "keys" / "cm.crt",
    )
    async with running_cm(settings) as world:
        yield world.target


async def play_recorded_flow(
    targets: list[str], compat_dir: Path, compat_manifest: dict[str, Any]
) -> None:
    """Send ``rpc_flow``'s recorded requests in order, step ``i`` to ``targets[i % n]``, and
    check each answer as the upstream SDK would read it."""
    keys = {n: (compat_dir / p["key"]).read_bytes() for n, p in compat_manifest["parties"].items()}
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(target)) for target in targets
        ]
        for index, step in enumerate(compat_manifest["rpc_flow"]):
            channel = channels[index % len(channels)]
            label = step["label"]
            call = channel.unary_unary(
                step["rpc"],
                request_serializer=cm_pb2.EncryptedRequest.SerializeToString,
                response_deserializer=cm_pb2.EncryptedResponse.FromString,
            )
            raw = (compat_dir / "rpc" / f"{label}.encrypted_request.pb").read_bytes()
            response = await call(cm_pb2.EncryptedRequest.FromString(raw), timeout=30)
            assert response.status.code == step["status_code"], (label, response.status)
            if step["status_code"] != 0:
                assert not response.HasField("message")
                continue
            assert response.status.message == "success"
            recipient = step.get("response_recipient")
            if recipient is None:
                assert not response.HasField("message"), label
                continue
            msg = getattr(cm_pb2, step["response_type"])()
            sdk_parse_response(response, keys[recipient], msg)
            expected = compat_manifest["sdk_results"][label]
            if step["response_type"] == "ListDataPolicyResponse":
                got = [
                    json_format.MessageToDict(p, preserving_proto_field_name=True)
                    for p in msg.policies
                ]
                assert got == expected
            else:
                assert msg.data_key.data_key_b64 == expected


async def test_recorded_flow(
    compat_cm: str, compat_dir: Path, compat_manifest: dict[str, Any]
) -> None:
    await play_recorded_flow([compat_cm], compat_dir, compat_manifest)


async def test_recorded_flow_across_three_replicas(
    plugin_env: None, compat_dir: Path, compat_manifest: dict[str, Any], tmp_path: Path
) -> None:
    """Upstream-SDK requests work against any replica (docs/replicas.md): a founder holding the
    compat CM key pair and two replicas that joined it over the attested Join, on one fresh
    PostgreSQL database, take the recorded flow's requests in turn, each step reading what
    another replica wrote."""
    with contextlib.ExitStack() as databases:
        try:
            url = databases.enter_context(throwaway_database("postgresql"))
        except OperationalError as exc:
            pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is not available: {exc}".splitlines()[0])
        storage_key = tmp_path / "founder.storage.key"
        load_or_create_key(storage_key)  # the founder's identity is all three files
        founder = CMSettings(
            port=0,
            plat="sim",
            data_dir=tmp_path / "founder",
            storage_url=url,
            private_key_file=compat_dir / "keys" / "cm.key",
            cert_file=compat_dir / "keys" / "cm.crt",
            storage_key_file=storage_key,
            replicas=ReplicaSettings(),
        )

        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(running_cm(founder))
            targets = [first.target]
            for name in ("second", "third"):
                joiner = CMSettings(
                    port=0,
                    plat="sim",
                    data_dir=tmp_path / name,
                    storage_url=url,
                    replicas=ReplicaSettings(join=(first.target,)),
                )
                targets.append((await stack.enter_async_context(running_cm(joiner))).target)
            await play_recorded_flow(targets, compat_dir, compat_manifest)


async def test_replay_of_recorded_requests_is_stable(
    compat_cm: str, compat_dir: Path, compat_manifest: dict[str, Any]
) -> None:
    """Re-sending the flow's policy creation twice keeps one policy (replace semantics)."""
    by_label = {s["label"]: s for s in compat_manifest["rpc_flow"]}
    async with grpc.aio.insecure_channel(compat_cm) as channel:

        async def send(label: str) -> cm_pb2.EncryptedResponse:
            step = by_label[label]
            call = channel.unary_unary(
                step["rpc"],
                request_serializer=cm_pb2.EncryptedRequest.SerializeToString,
                response_deserializer=cm_pb2.EncryptedResponse.FromString,
            )
            raw = (compat_dir / "rpc" / f"{label}.encrypted_request.pb").read_bytes()
            return await call(cm_pb2.EncryptedRequest.FromString(raw), timeout=30)

        for label in ("create_data_keys", "create_data_policy", "create_data_policy"):
            assert (await send(label)).status.code == 0
        listed = await send("list_data_policy")
        msg = sdk_parse_response(
            listed,
            (compat_dir / compat_manifest["parties"]["alice"]["key"]).read_bytes(),
            cm_pb2.ListDataPolicyResponse(),
        )
        assert len(msg.policies) == 1
        # register_cert twice: the second is refused in band with 13 (upstream)
        assert (await send("register_cert_alice")).status.code == 0
        assert (await send("register_cert_alice")).status.code == 13
