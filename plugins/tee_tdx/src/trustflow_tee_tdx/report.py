"""The TDX ``json_report`` of a ``UnifiedAttestationReport`` (docs/compat.md#json-report-layout).

Upstream layout: compact protobuf JSON of ``IntelTdxReport`` = ``{"b64_quote": "<standard
base64 of the raw quote>", "json_collateral": "<SgxQlQveCollateral JSON>"}``; BackgroundCheck
reports omit ``json_collateral``.
"""

from __future__ import annotations

import base64
import binascii
import json
from functools import lru_cache

from trustflow_core.attestation import PASSPORT, Report
from trustflow_core.errors import InvalidInput, VerificationError

from . import PLATFORM
from .collateral import Collateral


def make_report(quote: bytes, collateral: Collateral | None, report_type: str = PASSPORT) -> Report:
    """A TDX report carrying ``quote`` and, for Passport reports, ``collateral``."""
    body = {"b64_quote": base64.b64encode(quote).decode()}
    if report_type == PASSPORT and collateral is not None:
        body["json_collateral"] = collateral.to_json()
    return Report(
        str_tee_platform=PLATFORM,
        json_report=json.dumps(body, separators=(",", ":")),
        str_report_type=report_type,
    )


def open_report(json_report: str) -> tuple[bytes, Collateral | None]:
    """The raw quote and the bundled collateral (None when absent) of a TDX ``json_report``.

    Raises :class:`VerificationError` with check ``"format"`` for anything malformed.
    """
    try:
        data = json.loads(json_report)
    except (ValueError, RecursionError) as exc:
        raise VerificationError("format", f"json_report is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise VerificationError("format", "json_report must be a JSON object")
    unknown = sorted(set(data) - {"b64_quote", "json_collateral"})
    if unknown:
        raise VerificationError("format", f"json_report has unknown field(s) {unknown}")
    b64 = data.get("b64_quote")
    if not isinstance(b64, str) or not b64:
        raise VerificationError("format", "json_report has no b64_quote string")
    try:
        quote = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError("format", f"b64_quote is not base64: {exc}") from exc
    if base64.b64encode(quote).decode() != b64:
        raise VerificationError("format", "b64_quote is not canonical base64")
    text = data.get("json_collateral")
    if text is None or text == "":
        return quote, None
    if not isinstance(text, str):
        raise VerificationError("format", "json_collateral must be a string")
    return quote, _collateral(text)


@lru_cache(maxsize=32)
def _collateral(text: str) -> Collateral:
    """Parse bundled collateral; reports from one platform repeat the same text (cached)."""
    try:
        return Collateral.from_json(text)
    except InvalidInput as exc:
        raise VerificationError("format", f"json_collateral: {exc}") from exc
