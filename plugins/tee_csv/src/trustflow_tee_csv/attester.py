"""``CsvAttester``: attestation reports from inside a Hygon CSV guest, in the
upstream layout (docs/compat.md#json-report-layout).

Request ``data[64] || mnonce[16] || SM3(data || mnonce)`` with ``data`` = user data (32 bytes,
zero-filled) || 32 zero bytes and a fresh random ``mnonce``; the firmware answers with a V1
report. Before shipping it the attester checks that the de-masked ``mnonce`` and report data
are the ones it sent and that the MAC (HMAC-SM3 keyed by ``mnonce``) verifies, i.e. the host
did not swap the PEK or chip id in transit.

Output: a ``UnifiedAttestationReport`` for ``CSV`` in the upstream layout, with the chip id and,
when a cert source is configured (Passport reports), the chip's HSK/CEK as ``json_cert_chain``.
Unlike upstream, ``reserved2`` is kept as the firmware wrote it, so remote verifiers can check
the MAC too (upstream verifiers ignore both).
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from trustflow_core.attestation import PASSPORT, Attester, Report, check_generate_args
from trustflow_core.errors import BackendUnavailable, InvalidInput, VerificationError
from typing_extensions import Self

from . import chain
from .certs import CertSources
from .device import DEVICE_PATH, CsvGuestDevice, GuestDevice
from .evidence import CsvEvidence
from .sm import sm3
from .structs import REPORT_SIZE, CsvReport
from .verifier import PLATFORM, chip_id_of

_SETTINGS = CertSources.KEYS | {"device"}


class CsvAttester(Attester):
    """Hygon CSV attester (``name = "csv"``); viable only where ``/dev/csv-guest`` exists.

    Settings (all optional): ``device`` (default ``/dev/csv-guest``) and the HSK/CEK sources
    of :class:`~trustflow_tee_csv.certs.CertSources` (``hsk_cek_file``, ``cert_dir``,
    ``kds_url``, ``kds_timeout_seconds``) used to bundle the cert chain into Passport reports.
    Upstream fetches it from ``https://cert.hygon.cn``; here that needs ``kds_url`` set.
    """

    name: ClassVar[str] = "csv"
    platform: ClassVar[str] = PLATFORM
    priority: ClassVar[float] = 10.0

    def __init__(
        self,
        device: GuestDevice | None = None,
        sources: CertSources | None = None,
        *,
        nonce: Callable[[], bytes] | None = None,
    ) -> None:
        self.device = device or CsvGuestDevice()
        self.sources = sources or CertSources()
        self._nonce = nonce or (lambda: os.urandom(16))

    @classmethod
    def unviable_reason(cls) -> str | None:
        try:
            if DEVICE_PATH.exists():
                return None
        except OSError:
            pass
        return f"{DEVICE_PATH} does not exist: not a Hygon CSV guest"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        settings = settings or {}
        if not isinstance(settings, Mapping):
            raise InvalidInput("csv attester settings must be a mapping")
        unknown = sorted(set(settings) - _SETTINGS)
        if unknown:
            raise InvalidInput(
                f"csv attester got unknown setting(s) {unknown}; known: {sorted(_SETTINGS)}"
            )
        device = settings.get("device")
        if device is not None and (not isinstance(device, (str, Path)) or not str(device)):
            raise InvalidInput("csv attester setting 'device' must be a path")
        return cls(
            CsvGuestDevice(Path(device)) if device else None,
            CertSources.from_settings("csv attester", settings),
        )

    async def generate(self, user_data: bytes, *, report_type: str = PASSPORT) -> Report:
        """A fresh report binding ``user_data`` in report data bytes 0..31 (32..63 zero)."""
        data = check_generate_args(user_data, report_type) + bytes(32)
        mnonce = self._nonce()
        if len(mnonce) != 16:
            raise BackendUnavailable("the CSV nonce source must give 16 bytes")
        request = data + mnonce + sm3(data + mnonce)
        page = await asyncio.to_thread(self.device.get_report, request)
        try:
            csv = CsvReport.parse(page)
            chain.check_report_fields(csv)
        except VerificationError as exc:
            raise BackendUnavailable(f"the CSV firmware returned a bad report: {exc}") from exc
        if not hmac.compare_digest(csv.mnonce, mnonce):
            raise BackendUnavailable("the CSV report does not carry the mnonce we sent")
        try:
            chain.check_mac(csv)
        except VerificationError as exc:
            raise BackendUnavailable(
                "the CSV report MAC does not verify: PEK or chip id altered in transit"
            ) from exc
        if not hmac.compare_digest(csv.user_data, data):
            raise BackendUnavailable("the CSV report does not carry the report data we sent")
        try:
            chip_id = chip_id_of(csv)
        except VerificationError as exc:
            raise BackendUnavailable(f"the CSV firmware returned a bad report: {exc}") from exc
        hsk = cek = b""
        if report_type == PASSPORT and self.sources.configured:
            try:
                found = await self.sources.find(chip_id)
            except VerificationError as exc:
                raise BackendUnavailable(exc.detail) from exc
            if found is not None:
                hsk, cek = chain.split_hsk_cek(found[0])
        evidence = CsvEvidence(csv.raw[:REPORT_SIZE], chip_id, hsk, cek)
        return Report(
            str_tee_platform=PLATFORM, json_report=evidence.to_json(), str_report_type=report_type
        )

    async def aclose(self) -> None:
        await self.sources.aclose()
