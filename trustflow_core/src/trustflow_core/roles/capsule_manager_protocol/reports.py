"""Attestation reports <-> their protobuf message (``UnifiedAttestationReport``), field by
field, as both sides of the Capsule Manager protocol carry them."""

from __future__ import annotations

from ...attestation import Report
from ...proto.secretflowapis.v2.sdc import ual_pb2

REPORT_FIELDS = (
    "str_report_version",
    "str_report_type",
    "str_tee_platform",
    "json_report",
    "json_nested_reports",
)


def report_from_pb(msg: ual_pb2.UnifiedAttestationReport) -> Report:
    return Report(**{f: getattr(msg, f) for f in REPORT_FIELDS})


def report_to_pb(report: Report) -> ual_pb2.UnifiedAttestationReport:
    return ual_pb2.UnifiedAttestationReport(**{f: getattr(report, f) for f in REPORT_FIELDS})
