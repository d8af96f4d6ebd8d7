"""``CsvAttester``: attestation reports from inside a Hygon CSV guest, in the
upstream layout (docs/compat.md#json-report-layout).

Request ``data[64] || mnonce[16] || SM3(data || mnonce)`` with ``data`` = user data (32 bytes,
zero-filled) || the public-key binding (``public_key_file``: SHA-256 of the key's PEM, else 32
zero bytes) and a fresh random ``mnonce``; the firmware answers with a V1 report in a 4096-byte
page (only the first 2548 bytes are the report; the rest of the page is ignored). Before
shipping it the attester checks that the de-masked ``mnonce`` and report data are the ones it
sent and that the MAC (HMAC-SM3 keyed by ``mnonce`` over ``pek_cert || sn || reserved2``)
verifies, i.e. the host did not swap the PEK or chip id in transit. Then it zeroes
``reserved2``, as upstream Trustflow and csv-rs do: no ABI says what the firmware leaves there
and a report must never carry a secret. (The MAC covers ``reserved2``, so after zeroing nobody
can recompute it; it is a guest-side check anyway: its key, ``mnonce``, travels in the report.)

Output: a ``UnifiedAttestationReport`` for ``CSV`` in the upstream layout, with the chip id and,
for Passport reports, the chip's HSK/CEK as ``json_cert_chain``. A Passport report needs a cert
chain: when no source is configured or none has this chip's, generation fails with the reason,
or -- with ``background_check_fallback: true`` -- a BackgroundCheck report (no chain; the
verifier finds HSK/CEK itself) is returned instead.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from trustflow_core.attestation import (
    BACKGROUND_CHECK,
    PASSPORT,
    Attester,
    Diagnostic,
    Report,
    check_generate_args,
    public_key_binding,
)
from trustflow_core.errors import BackendUnavailable, InvalidInput, VerificationError
from trustflow_core.settings_schema import Node
from typing_extensions import Self

from . import chain
from .certs import CertSources
from .device import DEVICE_PATH, CsvGuestDevice, GuestDevice
from .evidence import CsvEvidence
from .sm import sm3
from .structs import OFF_MAC, OFF_RESERVED2, REPORT_SIZE, CsvReport
from .verifier import PLATFORM, chip_id_of

_SETTINGS = CertSources.KEYS | {"device", "public_key_file", "background_check_fallback"}


class CsvAttester(Attester):
    """Hygon CSV attester (``name = "csv"``); viable only where ``/dev/csv-guest`` exists.

    Settings (all optional): ``device`` (default ``/dev/csv-guest``); the HSK/CEK sources
    of :class:`~trustflow_tee_csv.certs.CertSources` (``hsk_cek_file``, ``cert_dir``,
    ``kds_url``, ``kds_timeout_seconds``) used to bundle the cert chain into Passport reports
    (upstream fetches it from ``https://cert.hygon.cn``; here that needs ``kds_url`` set);
    ``public_key_file`` (a PEM public key bound in report-data bytes 32..63);
    ``background_check_fallback`` (default false: a Passport report without a cert chain is
    refused; true: a BackgroundCheck report is returned instead).
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
        key_binding: bytes = bytes(32),
        background_check_fallback: bool = False,
    ) -> None:
        if len(key_binding) != 32:
            raise InvalidInput("the CSV public-key binding must be 32 bytes")
        self.device = device or CsvGuestDevice()
        self.sources = sources or CertSources()
        self._nonce = nonce or (lambda: os.urandom(16))
        #: Report-data bytes 32..63 (``hex_hash_or_pem_pubkey``).
        self.key_binding = key_binding
        self.background_check_fallback = background_check_fallback

    @classmethod
    def unviable_reason(cls) -> str | None:
        try:
            if DEVICE_PATH.exists():
                return None
        except OSError:
            pass
        return f"{DEVICE_PATH} does not exist: not a Hygon CSV guest"

    @classmethod
    def diagnose(cls, settings: Mapping[str, Any] | None = None) -> list[Diagnostic]:
        """Kernel, the guest device, where a Passport report's HSK/CEK would come from."""
        return diagnose(settings or {})

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        root = Node.settings(settings, "csv attester settings").mapping(_SETTINGS)
        device = root.get("device").path(None)
        fallback = root.get("background_check_fallback").boolean(False)
        return cls(
            CsvGuestDevice(device) if device else None,
            CertSources.from_settings("csv attester", root),
            key_binding=public_key_binding(root.get("public_key_file").path(None), "csv attester"),
            background_check_fallback=fallback,
        )

    async def generate(self, user_data: bytes, *, report_type: str = PASSPORT) -> Report:
        """A fresh report binding ``user_data`` in report-data bytes 0..31 and the configured
        public key (or zeros) in bytes 32..63; ``reserved2`` zeroed."""
        data = check_generate_args(user_data, report_type) + self.key_binding
        mnonce = self._nonce()
        if len(mnonce) != 16:
            raise BackendUnavailable("the CSV nonce source must give 16 bytes")
        request = data + mnonce + sm3(data + mnonce)
        page = await asyncio.to_thread(self.device.get_report, request)
        try:
            # Only the report is ours to read: no ABI promises anything about the page tail.
            csv = CsvReport.parse(page[:REPORT_SIZE])
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
        quote = zero_reserved2(csv.raw)
        hsk = cek = b""
        if report_type == PASSPORT:
            found, problem = await self._chain_for(chip_id)
            if found is not None:
                hsk, cek = chain.split_hsk_cek(found)
            elif self.background_check_fallback:
                report_type = BACKGROUND_CHECK
            else:
                raise BackendUnavailable(
                    f"a Passport CSV report carries chip {chip_id}'s HSK/CEK, but {problem}; "
                    "configure hsk_cek_file, cert_dir or kds_url, ask for a BackgroundCheck "
                    "report, or set background_check_fallback"
                )
        evidence = CsvEvidence(quote, chip_id, hsk, cek)
        return Report(
            str_tee_platform=PLATFORM, json_report=evidence.to_json(), str_report_type=report_type
        )

    async def _chain_for(self, chip_id: str) -> tuple[bytes | None, str]:
        """``(hsk_cek bundle, "")`` or ``(None, why there is none)``."""
        if not self.sources.configured:
            return None, "no HSK/CEK source is configured"
        try:
            found = await self.sources.find(chip_id)
        except VerificationError as exc:
            return None, exc.detail
        if found is None:
            return None, "no configured HSK/CEK source has it"
        return found[0], ""

    async def aclose(self) -> None:
        await self.sources.aclose()


def zero_reserved2(report: bytes) -> bytes:
    """``report`` (2548 bytes) with ``reserved2`` (bytes 2484..2515) set to zero."""
    return report[:OFF_RESERVED2] + bytes(OFF_MAC - OFF_RESERVED2) + report[OFF_MAC:REPORT_SIZE]


def diagnose(settings: Mapping[str, Any], kernel_release: str | None = None) -> list[Diagnostic]:
    """The doctor's checks for ``settings`` (the device path and cert sources in them) on a
    host running ``kernel_release`` (default: this one's)."""
    release = kernel_release if kernel_release is not None else os.uname().release
    checks = [
        Diagnostic(
            "kernel",
            "info",
            f"{release}: CSV guests need Hygon's csv-guest driver (OpenAnolis / openEuler / "
            "Hygon kernels; not in mainline Linux)",
        )
    ]
    device = Path(settings.get("device") or DEVICE_PATH)
    try:
        present = device.exists()
    except OSError:
        present = False
    if present:
        checks.append(Diagnostic("guest", "ok", f"{device} is present"))
        checks.append(
            Diagnostic("path GET_ATTESTATION_REPORT", "ok", f"ioctl 0xC0104401 on {device}")
        )
    else:
        checks.append(
            Diagnostic("guest", "fail", f"{device} does not exist: not a Hygon CSV guest")
        )
    fallback = settings.get("background_check_fallback") is True
    missing = "fall back to BackgroundCheck" if fallback else "are refused"
    sources = [
        (key, settings.get(key))
        for key in ("hsk_cek_file", "cert_dir", "kds_url")
        if settings.get(key)
    ]
    if not sources:
        checks.append(
            Diagnostic(
                "cert chain",
                "warn",
                "no hsk_cek_file, cert_dir or kds_url (e.g. https://cert.hygon.cn): Passport "
                f"reports {missing}",
            )
        )
    for key, value in sources:
        if key == "kds_url":
            checks.append(Diagnostic("cert chain", "ok", f"HSK/CEK from the KDS {value}"))
            continue
        path = Path(str(value)).expanduser()
        exists = path.is_file() if key == "hsk_cek_file" else path.is_dir()
        checks.append(
            Diagnostic("cert chain", "ok", f"HSK/CEK from {key} {path}")
            if exists
            else Diagnostic("cert chain", "warn", f"{key} {path} does not exist")
        )
    if settings.get("public_key_file"):
        checks.append(
            Diagnostic(
                "public key", "info", f"report-data bytes 32..63 bind {settings['public_key_file']}"
            )
        )
    return checks
