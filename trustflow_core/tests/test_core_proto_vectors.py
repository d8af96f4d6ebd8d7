"""The generated protos parse every upstream compat vector, binary and JSON alike.

All expected values come from the vector files and manifest.json; nothing is re-typed here.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from trustflow_core import wire
from trustflow_core.errors import InvalidInput
from trustflow_core.proto.secretflowapis.v2.sdc import jwt_pb2
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm
from trustflow_core.testing.fixtures import compat_vectors_dir

COMPAT = compat_vectors_dir()
RPC = COMPAT / "rpc"

MANIFEST: dict[str, Any] = json.loads((COMPAT / "manifest.json").read_text(encoding="utf-8"))
FLOW: list[dict[str, Any]] = MANIFEST["rpc_flow"]
FLOW_IDS = [entry["label"] for entry in FLOW]
WITH_RESPONSE = [entry for entry in FLOW if entry.get("response_type")]


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _message_type(name: str) -> type:
    """Look up a capsule_manager message class by its manifest name."""
    cls = getattr(cm, name, None)
    assert cls is not None, f"capsule_manager.proto has no message {name!r}"
    assert cls.DESCRIPTOR.full_name == f"secretflowapis.v2.sdc.capsule_manager.{name}"
    return cls


def test_flow_is_not_empty() -> None:
    assert FLOW, "manifest rpc_flow is empty"
    assert all((RPC / f"{label}.encrypted_request.pb").is_file() for label in FLOW_IDS)


@pytest.mark.parametrize("entry", FLOW, ids=FLOW_IDS)
def test_encrypted_request_pb_equals_json(entry: dict[str, Any]) -> None:
    raw = (RPC / f"{entry['label']}.encrypted_request.pb").read_bytes()
    from_pb = cm.EncryptedRequest.FromString(raw)
    from_json = wire.parse_json(
        (RPC / f"{entry['label']}.encrypted_request.json").read_bytes(), cm.EncryptedRequest
    )
    assert from_pb == from_json
    assert from_pb.HasField("message")
    assert from_pb.message.protected_header and from_pb.message.ciphertext
    # Re-encoding drops unknown fields; identity proves every field number was known.
    assert wire.serialize_canonical(from_pb) == raw


@pytest.mark.parametrize("entry", FLOW, ids=FLOW_IDS)
def test_encrypted_response_pb_equals_json(entry: dict[str, Any]) -> None:
    raw = (RPC / f"{entry['label']}.encrypted_response.pb").read_bytes()
    from_pb = cm.EncryptedResponse.FromString(raw)
    from_json = wire.parse_json(
        (RPC / f"{entry['label']}.encrypted_response.json").read_bytes(), cm.EncryptedResponse
    )
    assert from_pb == from_json
    assert wire.serialize_canonical(from_pb) == raw
    assert from_pb.status.code == entry["status_code"]
    # An inner response exists only when the manifest names its type.
    assert from_pb.HasField("message") == bool(entry.get("response_type"))


def test_get_ra_cert_vectors() -> None:
    raw = (RPC / "get_ra_cert.response.pb").read_bytes()
    from_pb = cm.GetRaCertResponse.FromString(raw)
    text = (RPC / "get_ra_cert.response.json").read_text(encoding="utf-8")
    assert from_pb == wire.parse_json(text, cm.GetRaCertResponse)
    assert wire.serialize_canonical(from_pb) == raw
    assert from_pb.cert.startswith("-----BEGIN CERTIFICATE-----")
    assert wire.to_json(from_pb, style="sdk") == text.rstrip("\n")  # the file adds a newline

    request_text = (RPC / "get_ra_cert.request.json").read_text(encoding="utf-8")
    request = wire.parse_json(request_text, cm.GetRaCertRequest)
    assert request.nonce == json.loads(request_text)["nonce"]


@pytest.mark.parametrize("entry", FLOW, ids=FLOW_IDS)
def test_request_json_parses_into_manifest_type(entry: dict[str, Any]) -> None:
    cls = _message_type(entry["request_type"])
    text = (RPC / f"{entry['label']}.request.json").read_text(encoding="utf-8")
    request = wire.parse_json(text, cls)
    assert request.ListFields(), "request parsed to an empty message"
    # request.json is the exact MessageToJson output of the SDK: our "sdk" style reproduces it.
    assert wire.to_json(request, style="sdk") == text


@pytest.mark.parametrize("entry", FLOW, ids=FLOW_IDS)
def test_jws_and_headers_parse_strictly(entry: dict[str, Any]) -> None:
    label = entry["label"]
    jws = wire.parse_json((RPC / f"{label}.jws.json").read_bytes(), jwt_pb2.Jws)
    assert _b64url(jws.payload) == (RPC / f"{label}.request.json").read_bytes()
    jws_header = wire.parse_json(_b64url(jws.protected_header), jwt_pb2.Jws.JoseHeader)
    assert bool(jws_header.x5c) == (entry["x5c"] is not None)

    request = cm.EncryptedRequest.FromString((RPC / f"{label}.encrypted_request.pb").read_bytes())
    jwe_header = wire.parse_json(_b64url(request.message.protected_header), jwt_pb2.Jwe.JoseHeader)
    assert jwe_header.alg in {"RSA-OAEP", "RSA-OAEP-256", "RSA1_5"}  # docs/compat.md#jwe-dialect
    assert jwe_header.enc in {"A128GCM", "A256GCM"}


@pytest.mark.parametrize("entry", WITH_RESPONSE, ids=[e["label"] for e in WITH_RESPONSE])
def test_response_json_is_serde_style(entry: dict[str, Any]) -> None:
    cls = _message_type(entry["response_type"])
    raw = (RPC / f"{entry['label']}.response.json").read_bytes()
    response = wire.parse_json(raw, cls)
    assert response.ListFields()
    # The producer followed the Rust CM; our "serde" style must give the same bytes.
    assert wire.to_json(response, style="serde").encode("utf-8") == raw


def test_tampered_vector_json_is_rejected() -> None:
    label = FLOW_IDS[0]
    obj = json.loads((RPC / f"{label}.encrypted_request.json").read_text(encoding="utf-8"))
    obj["message"]["unexpected_member"] = "x"
    with pytest.raises(InvalidInput, match="unexpected_member"):
        wire.parse_json(json.dumps(obj), cm.EncryptedRequest)
