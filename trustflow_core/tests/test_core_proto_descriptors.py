"""The generated descriptors carry exactly the upstream wire identity.

Field numbers, names, packages and method names below are facts of upstream's protos
(docs/compat.md#wire-protos), not vector values.
"""

from __future__ import annotations

import re
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

from trustflow_core.proto.secretflowapis.v2 import common_pb2, status_pb2
from trustflow_core.proto.secretflowapis.v2.sdc import jwt_pb2, ual_pb2
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm,
)
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2_grpc as cm_grpc,
)
from trustflow_core.proto.secretflowapis.v2.sdc.data_capsule_proxy import (
    data_capsule_proxy_pb2 as dcp,
)
from trustflow_core.proto.secretflowapis.v2.sdc.ra_proxy import ra_proxy_pb2 as rap
from trustflow_core.proto.secretflowapis.v2.teeapps import task_config_pb2

MODULES = [common_pb2, status_pb2, jwt_pb2, ual_pb2, cm, dcp, rap, task_config_pb2]
GENERATED = Path(cm.__file__).resolve().parents[4]  # .../trustflow_core/proto

FILES = {
    common_pb2: ("secretflowapis/v2/common.proto", "secretflowapis.v2"),
    status_pb2: ("secretflowapis/v2/status.proto", "secretflowapis.v2"),
    jwt_pb2: ("secretflowapis/v2/sdc/jwt.proto", "secretflowapis.v2.sdc"),
    ual_pb2: ("secretflowapis/v2/sdc/ual.proto", "secretflowapis.v2.sdc"),
    cm: (
        "secretflowapis/v2/sdc/capsule_manager/capsule_manager.proto",
        "secretflowapis.v2.sdc.capsule_manager",
    ),
    dcp: (
        "secretflowapis/v2/sdc/data_capsule_proxy/data_capsule_proxy.proto",
        "secretflowapis.v2.sdc.data_capsule_proxy",
    ),
    rap: ("secretflowapis/v2/sdc/ra_proxy/ra_proxy.proto", "secretflowapis.v2.sdc.ra_proxy"),
    task_config_pb2: ("secretflowapis/v2/teeapps/task_config.proto", "secretflowapis.v2.teeapps"),
}

CM_SERVICE = "secretflowapis.v2.sdc.capsule_manager.CapsuleManager"
CM_METHODS = [
    "GetRaCert",
    "GetDataKeys",
    "GetTlsAsset",
    "CreateResultDataKey",
    "CreateDataPolicy",
    "ListDataPolicy",
    "AddDataRule",
    "DeleteDataPolicy",
    "DeleteDataRule",
    "CreateDataKeys",
    "RegisterCert",
    "GetExportDataKey",
    "DeleteDataKey",
]

# (message full name, field name, number) from the spec tables.
SPEC_NUMBERS = [
    ("secretflowapis.v2.RequestHeader", "custom_headers", 1),
    ("secretflowapis.v2.Status", "code", 1),
    ("secretflowapis.v2.Status", "message", 2),
    ("secretflowapis.v2.Status", "details", 3),
    ("secretflowapis.v2.sdc.Jwe", "protected_header", 1),
    ("secretflowapis.v2.sdc.Jwe", "encrypted_key", 2),
    ("secretflowapis.v2.sdc.Jwe", "iv", 3),
    ("secretflowapis.v2.sdc.Jwe", "ciphertext", 4),
    ("secretflowapis.v2.sdc.Jwe", "tag", 5),
    ("secretflowapis.v2.sdc.Jwe", "aad", 6),
    ("secretflowapis.v2.sdc.Jwe.JoseHeader", "alg", 1),
    ("secretflowapis.v2.sdc.Jwe.JoseHeader", "enc", 2),
    ("secretflowapis.v2.sdc.Jws", "protected_header", 1),
    ("secretflowapis.v2.sdc.Jws", "payload", 2),
    ("secretflowapis.v2.sdc.Jws", "signature", 3),
    ("secretflowapis.v2.sdc.Jws.JoseHeader", "x5c", 2),
    ("secretflowapis.v2.sdc.UnifiedAttestationAttributes", "str_tee_platform", 1),
    ("secretflowapis.v2.sdc.UnifiedAttestationAttributes", "hex_boot_measurement", 6),
    ("secretflowapis.v2.sdc.UnifiedAttestationAttributes", "str_tee_name", 8),
    ("secretflowapis.v2.sdc.UnifiedAttestationAttributes", "bool_debug_disabled", 15),
    ("secretflowapis.v2.sdc.UnifiedAttestationAttributes", "hex_user_data", 20),
    ("secretflowapis.v2.sdc.UnifiedAttestationAttributes", "hex_hash_or_pem_pubkey", 21),
    ("secretflowapis.v2.sdc.UnifiedAttestationAttributes", "hex_nonce", 22),
    ("secretflowapis.v2.sdc.UnifiedAttestationAttributes", "hex_spid", 30),
    ("secretflowapis.v2.sdc.UnifiedAttestationAttributes", "str_verified_time", 40),
    ("secretflowapis.v2.sdc.UnifiedAttestationNestedPolicy", "sub_attributes", 3),
    ("secretflowapis.v2.sdc.UnifiedAttestationReportParams", "hex_spid", 10),
    ("secretflowapis.v2.sdc.UnifiedAttestationGenerationParams", "report_params", 4),
    ("secretflowapis.v2.sdc.UnifiedAttestationReport", "json_report", 4),
    ("secretflowapis.v2.sdc.UnifiedAttestationReport", "json_nested_reports", 9),
    ("secretflowapis.v2.sdc.HygonCsvReport", "str_chip_id", 3),
    ("secretflowapis.v2.sdc.SgxQlQveCollateral", "qe_identity", 8),
    ("secretflowapis.v2.sdc.SgxQlQveCollateral", "tee_type", 20),
    ("secretflowapis.v2.sdc.capsule_manager.EncryptedRequest", "header", 1),
    ("secretflowapis.v2.sdc.capsule_manager.EncryptedRequest", "message", 2),
    ("secretflowapis.v2.sdc.capsule_manager.EncryptedRequest", "has_signature", 3),
    ("secretflowapis.v2.sdc.capsule_manager.EncryptedResponse", "status", 1),
    ("secretflowapis.v2.sdc.capsule_manager.EncryptedResponse", "message", 2),
    ("secretflowapis.v2.sdc.capsule_manager.GetRaCertResponse", "attestation_report", 2),
    ("secretflowapis.v2.sdc.capsule_manager.GetRaCertResponse", "cert", 3),
    ("secretflowapis.v2.sdc.capsule_manager.ResourceRequest", "resources", 4),
    ("secretflowapis.v2.sdc.capsule_manager.ResourceRequest", "global_attrs", 6),
    ("secretflowapis.v2.sdc.capsule_manager.ResourceRequest.Resource", "attrs", 3),
    ("secretflowapis.v2.sdc.capsule_manager.Rule", "global_constraints", 5),
    ("secretflowapis.v2.sdc.capsule_manager.Rule.OpConstraint", "constraints", 2),
    ("secretflowapis.v2.sdc.capsule_manager.CreateResultDataKeyRequest.Body", "owner_id", 1),
    (
        "secretflowapis.v2.sdc.capsule_manager.CreateResultDataKeyRequest.Body",
        "ancestor_uuids",
        5,
    ),
    ("secretflowapis.v2.sdc.capsule_manager.GetDataKeysRequest", "resource_request", 3),
    ("secretflowapis.v2.sdc.capsule_manager.GetTlsAssetResponse", "cert", 3),
    ("secretflowapis.v2.sdc.capsule_manager.DeleteDataRuleRequest", "rule_id", 4),
    ("secretflowapis.v2.sdc.capsule_manager.RegisterCertRequest", "scheme", 3),
    (
        "secretflowapis.v2.sdc.capsule_manager.GetExportDataKeyRequest",
        "data_export_certificate",
        3,
    ),
    ("secretflowapis.v2.sdc.capsule_manager.GetExportDataKeyResponse", "data_key", 1),
    ("secretflowapis.v2.sdc.ra_proxy.GetRaCertRequest", "refresh_ra_report", 3),
    ("secretflowapis.v2.sdc.data_capsule_proxy.S3Config", "cert_check", 10),
    ("secretflowapis.v2.teeapps.TaskConfig", "task_body", 3),
    ("secretflowapis.v2.teeapps.TaskConfig", "signature", 20),
    ("secretflowapis.v2.teeapps.TaskConfig", "task_initiator_certs", 22),
    ("secretflowapis.v2.teeapps.TaskConfig", "capsule_manager_endpoint", 23),
]

# Data Capsule Proxy HEAD numbering (upstream HEAD revision).
DCP_HEAD = {
    "GetInputDataRequest": {
        "header": 1,
        "need_decrypt": 2,
        "data_key_b64": 3,
        "cm_resource_config": 4,
        "local_fs_config": 5,
        "s3_config": 6,
        "dest_config": 7,
    },
    "PutResultDataRequest": {
        "header": 1,
        "need_encrypt": 2,
        "data_key_b64": 3,
        "cm_result_config": 4,
        "source_config": 5,
        "local_fs_config": 6,
        "s3_config": 7,
    },
}


def _all_messages() -> list[Descriptor]:
    found: list[Descriptor] = []

    def visit(desc: Descriptor) -> None:
        found.append(desc)
        for nested in desc.nested_types:
            if not nested.GetOptions().map_entry:
                visit(nested)

    for module in MODULES:
        for desc in module.DESCRIPTOR.message_types_by_name.values():
            visit(desc)
    return found


def _field(full_name: str, field: str) -> FieldDescriptor:
    for desc in _all_messages():
        if desc.full_name == full_name:
            return desc.fields_by_name[field]
    raise AssertionError(f"no message {full_name}")


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_file_names_and_packages(module: object) -> None:
    file_desc: FileDescriptor = module.DESCRIPTOR  # type: ignore[attr-defined]
    assert (file_desc.name, file_desc.package) == FILES[module]  # type: ignore[index]
    as_proto = descriptor_pb2.FileDescriptorProto()
    file_desc.CopyToProto(as_proto)
    assert as_proto.syntax == "proto3"


@pytest.mark.parametrize(("message", "field", "number"), SPEC_NUMBERS)
def test_spec_field_numbers(message: str, field: str, number: int) -> None:
    assert _field(message, field).number == number


def test_every_json_name_is_snake_case_except_protected() -> None:
    checked = 0
    for desc in _all_messages():
        for field in desc.fields:
            expected = "protected" if field.name == "protected_header" else field.name
            assert field.json_name == expected, f"{desc.full_name}.{field.name}"
            checked += 1
    assert checked > 150


def test_field_types_from_spec() -> None:
    assert _field("secretflowapis.v2.Status", "code").type == FieldDescriptor.TYPE_INT32
    details = _field("secretflowapis.v2.Status", "details")
    assert details.is_repeated and details.message_type.full_name == "google.protobuf.Any"
    assert _field("secretflowapis.v2.sdc.Jws.JoseHeader", "x5c").is_repeated
    for name in ("version", "tee_type"):
        field = _field("secretflowapis.v2.sdc.SgxQlQveCollateral", name)
        assert field.type == FieldDescriptor.TYPE_INT64
    assert all(
        f.type == FieldDescriptor.TYPE_STRING
        for f in ual_pb2.UnifiedAttestationAttributes.DESCRIPTOR.fields
    )
    has_sig = _field("secretflowapis.v2.sdc.capsule_manager.EncryptedRequest", "has_signature")
    assert has_sig.type == FieldDescriptor.TYPE_BOOL
    report = _field("secretflowapis.v2.sdc.capsule_manager.GetRaCertResponse", "attestation_report")
    assert report.message_type.full_name == "secretflowapis.v2.sdc.UnifiedAttestationReport"
    headers = _field("secretflowapis.v2.RequestHeader", "custom_headers")
    assert headers.message_type.GetOptions().map_entry


def test_status_code_enum_matches_google_rpc() -> None:
    values = {v.name: v.number for v in status_pb2.DESCRIPTOR.enum_types_by_name["Code"].values}
    assert values["OK"] == 0
    assert values["INVALID_ARGUMENT"] == 3
    assert values["PERMISSION_DENIED"] == 7
    assert values["UNIMPLEMENTED"] == 12
    assert values["INTERNAL"] == 13
    assert values["UNAUTHENTICATED"] == 16
    assert sorted(values.values()) == list(range(17))


@pytest.mark.parametrize("message", sorted(DCP_HEAD))
def test_data_capsule_proxy_head_numbering(message: str) -> None:
    desc = dcp.DESCRIPTOR.message_types_by_name[message]
    assert {f.name: f.number for f in desc.fields} == DCP_HEAD[message]


def test_data_capsule_proxy_oneofs_and_enum() -> None:
    get_in = dcp.GetInputDataRequest.DESCRIPTOR.oneofs_by_name
    assert [f.name for f in get_in["data_key_config"].fields] == [
        "data_key_b64",
        "cm_resource_config",
    ]
    assert [f.name for f in get_in["source_config"].fields] == ["local_fs_config", "s3_config"]
    put = dcp.PutResultDataRequest.DESCRIPTOR.oneofs_by_name
    assert list(put) == ["dest_config"]
    assert [f.name for f in put["dest_config"].fields] == ["local_fs_config", "s3_config"]
    assert dict(dcp.S3StorageType.items()) == {
        "S3_STORAGE_TYPE_UNSPECIFIED": 0,
        "S3_STORAGE_TYPE_OSS": 1,
        "S3_STORAGE_TYPE_MINIO": 2,
    }
    assert dcp.DESCRIPTOR.services_by_name["DataCapsuleProxy"].full_name == (
        "secretflowapis.v2.sdc.data_capsule_proxy.DataCapsuleProxy"
    )
    assert dcp.DESCRIPTOR.GetOptions().cc_generic_services


def test_capsule_manager_service_methods() -> None:
    service = cm.DESCRIPTOR.services_by_name["CapsuleManager"]
    assert service.full_name == CM_SERVICE
    assert [m.name for m in service.methods] == CM_METHODS
    for method in service.methods:
        plain = method.name == "GetRaCert"
        expect_in = "GetRaCertRequest" if plain else "EncryptedRequest"
        expect_out = "GetRaCertResponse" if plain else "EncryptedResponse"
        assert method.input_type.name == expect_in, method.name
        assert method.output_type.name == expect_out, method.name
        assert not method.client_streaming and not method.server_streaming


def test_ra_proxy_service() -> None:
    service = rap.DESCRIPTOR.services_by_name["RaProxy"]
    assert service.full_name == "secretflowapis.v2.sdc.ra_proxy.RaProxy"
    assert [(m.name, m.input_type.name, m.output_type.name) for m in service.methods] == [
        ("GetRaCert", "GetRaCertRequest", "GetRaCertResponse")
    ]


def test_no_top_level_secretflowapis_imports() -> None:
    pattern = re.compile(r"^\s*(from|import) secretflowapis\b", re.MULTILINE)
    files = sorted(f for f in GENERATED.rglob("*_pb2*.py*") if f.suffix in (".py", ".pyi"))
    assert len(files) >= 16
    offenders = [f.name for f in files if pattern.search(f.read_text(encoding="utf-8"))]
    assert offenders == []
    for module in MODULES:
        assert module.__name__.startswith("trustflow_core.proto.secretflowapis.v2.")
    assert cm.EncryptedRequest.__module__ == cm.__name__


class _Servicer(cm_grpc.CapsuleManagerServicer):
    """Answers GetRaCert and RegisterCert; everything else is the generated UNIMPLEMENTED."""

    def GetRaCert(self, request, context):
        return cm.GetRaCertResponse(cert="echo:" + request.nonce)

    def RegisterCert(self, request, context):
        return cm.EncryptedResponse(status={"code": 0, "message": "success"})


def test_grpc_method_paths_on_the_wire() -> None:
    """A client that dials the spec's literal paths reaches the generated handlers."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    cm_grpc.add_CapsuleManagerServicer_to_server(_Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            get_ra_cert = channel.unary_unary(
                f"/{CM_SERVICE}/GetRaCert",
                request_serializer=cm.GetRaCertRequest.SerializeToString,
                response_deserializer=cm.GetRaCertResponse.FromString,
            )
            assert get_ra_cert(cm.GetRaCertRequest(nonce="n1"), timeout=10).cert == "echo:n1"
            stub = cm_grpc.CapsuleManagerStub(channel)
            reply = stub.RegisterCert(cm.EncryptedRequest(has_signature=True), timeout=10)
            assert reply.status.message == "success"
            with pytest.raises(grpc.RpcError) as err:
                stub.GetTlsAsset(cm.EncryptedRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            wrong = channel.unary_unary(f"/{CM_SERVICE}/NoSuchMethod")
            with pytest.raises(grpc.RpcError) as err:
                wrong(b"", timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(None).wait()
