"""``TdxAttester``: TDX reports from inside a TD, in the upstream layout
(docs/compat.md#json-report-layout).

Report data (64 bytes) = user data left-aligned in bytes 0..31 (zero-filled) and, in bytes
32..63, the SHA-256 of the PEM public key named by ``public_key_file`` (upstream's
``hex_hash_or_pem_pubkey``), else 32 zero bytes. The quote comes from the first path that works
(configfs-tsm, the QGS over vsock, ``TDX_CMD_GET_QUOTE``; :mod:`.guest`) unless ``interface``
pins one. Passport reports carry collateral (``SgxQlQveCollateral`` JSON) from
``collateral_file`` or the PCCS at ``pccs_url``; without it generation fails with the reason,
or -- with ``background_check_fallback: true`` -- returns a BackgroundCheck report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
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

from . import PLATFORM, certs
from .collateral import Collateral, load_collateral_file
from .guest import (
    CONFIGFS_ROOT,
    DEVICE,
    QGS_CONFIG,
    ConfigfsTsm,
    QgsVsock,
    QuotePaths,
    QuoteSource,
    TdxGuestDevice,
    detect,
    qgs_port,
)
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
    "qgs_config",
    "qgs_port",
    "public_key_file",
    "background_check_fallback",
}
INTERFACES = ("auto", "configfs", "vsock", "ioctl")


class TdxAttester(Attester):
    """Attester for ``TDX`` (``name = "tdx"``); viable only inside a TD.

    Settings (all optional): ``interface`` (``auto`` = every path in order: configfs-tsm, the
    QGS over vsock, ``TDX_CMD_GET_QUOTE``; or pin one: ``configfs`` / ``vsock`` / ``ioctl``),
    ``configfs_root``, ``device``, ``qgs_config`` (default ``/etc/tdx-attest.conf``, read for
    ``port = N``), ``qgs_port`` (overrides the file), ``collateral_file``, ``pccs_url``,
    ``root_ca_crl_url``, ``pccs_timeout_seconds``, ``public_key_file`` (PEM public key bound in
    report-data bytes 32..63), ``background_check_fallback`` (default false).
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
        key_binding: bytes = bytes(32),
        background_check_fallback: bool = False,
    ) -> None:
        if len(key_binding) != 32:
            raise InvalidInput("the TDX public-key binding must be 32 bytes")
        self.source = source
        self.collateral = collateral
        self.pccs = pccs
        #: The time used to decide whether cached PCCS collateral is still current.
        self.clock = clock
        #: Report-data bytes 32..63 (``hex_hash_or_pem_pubkey``).
        self.key_binding = key_binding
        self.background_check_fallback = background_check_fallback

    @classmethod
    def unviable_reason(cls) -> str | None:
        try:
            return detect()
        except Exception as exc:  # viable() must never raise
            return f"cannot probe for TDX: {exc}"

    def generation_detail(self) -> str:
        """``via <path>`` for the last quote, with the paths skipped before it and why."""
        if not isinstance(self.source, QuotePaths):
            name = getattr(self.source, "name", "")
            return f"via {name} (pinned)" if name else ""
        used = [a.path for a in self.source.attempts if a.ok]
        skipped = [f"{a.path}: {a.reason}" for a in self.source.attempts if not a.ok]
        text = f"via {used[0]}" if used else ""
        return text + (f" (skipped {'; '.join(skipped)})" if skipped and text else "")

    @classmethod
    def diagnose(cls, settings: Mapping[str, Any] | None = None) -> list[Diagnostic]:
        """Kernel, TD detection, every quote path with its reason, the collateral source
        (:mod:`.doctor`)."""
        from .doctor import diagnose

        return diagnose(quote_paths(settings or {}), settings or {})

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        root = Node.settings(settings, "tdx attester settings").mapping(_SETTINGS)
        interface = root.get("interface").choice(INTERFACES, "auto")
        fallback = root.get("background_check_fallback").boolean(False)
        paths = quote_paths(root)
        source: QuoteSource = QuotePaths(list(paths.values()))
        if interface != "auto":
            source = paths[interface]
        collateral_file = root.get("collateral_file").path(None)
        return cls(
            source,
            collateral=load_collateral_file(collateral_file) if collateral_file else None,
            pccs=PccsClient.from_settings(root, "tdx attester"),
            key_binding=public_key_binding(root.get("public_key_file").path(None), "tdx attester"),
            background_check_fallback=fallback,
        )

    async def aclose(self) -> None:
        if self.pccs is not None:
            await self.pccs.aclose()

    async def _collateral_for(self, quote: bytes) -> Collateral:
        if self.collateral is not None:
            return self.collateral
        if self.pccs is None:
            raise BackendUnavailable(
                "Passport TDX reports carry collateral: set the tdx attester's pccs_url or "
                "collateral_file (or ask for a BackgroundCheck report, or set "
                "background_check_fallback)"
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
        report_data = check_generate_args(user_data, report_type) + self.key_binding
        raw = await asyncio.to_thread(self.source.get_quote, report_data)
        try:
            parsed = parse_quote(raw)
        except VerificationError as exc:
            raise BackendUnavailable(f"the TD returned an unusable quote: {exc}") from exc
        if parsed.body.report_data != report_data:
            raise BackendUnavailable("the quote does not carry the requested report data")
        quote = raw[: parsed.length]
        collateral = None
        if report_type == PASSPORT:
            try:
                collateral = await self._collateral_for(quote)
            except BackendUnavailable:
                if not self.background_check_fallback:
                    raise
                report_type = BACKGROUND_CHECK
        return make_report(quote, collateral, report_type)


def quote_paths(
    settings: Mapping[str, Any] | Node,
) -> dict[str, QgsVsock | ConfigfsTsm | TdxGuestDevice]:
    """The three quote paths configured by ``settings`` (keys as the ``interface`` setting),
    in the order :class:`QuotePaths` tries them."""
    root = settings if isinstance(settings, Node) else Node.settings(settings, "tdx attester")
    device = TdxGuestDevice(root.get("device").path(DEVICE))
    config = root.get("qgs_config").path(QGS_CONFIG)
    port = root.get("qgs_port").integer(None, minimum=1, maximum=0xFFFFFFFF)
    return {
        "configfs": ConfigfsTsm(root.get("configfs_root").path(CONFIGFS_ROOT)),
        "vsock": QgsVsock(device, port if port is not None else qgs_port(config), config=config),
        "ioctl": device,
    }
