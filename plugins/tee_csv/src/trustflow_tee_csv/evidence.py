"""The CSV ``json_report`` (upstream ``HygonCsvReport``) and the raw evidence forms accepted by
``trustflow attest verify --quote``.

``json_report`` is the compact protobuf JSON upstream prints (docs/compat.md#json-report-layout)::

    {"b64_quote": "<base64 of the 2548-byte report>",
     "json_cert_chain": "{\\"b64_hsk_cert\\":\\"…\\",\\"b64_cek_cert\\":\\"…\\"}",
     "str_chip_id": "<chip serial number>"}

Empty fields are omitted. Parsing is strict: unknown keys, non-canonical base64 and a
``str_chip_id`` that differs from the report's own serial number are format errors, so no byte
of the JSON can change without the verification failing.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from trustflow_core.errors import InvalidInput, VerificationError

from .structs import CA_CERT_SIZE, CSV_CERT_SIZE, HSK_CEK_SIZE

CHIP_ID_RE = re.compile(r"[A-Za-z0-9]{1,64}")


@dataclass(frozen=True)
class CsvEvidence:
    """What a CSV ``json_report`` carries."""

    quote: bytes
    chip_id: str = ""
    hsk: bytes = b""
    cek: bytes = b""

    def str_chip_id_mismatch(self, chip_id: str) -> bool:
        """Whether ``str_chip_id`` is set and differs from ``chip_id`` (the report's own)."""
        return bool(self.chip_id) and self.chip_id != chip_id

    def to_json(self) -> str:
        """Compact upstream JSON; the cert chain only when both certificates are present."""
        body: dict[str, str] = {"b64_quote": _b64(self.quote)}
        if self.hsk and self.cek:
            chain = {"b64_hsk_cert": _b64(self.hsk), "b64_cek_cert": _b64(self.cek)}
            body["json_cert_chain"] = _compact(chain)
        if self.chip_id:
            body["str_chip_id"] = self.chip_id
        return _compact(body)

    @classmethod
    def from_json(cls, text: str) -> CsvEvidence:
        """Parse ``json_report``; any problem is a :class:`VerificationError` (check ``format``)."""
        body = _object(text, "CSV json_report", {"b64_quote", "json_cert_chain", "str_chip_id"})
        quote = _unb64(body.get("b64_quote"), "b64_quote")
        if not quote:
            raise VerificationError("format", "CSV json_report has no b64_quote")
        # Upstream keeps the 64-byte serial with its NUL padding; the chip id is the text.
        chip_id = _string(body.get("str_chip_id", ""), "str_chip_id").rstrip("\0")
        hsk = cek = b""
        chain_text = _string(body.get("json_cert_chain", ""), "json_cert_chain")
        if chain_text:
            chain = _object(chain_text, "json_cert_chain", {"b64_hsk_cert", "b64_cek_cert"})
            hsk = _unb64(chain.get("b64_hsk_cert"), "b64_hsk_cert")
            cek = _unb64(chain.get("b64_cek_cert"), "b64_cek_cert")
            if len(hsk) != CA_CERT_SIZE or len(cek) != CSV_CERT_SIZE:
                raise VerificationError(
                    "format",
                    f"json_cert_chain certificates are {len(hsk)}/{len(cek)} bytes, expected "
                    f"HSK {CA_CERT_SIZE} and CEK {CSV_CERT_SIZE}",
                )
        return cls(quote, chip_id, hsk, cek)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise VerificationError("format", f"CSV json_report field {what} must be a string")
    return value


def _unb64(value: Any, what: str) -> bytes:
    text = _string(value if value is not None else "", what)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError("format", f"{what} is not valid base64: {exc}") from exc
    if _b64(data) != text:
        raise VerificationError("format", f"{what} is not canonical base64")
    return data


def _object(text: str, what: str, allowed: set[str]) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise VerificationError("format", f"{what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise VerificationError("format", f"{what} must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise VerificationError("format", f"{what} has unknown field(s) {unknown}")
    return value


def check_chip_id(chip_id: str) -> str:
    """``chip_id`` if it is a plausible Hygon serial (1..64 ASCII letters/digits; it is used
    in file names and KDS URLs), else :class:`VerificationError` (check ``format``)."""
    if not CHIP_ID_RE.fullmatch(chip_id):
        raise VerificationError("format", f"chip id {chip_id!r} is not 1..64 ASCII letters/digits")
    return chip_id


# ---- raw evidence (``attest verify --quote FILE --certs FILE``) --------------------------------


def parse_raw_evidence(evidence: bytes) -> CsvEvidence:
    """Raw evidence: a report (2548 bytes or a 4096-byte page), a CSV ``json_report``, a whole
    CSV ``UnifiedAttestationReport`` JSON, or trustee/guest-components JSON evidence
    (``attestation_report{magic, flags, data}``, ``serial_number``). Raises
    :class:`InvalidInput`."""
    stripped = evidence.lstrip()
    if not stripped.startswith(b"{"):
        return CsvEvidence(bytes(evidence))
    try:
        doc = json.loads(evidence)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidInput(f"CSV evidence is neither a binary report nor JSON: {exc}") from exc
    if isinstance(doc, dict) and "json_report" in doc:  # a whole UnifiedAttestationReport
        if doc.get("str_tee_platform") != "CSV" or not isinstance(doc["json_report"], str):
            raise InvalidInput("the attestation report is not a CSV report")
        try:
            return parse_raw_evidence(doc["json_report"].encode())
        except UnicodeEncodeError:  # an unpaired surrogate escape such as "\ud800"
            raise InvalidInput("the report's json_report is not valid Unicode") from None
    if isinstance(doc, dict) and "b64_quote" in doc:
        try:
            return CsvEvidence.from_json(evidence.decode())
        except VerificationError as exc:
            raise InvalidInput(exc.detail) from exc
    if isinstance(doc, dict) and "attestation_report" in doc:
        return _trustee_evidence(doc)
    raise InvalidInput("CSV JSON evidence has neither b64_quote nor attestation_report")


def _byte_list(value: Any, what: str) -> bytes:
    if not isinstance(value, list) or not all(isinstance(b, int) and 0 <= b < 256 for b in value):
        raise InvalidInput(f"trustee CSV evidence: {what} must be a list of byte values")
    return bytes(value)


def _trustee_evidence(doc: dict[str, Any]) -> CsvEvidence:
    wrapper = doc["attestation_report"]
    if not isinstance(wrapper, dict):
        raise InvalidInput("trustee CSV evidence: attestation_report must be an object")
    magic = _byte_list(wrapper.get("magic", []), "magic")
    flags = wrapper.get("flags", 0)
    if any(magic) or flags:
        raise InvalidInput(
            "trustee CSV evidence is an extended (V2) report; only V1 reports are supported"
        )
    quote = _byte_list(wrapper.get("data"), "attestation_report.data")
    serial = _byte_list(doc.get("serial_number", []), "serial_number")
    try:
        chip_id = serial.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError as exc:
        raise InvalidInput("trustee CSV evidence: serial_number is not ASCII") from exc
    return CsvEvidence(quote, chip_id)


def parse_endorsements(data: bytes) -> tuple[bytes, bytes]:
    """``--certs``: a KDS ``hsk_cek`` bundle (2916 bytes) or JSON ``{"b64_hsk_cert",
    "b64_cek_cert"}``. Returns ``(hsk, cek)``; raises :class:`InvalidInput`."""
    if len(data) == HSK_CEK_SIZE:
        return data[:CA_CERT_SIZE], data[CA_CERT_SIZE:]
    try:
        chain = _object(data.decode(), "CSV cert chain", {"b64_hsk_cert", "b64_cek_cert"})
        hsk = _unb64(chain.get("b64_hsk_cert"), "b64_hsk_cert")
        cek = _unb64(chain.get("b64_cek_cert"), "b64_cek_cert")
    except (VerificationError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            f"CSV certs must be an HSK||CEK bundle of {HSK_CEK_SIZE} bytes or JSON "
            f"{{b64_hsk_cert, b64_cek_cert}} ({exc})"
        ) from exc
    if len(hsk) != CA_CERT_SIZE or len(cek) != CSV_CERT_SIZE:
        raise InvalidInput(f"CSV certs are {len(hsk)}/{len(cek)} bytes, expected 832/2084")
    return hsk, cek
