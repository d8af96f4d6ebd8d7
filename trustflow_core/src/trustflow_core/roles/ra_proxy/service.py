"""The RA Proxy's GetRaCert service: the proxy's certificate and, with an attester, a report
bound to it and to the request's nonce."""

from __future__ import annotations

import asyncio

from ...attestation import Attester, ra_user_data
from ...errors import BackendUnavailable
from ...proto.secretflowapis.v2.sdc.ra_proxy import ra_proxy_pb2


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
