"""HTTP handlers of the RA Proxy: parse the brpc-style JSON request, ask the attester, answer in
the brpc JSON dialect (proto field names, proto3 defaults omitted)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict

from aiohttp import web

from ...attestation import Attester, ra_user_data
from ...errors import BackendUnavailable
from ...proto.secretflowapis.v2.sdc.ra_proxy import ra_proxy_pb2
from ...wire import parse_json, to_json
from .keys import PLUGIN_MANAGER, SERVICE

log = logging.getLogger("trustflow.ra_proxy")

#: brpc reaches a method by short service name or by full name (wire-formats.md §9.1).
GET_RA_CERT_PATHS = (
    "/RaProxy/GetRaCert",
    "/secretflowapis.v2.sdc.ra_proxy.RaProxy/GetRaCert",
)


class RaCertService:
    """Answers GetRaCert. Reports are never cached: every reply carries a report generated for
    that request's nonce, so ``refresh_ra_report`` (true or false) always gets a fresh one."""

    def __init__(
        self, cert_pem: bytes, attester: Attester | None, report_timeout: float = 60.0
    ) -> None:
        self.cert_pem = cert_pem
        self.attester = attester
        self.report_timeout = report_timeout

    async def get_ra_cert(
        self, request: ra_proxy_pb2.GetRaCertRequest
    ) -> ra_proxy_pb2.GetRaCertResponse:
        reply = ra_proxy_pb2.GetRaCertResponse(cert=self.cert_pem.decode("utf-8"))
        reply.status.message = "success"
        if self.attester is not None:
            user_data = ra_user_data(self.cert_pem, request.nonce.encode("utf-8"))
            try:
                report = await asyncio.wait_for(
                    self.attester.generate(user_data), self.report_timeout
                )
            except asyncio.TimeoutError:
                raise BackendUnavailable(
                    f"report generation took longer than {self.report_timeout:g} s"
                ) from None
            for key, value in report.to_dict().items():
                setattr(reply.attestation_report, key, value)
        return reply


async def get_ra_cert(request: web.Request) -> web.Response:
    body = await request.read()
    # brpc: proto field names, unknown keys ignored, null = unset (wire-formats.md §8).
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


async def plugins(request: web.Request) -> web.Response:
    from ...registry import list_plugins

    infos = [asdict(info) for info in list_plugins(request.app[PLUGIN_MANAGER])]
    return web.json_response(infos)
