"""Fake ``/dev/csv-guest`` firmware for generation tests.

Both fakes check the request like the driver/firmware would (size, ``hash = SM3(data ||
mnonce)``) and return a 4096-byte page built from the real csv-rs report:

* :class:`ReplayFirmware` returns the real report unchanged (genuinely signed; it binds the
  vector's own report data and mnonce, so only a matching request yields a verifiable report);
* :class:`TemplateFirmware` writes the request's data and mnonce into the real report (masked
  with its anonce) and recomputes the MAC, like firmware would -- but it cannot re-sign, so its
  reports pass the attester's guest-side checks and fail the verifier's signature check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trustflow_tee_csv.device import PAGE, REQUEST_SIZE
from trustflow_tee_csv.sm import hmac_sm3, sm3
from trustflow_tee_csv.structs import (
    OFF_MAC,
    OFF_MNONCE,
    OFF_PEK,
    OFF_USER_DATA,
    CsvReport,
    xor_words,
)


def check_request(request: bytes) -> tuple[bytes, bytes]:
    assert len(request) == REQUEST_SIZE, len(request)
    data, mnonce, digest = request[:64], request[64:80], request[80:]
    assert sm3(data + mnonce) == digest, "request hash is not SM3(data || mnonce)"
    return data, mnonce


@dataclass
class ReplayFirmware:
    report: bytes
    requests: list[bytes] = field(default_factory=list)
    #: What the firmware leaves after the report in the page (zeros unless a test says).
    tail: bytes = b""

    def get_report(self, request: bytes) -> bytes:
        check_request(request)
        self.requests.append(request)
        return (self.report + self.tail).ljust(PAGE, b"\0")


@dataclass
class TemplateFirmware:
    report: bytes

    def get_report(self, request: bytes) -> bytes:
        data, mnonce = check_request(request)
        anonce = CsvReport.parse(self.report).anonce
        page = bytearray(self.report)
        page[OFF_USER_DATA:OFF_MNONCE] = xor_words(data, anonce)
        page[OFF_MNONCE : OFF_MNONCE + 16] = xor_words(mnonce, anonce)
        page[OFF_MAC : OFF_MAC + 32] = hmac_sm3(mnonce, bytes(page[OFF_PEK:OFF_MAC]))
        return bytes(page).ljust(PAGE, b"\0")
