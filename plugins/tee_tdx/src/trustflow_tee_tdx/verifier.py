"""``TdxVerifier``: full DCAP verification of TDX reports and the TDX -> UAL attribute mapping.

Attributes (as upstream's TDX verifier, with TDX's real DEBUG bit instead of upstream's 0x2,
docs/compat.md#tdx-debug-bit):

* ``hex_platform_measurement`` = MRSEAM || MRSIGNERSEAM || MRTD || MRCONFIGID || MROWNER ||
  MROWNERCONFIG; ``hex_boot_measurement`` = RTMR0 || RTMR1; ``hex_ta_measurement`` = RTMR2 ||
  RTMR3; ``hex_user_data`` / ``hex_hash_or_pem_pubkey`` = REPORTDATA[0:32] / [32:64];
* ``bool_debug_disabled`` = ``"false"`` iff TDATTRIBUTES bit 0 (DEBUG) is set;
* ``hex_secure_flags`` (our addition, empty upstream) = TDATTRIBUTES || XFAM as they appear in
  the quote (16 bytes, little endian), so policies can pin attributes and XFAM.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, ClassVar

from trustflow_core.attestation import Attributes, Evidence, Report, Verifier
from trustflow_core.errors import InvalidInput, VerificationError
from trustflow_core.settings_schema import Node
from typing_extensions import Self

from . import PLATFORM
from .collateral import Collateral, load_collateral_file
from .dcap import UNKNOWN, QuoteVerdict, verify_quote, verify_quote_crypto
from .pccs import PccsClient
from .quote import TdBody, looks_like_quote
from .report import make_report, open_report
from .tcb import NOT_SUPPORTED, STATUSES

#: TCB statuses accepted unless the ``accepted_tcb_statuses`` setting says otherwise.
DEFAULT_ACCEPTED = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
)
_SETTINGS = {
    "accepted_tcb_statuses",
    "collateral_file",
    "pccs_url",
    "root_ca_crl_url",
    "pccs_timeout_seconds",
    "require_collateral",
    "require_crls",
    "allow_debug_td",
    "min_tcb_evaluation_data_number",
}


def attributes_of(body: TdBody, now: datetime) -> Attributes:
    """The UAL attributes a verified TD body proves."""
    return Attributes(
        str_tee_platform=PLATFORM,
        hex_platform_measurement=(
            body.mr_seam
            + body.mr_signer_seam
            + body.mr_td
            + body.mr_config_id
            + body.mr_owner
            + body.mr_owner_config
        ).hex(),
        hex_boot_measurement=(body.rtmr0 + body.rtmr1).hex(),
        hex_ta_measurement=(body.rtmr2 + body.rtmr3).hex(),
        hex_secure_flags=(body.td_attributes + body.xfam).hex(),
        bool_debug_disabled="false" if body.debug else "true",
        hex_user_data=body.report_data[:32].hex(),
        hex_hash_or_pem_pubkey=body.report_data[32:].hex(),
        str_verified_time=now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


class TdxVerifier(Verifier):
    """Verifier of ``TDX`` reports (``name = "tdx"``). Works on any host.

    Collateral comes from the report (Passport ``json_collateral``), else ``collateral_file``,
    else the PCCS at ``pccs_url``. Settings (all optional):

    * ``accepted_tcb_statuses`` -- list of acceptable TCB statuses (default
      :data:`DEFAULT_ACCEPTED`; ``TcbNotSupported`` can never be accepted);
    * ``collateral_file`` -- a bundle file; ``pccs_url`` / ``root_ca_crl_url`` /
      ``pccs_timeout_seconds`` (default 10) -- a PCS/PCCS to fetch from (cached per FMSPC);
    * ``require_collateral`` (default true) -- without collateral, reject (check
      ``"collateral"``); when false the quote is checked cryptographically only and reported
      with ``tcb_status: Unknown``, which must be in ``accepted_tcb_statuses`` to pass;
    * ``require_crls`` (default true) -- reject collateral without PCK or root CA CRL;
    * ``allow_debug_td`` (default false) -- accept debug TDs (then ``bool_debug_disabled`` is
      ``"false"`` and a policy can still reject them);
    * ``min_tcb_evaluation_data_number`` (default 0: any) -- reject TCB info older than this
      TCB recovery event.
    """

    name: ClassVar[str] = "tdx"
    platform: ClassVar[str] = PLATFORM
    #: Data owners' policies see ``r.env.tee.tdx.{mr_plat, mr_boot, mr_ta}`` (upstream names).
    tee_name: ClassVar[str] = "tdx"
    identity_fields: ClassVar[Mapping[str, str]] = {
        "mr_plat": "hex_platform_measurement",
        "mr_boot": "hex_boot_measurement",
        "mr_ta": "hex_ta_measurement",
    }
    debug_flag: ClassVar[bool] = True

    def __init__(
        self,
        *,
        accepted_tcb_statuses: tuple[str, ...] = DEFAULT_ACCEPTED,
        collateral: Collateral | None = None,
        pccs: PccsClient | None = None,
        require_collateral: bool = True,
        require_crls: bool = True,
        allow_debug_td: bool = False,
        min_tcb_evaluation_data_number: int = 0,
    ) -> None:
        bad = sorted(set(accepted_tcb_statuses) - (set(STATUSES) | {UNKNOWN}))
        if bad or NOT_SUPPORTED in accepted_tcb_statuses:
            raise InvalidInput(
                f"tdx verifier: accepted_tcb_statuses has unusable value(s) "
                f"{bad or [NOT_SUPPORTED]}; known: {[s for s in STATUSES if s != NOT_SUPPORTED]}"
            )
        self.accepted = frozenset(accepted_tcb_statuses)
        self.collateral = collateral
        self.pccs = pccs
        self.require_collateral = require_collateral
        self.require_crls = require_crls
        self.allow_debug_td = allow_debug_td
        self.min_evaluation = min_tcb_evaluation_data_number

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        root = Node.settings(settings, "tdx verifier settings").mapping(_SETTINGS)
        collateral = root.get("collateral_file")
        return cls(
            min_tcb_evaluation_data_number=root.get("min_tcb_evaluation_data_number").integer(
                0, minimum=0
            ),
            accepted_tcb_statuses=tuple(
                root.get("accepted_tcb_statuses").strings(list(DEFAULT_ACCEPTED))
            ),
            collateral=collateral.build(load_collateral_file) if collateral.present else None,
            pccs=PccsClient.from_settings(root, "tdx verifier settings"),
            require_collateral=root.get("require_collateral").boolean(True),
            require_crls=root.get("require_crls").boolean(True),
            allow_debug_td=root.get("allow_debug_td").boolean(False),
        )

    async def aclose(self) -> None:
        if self.pccs is not None:
            await self.pccs.aclose()

    @classmethod
    def recognizes_evidence(cls, evidence: bytes) -> bool:
        """A quote header: version 4 or 5, tee_type TDX (0x81)."""
        return looks_like_quote(evidence)

    @classmethod
    def report_from_evidence(cls, evidence: bytes, *, endorsements: bytes | None = None) -> Report:
        """A Passport report for a raw quote file and an optional collateral bundle file."""
        collateral = Collateral.from_json(endorsements) if endorsements is not None else None
        if not evidence:
            raise InvalidInput("the quote file is empty")
        return make_report(evidence, collateral)

    async def _collateral(
        self, quote: bytes, bundled: Collateral | None, now: datetime
    ) -> Collateral | None:
        if bundled is not None:
            return bundled
        if self.collateral is not None:
            return self.collateral
        if self.pccs is not None:
            _, _, pck, ca = verify_quote_crypto(quote, now)
            return await self.pccs.collateral(pck.fmspc, ca, now)
        return None

    async def appraise(
        self, quote: bytes, bundled: Collateral | None, now: datetime
    ) -> QuoteVerdict:
        """Verify ``quote`` with the collateral in use and apply the status/debug rules."""
        collateral = await self._collateral(quote, bundled, now)
        verdict = verify_quote(quote, collateral, now, require_crls=self.require_crls)
        if collateral is None and self.require_collateral:
            raise VerificationError(
                "collateral",
                "no collateral (none in the report, no collateral_file, no pccs_url): "
                "the quote verifies but its TCB status cannot be established",
            )
        evaluation = verdict.tcb_evaluation_data_number
        if self.min_evaluation and (evaluation is None or evaluation < self.min_evaluation):
            raise VerificationError(
                "tcb_info",
                f"TCB evaluation data number {evaluation} is below the required "
                f"{self.min_evaluation} (collateral too old for this policy)",
            )
        if verdict.tcb_status not in self.accepted:
            ids = f" (advisories {', '.join(verdict.advisory_ids)})" if verdict.advisory_ids else ""
            raise VerificationError(
                "tcb_status",
                f"TCB status {verdict.tcb_status}{ids} is not accepted "
                f"(accepted: {sorted(self.accepted)})",
            )
        if verdict.quote.body.debug and not self.allow_debug_td:
            raise VerificationError(
                "td_debug",
                f"the TD is debuggable (TDATTRIBUTES {verdict.quote.body.td_attributes_u64:#x} "
                "has bit 0 DEBUG set)",
            )
        return verdict

    async def check_evidence(self, report: Report, *, now: datetime) -> Evidence:
        now = now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now
        quote, bundled = open_report(report.json_report)
        verdict = await self.appraise(quote, bundled, now)
        return Evidence(attributes_of(verdict.quote.body, now), verdict.details())
