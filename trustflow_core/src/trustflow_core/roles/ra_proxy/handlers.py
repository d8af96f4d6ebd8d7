"""HTTP handlers of the RA Proxy: parse the brpc-style JSON request, ask the attester, answer in
the brpc JSON dialect (proto field names, proto3 defaults omitted)."""

from __future__ import annotations

import logging

from aiohttp import web

from ...proto.secretflowapis.v2.sdc.ra_proxy import ra_proxy_pb2
from ...wire import parse_json, to_json
from .keys import SERVICE

log = logging.getLogger("trustflow.ra_proxy")

#: brpc reaches a method by short service name or by full name (docs/compat.md#brpc-method-names).
GET_RA_CERT_PATHS = (
    "/RaProxy/GetRaCert",
    "/secretflowapis.v2.sdc.ra_proxy.RaProxy/GetRaCert",
)


async def get_ra_cert(request: web.Request) -> web.Response:
    body = await request.read()
    # brpc: proto field names, unknown keys ignored, null = unset
    # (docs/compat.md#wire-json-dialects).
    message = parse_json(body, ra_proxy_pb2.GetRaCertRequest, ignore_unknown=True)
    reply = await request.app[SERVICE].get_ra_cert(message)
    log.info(
        "GetRaCert nonce=%r refresh_ra_report=%s report=%s",
        message.nonce[:80],
        message.refresh_ra_report,
        reply.HasField("attestation_report"),
    )
    return web.Response(text=to_json(reply, style="brpc"), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="OK", content_type="text/plain")
