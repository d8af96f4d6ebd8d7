"""``TdxAttester``: TDX reports from inside a TD, in the upstream layout
(docs/compat.md#json-report-layout).

Report data (64 bytes) = user data left-aligned in bytes 0..31 (zero-filled) and 32 zero bytes.
Passport reports carry collateral (``SgxQlQveCollateral`` JSON) from ``collateral_file`` or the
PCCS at ``pccs_url``; without either, ask for ``BackgroundCheck``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from trustflow_core.attestation import PASSPORT, Attester, Report, check_generate_args
from trustflow_core.errors import BackendUnavailable, InvalidInput, VerificationError
from typing_extensions import Self

from . import PLATFORM, certs
from .collateral import Collateral, load_collateral_file
from .guest import CONFIGFS_ROOT, DEVICE, ConfigfsTsm, QuoteSource, TdxGuestDevice, detect
from .pccs import PccsClient
from .quote import parse_quote
from .report import make_report

_SETTINGS = {
    "interface",
    "configfs_root",
    "device",
    "collateral_file",
    "pccs_url",
    "root_ca_crl_url",
    "pccs_timeout_seconds",
}
INTERFACES = ("auto", "configfs", "ioctl")


def _path(settings: Mapping[str, Any], key: str, default: Path) -> Path:
    value = settings.get(key, default)
    if not isinstance(value, (str, Path)) or not str(value):
        raise InvalidInput(f"tdx attester setting {key!r} must be a path")
    return Path(value)


class TdxAttester(Attester):
    """Attester for ``TDX`` (``name = "tdx"``); viable only inside a TD.

    Settings (all optional): ``interface`` (``auto`` = configfs-tsm when its directory exists,
    else ``/dev/tdx_guest``; or ``configfs`` / ``ioctl``), ``configfs_root``, ``device``,
    ``collateral_file``, ``pccs_url``, ``root_ca_crl_url``, ``pccs_timeout_seconds``.
    """

    name: ClassVar[str] = "tdx"
    platform: ClassVar[str] = PLATFORM
    priority: ClassVar[float] = 10.0

    def __init__(
        self,
        source: QuoteSource,
        *,
        collateral: Collateral | None = None,
        pccs: PccsClient | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.source = source
        self.collateral = collateral
        self.pccs = pccs
        #: The time used to decide whether cached PCCS collateral is still current.
        self.clock = clock

    @classmethod
    def unviable_reason(cls) -> str | None:
        try:
            return detect()
        except Exception as exc:  # viable() must never raise
            return f"cannot probe for TDX: {exc}"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        settings = settings or {}
        if not isinstance(settings, Mapping):
            raise InvalidInput("tdx attester settings must be a mapping")
        unknown = sorted(set(settings) - _SETTINGS)
        if unknown:
            raise InvalidInput(f"tdx attester got unknown setting(s) {unknown}")
        interface = settings.get("interface", "auto")
        if interface not in INTERFACES:
            raise InvalidInput(f"tdx attester setting 'interface' must be one of {INTERFACES}")
        root = _path(settings, "configfs_root", CONFIGFS_ROOT)
        device = _path(settings, "device", DEVICE)
        if interface == "auto":
            interface = "configfs" if root.is_dir() else "ioctl"
        source: QuoteSource = (
            ConfigfsTsm(root) if interface == "configfs" else TdxGuestDevice(device)
        )
        path = settings.get("collateral_file")
        pccs = PccsClient.from_settings(settings, "tdx attester")
        return cls(source, collateral=load_collateral_file(path) if path else None, pccs=pccs)

    async def aclose(self) -> None:
        if self.pccs is not None:
            await self.pccs.aclose()

    async def _collateral_for(self, quote: bytes) -> Collateral:
        if self.collateral is not None:
            return self.collateral
        if self.pccs is None:
            raise BackendUnavailable(
                "Passport TDX reports carry collateral: set the tdx attester's pccs_url or "
                "collateral_file (or ask for a BackgroundCheck report)"
            )
        try:
            parsed = parse_quote(quote)
            chain = [
                certs.load_der_cert(d)
                for d in certs.parse_pem_chain(parsed.pck_chain_pem, "pck_chain")
            ]
            ca = (
                certs.PCK_CA_NAMES.get(certs.common_name(chain[1]), "platform")
                if len(chain) > 1
                else "platform"
            )
            fmspc = certs.pck_info(chain[0]).fmspc
            return await self.pccs.collateral(fmspc, ca, self.clock())
        except VerificationError as exc:
            raise BackendUnavailable(f"cannot get collateral for this TD's quote: {exc}") from exc

    async def generate(self, user_data: bytes, *, report_type: str = PASSPORT) -> Report:
        report_data = check_generate_args(user_data, report_type) + bytes(32)
        raw = await asyncio.to_thread(self.source.get_quote, report_data)
        try:
            parsed = parse_quote(raw)
        except VerificationError as exc:
            raise BackendUnavailable(f"the TD returned an unusable quote: {exc}") from exc
        if parsed.body.report_data != report_data:
            raise BackendUnavailable("the quote does not carry the requested report data")
        quote = raw[: parsed.length]
        collateral = await self._collateral_for(quote) if report_type == PASSPORT else None
        return make_report(quote, collateral, report_type)
