"""JSON dialects, strict parsing and canonical serialization of trustflow_core.wire."""

from __future__ import annotations

import json

import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor

from trustflow_core import wire
from trustflow_core.errors import InvalidInput, UnsupportedOperation
from trustflow_core.proto.secretflowapis.v2 import common_pb2, status_pb2
from trustflow_core.proto.secretflowapis.v2.sdc import jwt_pb2, ual_pb2
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm
from trustflow_core.proto.secretflowapis.v2.sdc.data_capsule_proxy import (
    data_capsule_proxy_pb2 as dcp,
)
from trustflow_core.proto.secretflowapis.v2.sdc.ra_proxy import ra_proxy_pb2 as rap


def _messages(*modules: object) -> list[Descriptor]:
    found: list[Descriptor] = []

    def visit(desc: Descriptor) -> None:
        found.append(desc)
        found.extend(n for n in desc.nested_types if not n.GetOptions().map_entry)

    for module in modules:
        for desc in module.DESCRIPTOR.message_types_by_name.values():  # type: ignore[attr-defined]
            visit(desc)
    return found


SERDE_MESSAGES = _messages(common_pb2, status_pb2, jwt_pb2, ual_pb2, cm)


def _class(desc: Descriptor) -> type:
    return message_factory.GetMessageClass(desc)


def _policy() -> cm.Policy:
    return cm.Policy(
        data_uuid="d1",
        rules=[
            cm.Rule(
                rule_id="r1",
                grantee_party_ids=["P1", "P2"],
                op_constraints=[cm.Rule.OpConstraint(op_name="OP_PSI")],
                columns=["id"],
            )
        ],
    )


# ---- sdk ----


def test_sdk_style_is_pretty_json_names_without_defaults() -> None:
    msg = cm.EncryptedRequest(message=jwt_pb2.Jwe(protected_header="p", iv="i"))
    text = wire.to_json(msg, style="sdk")
    assert text.startswith('{\n  "message": {\n    "protected": "p",')
    assert json.loads(text) == {"message": {"protected": "p", "iv": "i"}}


# ---- serde ----


@pytest.mark.parametrize("desc", SERDE_MESSAGES, ids=lambda d: d.full_name)
def test_serde_style_has_every_field_in_declaration_order(desc: Descriptor) -> None:
    text = wire.to_json(_class(desc)(), style="serde")
    obj = json.loads(text)
    renamed = ["protected" if f.name == "protected_header" else f.name for f in desc.fields]
    assert list(obj) == renamed
    for field in desc.fields:
        value = obj["protected" if field.name == "protected_header" else field.name]
        if field.is_repeated and field.message_type and field.message_type.GetOptions().map_entry:
            assert value == {}
        elif field.is_repeated:
            assert value == []
        elif field.message_type is not None:
            assert value is None
        else:
            assert value == field.default_value
    assert json.dumps(obj, separators=(",", ":"), ensure_ascii=False) == text  # compact


def test_serde_style_nested_values() -> None:
    resp = cm.EncryptedResponse(status=status_pb2.Status(code=0, message="success"))
    assert wire.to_json(resp, style="serde") == (
        '{"status":{"code":0,"message":"success","details":[]},"message":null}'
    )
    key = cm.GetExportDataKeyResponse(data_key=cm.DataKey(resource_uri="u", data_key_b64="k=="))
    assert wire.to_json(key, style="serde") == (
        '{"data_key":{"resource_uri":"u","data_key_b64":"k=="}}'
    )
    collateral = ual_pb2.SgxQlQveCollateral(version=3, tee_type=0x81)
    obj = json.loads(wire.to_json(collateral, style="serde"))
    assert obj["version"] == 3 and obj["tee_type"] == 0x81  # numbers, not strings
    assert wire.to_json(common_pb2.RequestHeader(custom_headers={"a": "ü"}), style="serde") == (
        '{"custom_headers":{"a":"ü"}}'
    )


def _filled(desc: Descriptor, depth: int, unset_every: int) -> object:
    """A message of a string-only type with every string set (non-ASCII, quotes), every
    repeated field holding two entries, and some sub-messages left unset."""
    msg = _class(desc)()
    for i, field in enumerate(desc.fields):
        if field.message_type is not None:
            sub = field.message_type
            if field.is_repeated:
                for _ in range(2):
                    getattr(msg, field.name).add().CopyFrom(_filled(sub, depth + 1, unset_every))
            elif (i + depth) % unset_every:
                getattr(msg, field.name).CopyFrom(_filled(sub, depth + 1, unset_every))
        elif field.is_repeated:
            getattr(msg, field.name).extend([f"{field.name} ü", 'a "b" \\ c'])
        else:
            setattr(msg, field.name, f'{field.name}-{depth} ü "q" \u2028')
    return msg


@pytest.mark.parametrize("desc", SERDE_MESSAGES, ids=lambda d: d.full_name)
def test_serde_style_of_string_only_messages_is_the_general_encoding(desc: Descriptor) -> None:
    """The types of only strings and (repeated) messages of such types are encoded from a
    per-type plan; the text is the one the general encoder gives, set or unset, filled or
    empty."""
    if wire._serde_plan(desc) is None:
        pytest.skip("not a string-only type: the general encoder handles it")
    for msg in (_class(desc)(), _filled(desc, 0, 2), _filled(desc, 1, 2), _filled(desc, 0, 9)):
        general = json.dumps(wire._walk(msg, serde=True), separators=(",", ":"), ensure_ascii=False)
        assert wire.to_json(msg, style="serde") == general


def test_serde_style_round_trips_through_parse() -> None:
    policy = _policy()
    assert wire.parse_json(wire.to_json(policy, style="serde"), cm.Policy) == policy


def test_serde_style_refuses_oneof_messages() -> None:
    with pytest.raises(UnsupportedOperation, match="GetInputDataRequest"):
        wire.to_json(dcp.GetInputDataRequest(data_key_b64="k"), style="serde")


# ---- brpc ----


def test_brpc_style_omits_defaults_and_uses_field_names() -> None:
    ok = dcp.GetInputDataResponse(status=status_pb2.Status(code=0, message="success"))
    assert wire.to_json(ok, style="brpc") == '{"status":{"message":"success"}}'
    jwe = jwt_pb2.Jwe(protected_header="p", aad="")
    assert wire.to_json(jwe, style="brpc") == '{"protected_header":"p"}'
    s3 = dcp.S3Config(type=dcp.S3_STORAGE_TYPE_MINIO, secure=False, cert_check=True)
    assert json.loads(wire.to_json(s3, style="brpc")) == {
        "type": "S3_STORAGE_TYPE_MINIO",
        "cert_check": True,
    }


def test_brpc_style_prints_set_oneof_members_even_if_default() -> None:
    req = dcp.GetInputDataRequest(data_key_b64="", dest_config=dcp.LocalFSConfig())
    assert json.loads(wire.to_json(req, style="brpc")) == {"data_key_b64": "", "dest_config": {}}


def test_brpc_style_int64_is_a_number() -> None:
    obj = json.loads(wire.to_json(ual_pb2.SgxQlQveCollateral(version=7), style="brpc"))
    assert obj == {"version": 7}


# ---- cpp ----


def test_cpp_style_prints_scalars_but_not_unset_messages() -> None:
    text = wire.to_json(cm.EncryptedRequest(message=jwt_pb2.Jwe(iv="i")), style="cpp")
    assert "\n" not in text and ": " not in text
    assert json.loads(text) == {
        "message": {
            "protected": "",
            "encrypted_key": "",
            "iv": "i",
            "ciphertext": "",
            "tag": "",
            "aad": "",
        },
        "has_signature": False,
    }


def test_unknown_style_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="unknown JSON style 'yaml'"):
        wire.to_json(cm.DataKey(), style="yaml")  # type: ignore[arg-type]


# ---- parse_json ----


def test_parse_accepts_json_name_and_field_name() -> None:
    by_json_name = wire.parse_json('{"protected": "x"}', jwt_pb2.Jwe)
    by_field_name = wire.parse_json(b'{"protected_header": "x"}', jwt_pb2.Jwe)
    assert by_json_name.protected_header == by_field_name.protected_header == "x"


def test_parse_treats_null_as_unset() -> None:
    msg = wire.parse_json(
        '{"header": null, "message": null, "has_signature": true}', cm.EncryptedRequest
    )
    assert not msg.HasField("header") and not msg.HasField("message") and msg.has_signature
    resp = wire.parse_json('{"status": {"code": 0, "details": null}}', cm.EncryptedResponse)
    assert resp.HasField("status") and list(resp.status.details) == []


def test_parse_strict_rejects_unknown_keys() -> None:
    with pytest.raises(InvalidInput, match=r"DataKey.*no field named \"extra\""):
        wire.parse_json('{"resource_uri": "u", "extra": 1}', cm.DataKey)
    with pytest.raises(InvalidInput, match="ownerPartyId"):
        wire.parse_json('{"ownerPartyId": "A"}', cm.RegisterCertRequest)


def test_parse_lenient_ignores_unknown_keys() -> None:
    msg = wire.parse_json(
        '{"resource_uri": "u", "extra": {"x": 1}}', cm.DataKey, ignore_unknown=True
    )
    assert msg == cm.DataKey(resource_uri="u")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("{", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        ('{"scope": "a", "scope": "b"}', "duplicate key 'scope'"),
        ('{"scope": NaN}', "NaN is not valid JSON"),
        ("[]", "must be an object, got list"),
        ('"owner_party_id"', "must be an object, got str"),
        ("null", "must be an object, got NoneType"),
        ('{"data_uuid": 5}', "data_uuid"),
        ('{"certs": "pem"}', "certs"),
    ],
)
def test_parse_rejects_malformed_input(data: str | bytes, problem: str) -> None:
    with pytest.raises(InvalidInput) as err:
        wire.parse_json(data, cm.RegisterCertRequest if "certs" in str(data) else cm.Policy)
    assert problem in str(err.value)
    assert "secretflowapis.v2.sdc.capsule_manager." in str(err.value)


# ---- serialize_canonical ----


def test_canonical_bytes_follow_field_order_and_omit_defaults() -> None:
    # Spec facts: field 1 / field 2 length-delimited tags are 0x0a / 0x12.
    assert wire.serialize_canonical(cm.DataKey(resource_uri="u", data_key_b64="k")) == (
        b"\x0a\x01u\x12\x01k"
    )
    assert wire.serialize_canonical(cm.DataKey(data_key_b64="k", resource_uri="u")) == (
        b"\x0a\x01u\x12\x01k"
    )
    assert wire.serialize_canonical(cm.DataKey()) == b""
    assert wire.serialize_canonical(cm.ResourceRequest(scope="")) == b""


def test_canonical_bytes_sort_map_entries() -> None:
    one = common_pb2.RequestHeader(custom_headers={"b": "2", "a": "1"})
    two = common_pb2.RequestHeader(custom_headers={"a": "1", "b": "2"})
    assert wire.serialize_canonical(one) == wire.serialize_canonical(two)


def test_canonical_bytes_drop_unknown_fields_without_touching_the_message() -> None:
    newer = rap.GetRaCertRequest(nonce="n", refresh_ra_report=True).SerializeToString()
    older = cm.GetRaCertRequest.FromString(newer)  # field 3 is unknown to the CM's message
    assert older.SerializeToString() == newer  # unknown field kept by protobuf-python
    assert wire.serialize_canonical(older) == cm.GetRaCertRequest(nonce="n").SerializeToString()
    assert older.SerializeToString() == newer


def test_canonical_bytes_of_resource_request_are_stable() -> None:
    req = cm.ResourceRequest(
        initiator_party_id="I",
        scope="default",
        op_name="OP_PSI",
        resources=[cm.ResourceRequest.Resource(resource_uri="d/1", columns=["a", "b"])],
    )
    parsed = wire.parse_json(wire.to_json(req, style="sdk"), cm.ResourceRequest)
    assert wire.serialize_canonical(parsed) == wire.serialize_canonical(req)
    assert wire.serialize_canonical(parsed) == req.SerializeToString()


def _parse_dict_outcome(data: str, cls: type, ignore_unknown: bool) -> object:
    """What protobuf's ParseDict makes of ``data``: the message's bytes and whether its
    sub-messages are set, or the error parse_json reports."""
    from google.protobuf import json_format

    msg = cls()
    try:
        json_format.ParseDict(json.loads(data), msg, ignore_unknown_fields=ignore_unknown)
    except json_format.ParseError as exc:
        return f"{cls.DESCRIPTOR.full_name}: {exc}"
    return msg.SerializeToString(deterministic=True), [f.name for f, _ in msg.ListFields()]


def test_parse_json_fast_path_agrees_with_parse_dict() -> None:
    """parse_json fills messages of strings and sub-messages (the CM's app requests) itself;
    on every input it must give what ParseDict gives: the same fields set, the same refusal."""
    import random

    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2 as cm_pb2,
    )

    rng = random.Random(18)
    values: list[object] = [None, "", "x", 1, True, 2.5, [], ["a", "b"], [None], ["a", 1], {}]
    values += [[{}], [{"resource_uri": "u", "columns": ["c"]}], [{"resourceUri": None}], [1]]
    top = ["cert", "resource_request", "resourceRequest", "attestation_report", "bogus", "[x.y]"]
    inner = ["initiator_party_id", "initiatorPartyId", "scope", "op_name", "resources", "env", "z"]
    report = ["str_report_version", "str_tee_platform", "strTeePlatform", "json_report", "nope"]
    for _ in range(4000):
        obj: dict[str, object] = {}
        for _ in range(rng.randint(0, 4)):
            key = rng.choice(top)
            names = inner if key.startswith("resource") else report
            if (
                key in ("resource_request", "resourceRequest", "attestation_report")
                and rng.random() < 0.7
            ):
                obj[key] = {rng.choice(names): rng.choice(values) for _ in range(rng.randint(0, 4))}
            else:
                obj[key] = rng.choice(values)
        data = json.dumps(obj)
        for ignore in (True, False):
            expected = _parse_dict_outcome(data, cm_pb2.GetDataKeysRequest, ignore)
            try:
                msg = wire.parse_json(data, cm_pb2.GetDataKeysRequest, ignore_unknown=ignore)
                got: object = (
                    msg.SerializeToString(deterministic=True),
                    [f.name for f, _ in msg.ListFields()],
                )
            except InvalidInput as exc:
                got = str(exc)
            assert got == expected, (data, ignore)
