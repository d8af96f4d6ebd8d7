"""JSON dialects and canonical binary form of the wire messages (docs/compat.md#wire-json-dialects).

The same protobuf message is JSON-encoded differently by each upstream peer; a role must emit what
its peer expects and accept what its peer sends:

``"sdk"``
    Python SDK (``json_format.MessageToJson``): pretty, 2-space indent, keys are the json_names
    (snake_case; ``protected`` for ``protected_header``), fields with default values omitted,
    non-ASCII escaped, int64 as strings.
``"serde"``
    Rust Capsule Manager (serde over prost structs): compact, every field present in declaration
    order (defaults included, unset sub-message ``null``, empty repeated ``[]``), keys are proto
    field names except ``protected``, enums and 64-bit integers as JSON numbers. Use this for CM
    responses. Messages with ``oneof`` fields are refused (the CM's messages have none).
``"brpc"``
    brpc HTTP servers (RA proxy, Data Capsule Proxy): compact, proto field names, proto3
    default scalars, empty repeated and unset sub-messages omitted, enums by name, 64-bit
    integers as numbers.
    A success reply therefore reads ``{"status":{"message":"success"}}``.
``"cpp"``
    C++ proxies and TEEAPPS (``MessageToJsonString`` with ``always_print_primitive_fields``):
    compact, json_names, every scalar and repeated field printed, unset sub-messages omitted.

:func:`parse_json` accepts all of them. :func:`serialize_canonical` gives the bytes that the
remote-attestation binding hashes (docs/compat.md#report-binding).
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Any, Literal, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from trustflow_core.errors import InvalidInput, UnsupportedOperation
from trustflow_core.jose import MalformedInput, parse_object

__all__ = ["STYLES", "Style", "parse_json", "serialize_canonical", "to_json"]

Style = Literal["sdk", "serde", "brpc", "cpp"]
STYLES: tuple[Style, ...] = ("sdk", "serde", "brpc", "cpp")

M = TypeVar("M", bound=Message)

# serde renames only this field (API build.rs `rename = "protected"`); all other keys are the
# proto field names.
_SERDE_RENAMES = {"protected_header": "protected"}
_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def to_json(msg: Message, *, style: Style) -> str:
    """Encode ``msg`` as JSON text in the dialect ``style`` (see the module docstring).

    Raises InvalidInput for an unknown style and UnsupportedOperation for a ``"serde"`` encoding
    of a message that has a ``oneof``.
    """
    if style == "sdk":
        return json_format.MessageToJson(msg, indent=2)
    if style == "cpp":
        obj = json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)
    elif style == "serde":
        plan = _serde_plan(msg.DESCRIPTOR)
        obj = _walk(msg, serde=True) if plan is None else _walk_plain(msg, plan)
    elif style == "brpc":
        obj = _walk(msg, serde=False)
    else:
        raise InvalidInput(f"unknown JSON style {style!r}; expected one of {', '.join(STYLES)}")
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def parse_json(data: str | bytes, message_cls: type[M], *, ignore_unknown: bool = False) -> M:
    """Parse a JSON object into a new ``message_cls``.

    Keys may be json_names or proto field names; ``null`` and missing keys leave a field unset.
    Unknown keys raise unless ``ignore_unknown`` (the Rust CM and brpc ignore them; the SDK and the
    C++ proxies do not). Raises InvalidInput naming the message type and the problem for JSON
    that is not strict (:mod:`trustflow_core.jose`: invalid UTF-8 or Unicode, duplicate keys,
    NaN/Infinity, nesting too deep), a top level that is not an object, unknown keys and values
    of the wrong type.
    """
    name = message_cls.DESCRIPTOR.full_name
    try:
        obj = parse_object(data, name)
    except MalformedInput as exc:
        if exc.problem == "object":
            raise InvalidInput(f"{name}: JSON top level must be an object, {exc.reason}") from None
        raise InvalidInput(f"{name}: not valid JSON: {exc.reason}") from None
    msg = message_cls()
    fields = _plain_fields(message_cls.DESCRIPTOR)
    if fields is not None and _fill_plain(obj, msg, fields):
        return msg
    msg = message_cls()  # anything the fast path does not take: protobuf decides
    try:
        json_format.ParseDict(obj, msg, ignore_unknown_fields=ignore_unknown)
    except (json_format.ParseError, RecursionError) as exc:
        raise InvalidInput(f"{name}: {exc}") from None
    return msg


#: key -> (field descriptor, the table of its message type or None for a string field)
_PlainFields = dict[str, tuple[Any, Any]]


@functools.cache
def _plain_fields(desc: Any) -> _PlainFields | None:
    """For a message type whose fields are all strings or (repeated) messages of such types
    (no oneof, map, well-known type or recursion): every key :func:`json_format.ParseDict`
    accepts for a field (its name and json_name) -> (the field, the table of its message type).
    None for any other message type."""
    return _plain_table(desc, frozenset())


def _plain_table(desc: Any, enclosing: frozenset[str]) -> _PlainFields | None:
    if desc.full_name.startswith("google.protobuf.") or desc.oneofs or desc.full_name in enclosing:
        return None
    table: _PlainFields = {}
    field: _Field
    for field in desc.fields:
        sub = None
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                return None
            sub = _plain_table(field.message_type, enclosing | {desc.full_name})
            if sub is None:
                return None
        elif field.type != FieldDescriptor.TYPE_STRING:
            return None
        table[field.name] = table[field.json_name] = (field, sub)
    return table


def _fill_plain(obj: dict[str, Any], msg: Any, fields: _PlainFields) -> bool:
    """Set ``msg`` from ``obj`` exactly as :func:`json_format.ParseDict` would, when ``obj``
    holds only known keys (each field once) with values of the field's JSON type or ``null``
    (left unset, as ParseDict clears it); False as soon as anything else appears, and ParseDict
    decides (it accepts or names the problem). The strings were checked by
    :func:`trustflow_core.jose.loads`: valid Unicode, what ParseDict checks of a string."""
    seen = set()
    for key, value in obj.items():
        entry = fields.get(key)
        if entry is None:
            return False
        field, sub = entry
        if field.name in seen:
            return False
        seen.add(field.name)
        if value is None:
            continue
        if field.is_repeated:
            if not isinstance(value, list):
                return False
            target = getattr(msg, field.name)
            if sub is None:
                if not all(isinstance(item, str) for item in value):
                    return False
                target.extend(value)
                continue
            for item in value:
                if not isinstance(item, dict) or not _fill_plain(item, target.add(), sub):
                    return False
        elif sub is None:
            if not isinstance(value, str):
                return False
            setattr(msg, field.name, value)
        else:
            if not isinstance(value, dict):
                return False
            child = getattr(msg, field.name)
            child.SetInParent()
            if not _fill_plain(value, child, sub):
                return False
    return True


def serialize_canonical(msg: Message) -> bytes:
    """Binary protobuf encoding identical to prost's, for hashing into report data.

    Fields in ascending number order, proto3 defaults omitted, map entries sorted
    (``deterministic=True``), unknown fields dropped (prost never keeps them). ``msg`` itself is
    not modified.
    """
    clean = type(msg)()
    clean.CopyFrom(msg)
    clean.DiscardUnknownFields()
    return clean.SerializeToString(deterministic=True)


# ---- helpers ----


#: A field descriptor: protobuf's pure-Python class or its upb one, which types-protobuf keeps
#: apart (and types ``message_type``/``enum_type`` as optional even where the type guarantees
#: them).
_Field = Any


def _walk(msg: Message, *, serde: bool) -> dict[str, Any]:
    """Dict for the serde (every field) or brpc (set fields only) dialect, keyed by field name."""
    desc = msg.DESCRIPTOR
    if serde and desc.oneofs:
        raise UnsupportedOperation(f"serde JSON of {desc.full_name}: oneof fields not supported")
    out: dict[str, Any] = {}
    field: _Field
    for field in desc.fields:
        key = _SERDE_RENAMES.get(field.name, field.name) if serde else field.name
        value = getattr(msg, field.name)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            if value or serde:
                out[key] = {k: _scalar_or_msg(value_field, v, serde) for k, v in value.items()}
        elif field.is_repeated:
            if value or serde:
                out[key] = [_scalar_or_msg(field, v, serde) for v in value]
        elif field.has_presence:
            if msg.HasField(field.name):
                out[key] = _scalar_or_msg(field, value, serde)
            elif serde:
                out[key] = None
        elif serde or value != field.default_value:
            out[key] = _scalar_or_msg(field, value, serde)
    return out


#: (key, field name, kind, the plan of its message type or None) per field, in declaration
#: order; kind: ``str``, ``msg`` (singular message), ``strs`` or ``msgs`` (repeated).
_SerdePlan = tuple[tuple[str, str, str, Any], ...]


@functools.cache
def _serde_plan(desc: Any) -> _SerdePlan | None:
    """How :func:`_walk` encodes a message type of only strings and (repeated) messages of
    such types in the serde dialect (the types :func:`_plain_fields` takes), as a flat plan;
    None for any other type (``_walk`` handles it). Message types are immutable, so the plan
    of a type never changes."""
    if _plain_fields(desc) is None:
        return None
    plan = []
    field: _Field
    for field in desc.fields:
        key = _SERDE_RENAMES.get(field.name, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = _serde_plan(field.message_type)
            plan.append((key, field.name, "msgs" if field.is_repeated else "msg", sub))
        else:
            plan.append((key, field.name, "strs" if field.is_repeated else "str", None))
    return tuple(plan)


def _walk_plain(msg: Any, plan: _SerdePlan) -> dict[str, Any]:
    """:func:`_walk` in the serde dialect of a message whose type has a :func:`_serde_plan`:
    the same dict (every field in declaration order, an unset message ``null``), without
    looking at each field's descriptor again."""
    out: dict[str, Any] = {}
    for key, name, kind, sub in plan:
        value = getattr(msg, name)
        if kind == "str":
            out[key] = value
        elif kind == "msg":
            out[key] = _walk_plain(value, sub) if msg.HasField(name) else None
        elif kind == "msgs":
            out[key] = [_walk_plain(item, sub) for item in value]
        else:
            out[key] = list(value)
    return out


def _scalar_or_msg(field: _Field, value: Any, serde: bool) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _walk(value, serde=serde)
    if field.type == FieldDescriptor.TYPE_ENUM:
        if serde:
            return value  # prost stores enums as i32
        known = field.enum_type.values_by_number.get(value)
        return known.name if known else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if field.type in _INT64_TYPES:
        return int(value)
    return value


def _is_map(field: _Field) -> bool:
    return bool(
        field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
        and field.is_repeated
    )
