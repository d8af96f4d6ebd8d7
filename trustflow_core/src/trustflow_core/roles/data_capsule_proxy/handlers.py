"""HTTP handlers: brpc-style JSON in (proto field names, unknown keys ignored, ``null`` =
unset), ``{"status":{"message":"success"}}`` out."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ...errors import InvalidInput
from ...proto.secretflowapis.v2.sdc.data_capsule_proxy import data_capsule_proxy_pb2 as pb
from ...wire import parse_json, to_json
from .appkeys import SERVICE

SERVICE_NAMES = ("DataCapsuleProxy", "secretflowapis.v2.sdc.data_capsule_proxy.DataCapsuleProxy")


def _present(body: bytes, message: str) -> tuple[set[str], set[str]]:
    """Top-level keys with a non-null value, and those of ``s3_config``."""
    try:
        obj: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput(f"{message}: body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidInput(f"{message}: body must be a JSON object")
    s3 = obj.get("s3_config")
    s3_keys = {k for k, v in s3.items() if v is not None} if isinstance(s3, dict) else set()
    return {k for k, v in obj.items() if v is not None}, s3_keys


def _success(reply: Any) -> web.Response:
    reply.status.message = "success"
    return web.Response(text=to_json(reply, style="brpc"), content_type="application/json")


async def get_input_data(request: web.Request) -> web.Response:
    body = await request.read()
    present, s3_present = _present(body, "GetInputDataRequest")
    message = parse_json(body, pb.GetInputDataRequest, ignore_unknown=True)
    await request.app[SERVICE].get_input_data(message, present, s3_present)
    return _success(pb.GetInputDataResponse())


async def put_result_data(request: web.Request) -> web.Response:
    body = await request.read()
    present, s3_present = _present(body, "PutResultDataRequest")
    message = parse_json(body, pb.PutResultDataRequest, ignore_unknown=True)
    await request.app[SERVICE].put_result_data(message, present, s3_present)
    return _success(pb.PutResultDataResponse())


async def health(request: web.Request) -> web.Response:
    return web.Response(text="OK", content_type="text/plain")
