"""``CsvVerifier``: Hygon CSV reports (platform ``"CSV"``) checked up to the pinned Hygon Root Key.

Checks, cheapest first, each failure naming its check: ``format`` (layout, base64, chip id),
``report_fields`` (de-masked ``sig_usage``/``sig_algo``), ``mac`` (when the report still carries
what the MAC covers), ``debug`` (guest policy NODBG), ``endorsement`` (HSK/CEK not available),
``hsk``, ``cek``, ``pek``, ``report_signature``. Then the core matches the policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, ClassVar

from trustflow_core.attestation import Attributes, Evidence, Report, Verifier
from trustflow_core.errors import InvalidInput, VerificationError
from trustflow_core.settings_schema import Node
from typing_extensions import Self

from . import chain
from .certs import CertSources
from .evidence import CsvEvidence, check_chip_id, parse_endorsements, parse_raw_evidence
from .structs import POLICY_NODBG, REPORT_PAGE, REPORT_SIZE, CsvCert, CsvReport

PLATFORM = "CSV"
_SETTINGS = CertSources.KEYS | {"allow_debug"}


class CsvVerifier(Verifier):
    """Hygon CSV verifier (``name = "csv"``). Never does network I/O unless ``kds_url`` is set.

    Settings (all optional):

    * ``hsk_cek_file`` -- an HSK||CEK bundle (2916 bytes) to use when a report carries none;
    * ``cert_dir`` -- directory of per-chip bundles, ``<chip>/hsk_cek.cert`` or
      ``<chip>_hsk_cek.cert``;
    * ``kds_url`` -- base URL of a Hygon KDS (e.g. ``https://cert.hygon.cn``), asked for
      ``/hsk_cek?snumber=<chip>`` as a last resort, answers cached per chip;
    * ``kds_timeout_seconds`` -- per request (default 5);
    * ``allow_debug`` -- accept guests whose policy allows debugging (default false).

    HSK/CEK are taken from the report's ``json_cert_chain`` first, then the sources above in
    that order. None available: check ``endorsement`` fails (fail closed).
    """

    name: ClassVar[str] = "csv"
    platform: ClassVar[str] = PLATFORM
    #: Data owners' policies see ``r.env.tee.csv.mr_boot`` (upstream name); CSV reports carry
    #: no debug flag, so acceptance does not require one.
    tee_name: ClassVar[str] = "csv"
    identity_fields: ClassVar[Mapping[str, str]] = {"mr_boot": "hex_boot_measurement"}

    def __init__(self, sources: CertSources | None = None, *, allow_debug: bool = False) -> None:
        self.sources = sources or CertSources()
        self.allow_debug = allow_debug
        self._chains = chain.ChainCache()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        root = Node.settings(settings, "csv verifier settings").mapping(_SETTINGS)
        return cls(
            CertSources.from_settings("csv verifier settings", root),
            allow_debug=root.get("allow_debug").boolean(False),
        )

    @classmethod
    def recognizes_evidence(cls, evidence: bytes) -> bool:
        """A binary CSV report: 2548 bytes, or a 4096-byte page whose tail is zero."""
        return len(evidence) == REPORT_SIZE or (
            len(evidence) == REPORT_PAGE and not any(evidence[REPORT_SIZE:])
        )

    @classmethod
    def report_from_evidence(cls, evidence: bytes, *, endorsements: bytes | None = None) -> Report:
        """Wrap a raw CSV report (2548 bytes / 4096-byte page), a CSV ``json_report`` or trustee
        JSON evidence, plus optional HSK/CEK (bundle or JSON), into an upstream-layout report."""
        found = parse_raw_evidence(evidence)
        hsk, cek = parse_endorsements(endorsements) if endorsements else (found.hsk, found.cek)
        chip_id = found.chip_id
        if not chip_id:
            try:
                chip_id = chip_id_of(CsvReport.parse(found.quote))
            except VerificationError as exc:
                raise InvalidInput(f"CSV report: {exc.detail}") from exc
        wrapped = CsvEvidence(found.quote, chip_id, hsk, cek)
        return Report(str_tee_platform=PLATFORM, json_report=wrapped.to_json())

    async def check_evidence(self, report: Report, *, now: datetime) -> Evidence:
        evidence = CsvEvidence.from_json(report.json_report)
        csv = CsvReport.parse(evidence.quote)
        chain.check_report_fields(csv)
        chip_id = chip_id_of(csv)
        if evidence.str_chip_id_mismatch(chip_id):
            raise VerificationError(
                "format", f"str_chip_id {evidence.chip_id!r} is not the report's chip {chip_id!r}"
            )
        mac = chain.mac_status(csv)
        debug = not csv.policy & POLICY_NODBG
        if debug and not self.allow_debug:
            raise VerificationError(
                "debug", f"guest policy {csv.policy:#010x} allows debugging (NODBG is not set)"
            )
        hsk_raw, cek_raw, source = await self._hsk_cek(evidence, chip_id)
        # The SM2 checks take milliseconds (tens with gmssl): keep them off the event loop.
        endorsement, pek = await asyncio.to_thread(self._signatures, csv, hsk_raw, cek_raw)
        attributes = Attributes(
            str_tee_platform=PLATFORM,
            hex_prod_id=csv.vm_id.hex(),
            hex_platform_sw_version=csv.vm_version.hex(),
            hex_secure_flags=csv.policy.to_bytes(4, "little").hex(),
            hex_boot_measurement=csv.measure.hex(),
            bool_debug_disabled="false" if debug else "true",
            hex_user_data=csv.user_data[:32].hex(),
            hex_hash_or_pem_pubkey=csv.user_data[32:].hex(),
            hex_nonce=csv.mnonce.hex(),
            str_verified_time=now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        details = {
            "chip_id": chip_id,
            "cert_chain_source": source,
            "mac": mac,
            # Non-zero only in raw firmware output: our attester and upstream's zero it.
            "reserved2": "non-zero (raw firmware report)" if any(csv.reserved2) else "zero",
            "policy": f"{csv.policy:#010x}",
            "pek_firmware_api": f"{pek.api_major}.{pek.api_minor}",
            "cek_firmware_api": f"{endorsement.cek.api_major}.{endorsement.cek.api_minor}",
            "user_pubkey_digest": csv.user_pubkey_digest.hex(),
            "tcb_status": "not available: Hygon publishes no TCB or revocation data for CSV",
        }
        return Evidence(attributes, details)

    def _signatures(
        self, csv: CsvReport, hsk_raw: bytes, cek_raw: bytes
    ) -> tuple[chain.Endorsement, CsvCert]:
        endorsement = self._chains.endorsement(hsk_raw, cek_raw)
        pek = self._chains.pek(csv.pek_raw, endorsement)
        chain.check_report(csv, pek)
        return endorsement, pek

    async def _hsk_cek(self, evidence: CsvEvidence, chip_id: str) -> tuple[bytes, bytes, str]:
        if evidence.hsk and evidence.cek:
            return evidence.hsk, evidence.cek, "report"
        found = await self.sources.find(chip_id)
        if found is None:
            raise VerificationError(
                "endorsement",
                f"HSK/CEK for chip {chip_id} are not available offline: the report carries no "
                "cert chain and no hsk_cek_file, cert_dir entry or kds_url is configured",
            )
        bundle, source = found
        return (*chain.split_hsk_cek(bundle), source)

    async def aclose(self) -> None:
        await self.sources.aclose()


def chip_id_of(csv: CsvReport) -> str:
    try:
        return check_chip_id(csv.sn.rstrip(b"\0").decode("ascii"))
    except UnicodeDecodeError as exc:
        raise VerificationError("format", "the report's serial number is not ASCII") from exc
