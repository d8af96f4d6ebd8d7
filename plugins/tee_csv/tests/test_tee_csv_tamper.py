"""Which check catches a flipped byte, for every byte of the csv-rs report and chain
(the conformance kit proves they are all rejected; this pins down *where*)."""

from __future__ import annotations

import dataclasses

import pytest
from trustflow_core.attestation import Attributes, Policy
from trustflow_core.errors import VerificationError

from trustflow_tee_csv.evidence import CsvEvidence
from trustflow_tee_csv.structs import (
    OFF_MNONCE,
    OFF_PEK,
    OFF_RESERVED2,
    OFF_SIG,
    OFF_SIG_USAGE,
    OFF_SN,
    REPORT_SIGNED,
)
from trustflow_tee_csv.verifier import CsvVerifier

POLICY = Policy((Attributes(str_tee_platform="CSV"),))


def expected_checks(field: str, i: int) -> set[str]:
    if field == "hsk":
        return {"hsk", "format", "cek"}  # key_id is bound by the CEK's sid
    if field == "cek":
        return {"cek", "format", "pek"}  # the CEK's key signs the PEK
    if OFF_MNONCE <= i < OFF_MNONCE + 16:
        return {"mac"}  # the MAC key changes
    if i < REPORT_SIGNED:
        return {"report_signature", "debug"}
    if i < OFF_SIG:
        return {"report_fields"}  # sig_usage, sig_algo, anonce
    if i < OFF_PEK:
        return {"report_signature", "format"}
    if OFF_SN <= i < OFF_RESERVED2:
        return {"format"}  # the chip id no longer matches str_chip_id
    return {"mac"}  # PEK, reserved2, mac


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["quote", "hsk", "cek"])
async def test_every_flipped_byte_fails_the_right_check(good_report, field):
    evidence = CsvEvidence.from_json(good_report.json_report)
    data = getattr(evidence, field)
    wrong = {}
    async with CsvVerifier() as verifier:
        for i in range(len(data)):
            changed = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
            json_report = dataclasses.replace(evidence, **{field: changed}).to_json()
            try:
                await verifier.verify(
                    dataclasses.replace(good_report, json_report=json_report), POLICY
                )
            except VerificationError as exc:
                if exc.check not in expected_checks(field, i):
                    wrong[i] = exc.check
            else:
                wrong[i] = "accepted"
    assert not wrong, dict(list(wrong.items())[:20])


@pytest.mark.asyncio
async def test_sig_usage_flip_is_named(good_report):
    evidence = CsvEvidence.from_json(good_report.json_report)
    quote = bytearray(evidence.quote)
    quote[OFF_SIG_USAGE] ^= 0x01
    report = dataclasses.replace(
        good_report, json_report=dataclasses.replace(evidence, quote=bytes(quote)).to_json()
    )
    with pytest.raises(VerificationError, match="sig_usage") as info:
        await CsvVerifier().verify(report, POLICY)
    assert info.value.check == "report_fields"
