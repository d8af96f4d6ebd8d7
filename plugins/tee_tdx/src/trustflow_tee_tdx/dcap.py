"""Full DCAP verification of a TDX quote (Intel DCAP quote verification).

:func:`verify_quote` is fail-closed: every failed check raises :class:`VerificationError`
naming it (``quote_format``, ``quote_header``, ``pck_chain``, ``qe_report_signature``,
``attestation_key_binding``, ``quote_signature``, ``collateral``, ``collateral_expired``,
``crl``, ``revoked``, ``tcb_info``, ``qe_identity``, ``tdx_module``). What it returns is a
:class:`QuoteVerdict` whose ``tcb_status`` may still be unacceptable (``TcbNotSupported``,
``OutOfDate``, ``Revoked``...): the appraisal policy decides (:mod:`.verifier`). Without
collateral, the status is ``"Unknown"`` and never ``UpToDate``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from trustflow_core.errors import VerificationError

from . import certs, tcb
from .collateral import Collateral, parse_time
from .quote import INTEL_QE_VENDOR_ID, Quote, parse_quote

UNKNOWN = "Unknown"


@dataclass(frozen=True)
class QuoteVerdict:
    """What a cryptographically verified quote proves, with its TCB appraisal."""

    quote: Quote
    pck: certs.PckInfo
    pck_ca: str
    tcb_status: str
    advisory_ids: tuple[str, ...] = ()
    tcb: tcb.TcbResult | None = None
    revocation: str = "unchecked"
    tcb_evaluation_data_number: int | None = None

    def details(self) -> dict[str, Any]:
        """Plain values for :attr:`Evidence.details` (what ``trustflow attest verify`` prints)."""
        result: dict[str, Any] = {
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "quote_version": self.quote.version,
            "fmspc": self.pck.fmspc.hex(),
            "pck_ca": self.pck_ca,
            "revocation": self.revocation,
            "td_attributes": f"{self.quote.body.td_attributes_u64:#x}",
            "xfam": f"{self.quote.body.xfam_u64:#x}",
            "trailing_bytes": self.quote.trailing,
        }
        if self.tcb is not None:
            result["tcb_date"] = self.tcb.tcb_date
            result["tdx_module"] = self.tcb.module_id
            result["qe_tcb_status"] = self.tcb.qe_level.status if self.tcb.qe_level else None
        if self.tcb_evaluation_data_number is not None:
            result["tcb_evaluation_data_number"] = self.tcb_evaluation_data_number
        return result


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now


def verify_quote_crypto(
    data: bytes, now: datetime
) -> tuple[Quote, list[x509.Certificate], certs.PckInfo, str]:
    """Steps 1-7: parse, header, PCK chain to the pinned root, QE report signature, attestation
    key binding and quote signature. Returns the quote, chain (leaf first), PCK info, CA kind."""
    now = _utc(now)
    quote = parse_quote(data)
    if not hmac.compare_digest(quote.qe_vendor_id, INTEL_QE_VENDOR_ID):
        raise VerificationError("quote_header", "QE vendor id is not Intel's")
    ders = certs.parse_pem_chain(quote.pck_chain_pem, "pck_chain")
    if len(ders) != 3:
        raise VerificationError("pck_chain", f"expected 3 certificates, got {len(ders)}")
    chain = certs.verify_chain(ders, now, "pck_chain")
    ca_kind = certs.PCK_CA_NAMES.get(certs.common_name(chain[1]))
    if ca_kind is None:
        raise VerificationError("pck_chain", "the PCK issuer is not an Intel SGX PCK CA")
    pck = certs.pck_info(chain[0])
    leaf_key = chain[0].public_key()
    if not certs.ecdsa_ok(leaf_key, quote.qe_report_signature, quote.qe_report.raw):  # type: ignore[arg-type]
        raise VerificationError("qe_report_signature", "QE report is not signed by the PCK key")
    binding = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if not hmac.compare_digest(binding, quote.qe_report.report_data):
        raise VerificationError(
            "attestation_key_binding", "QE report data does not bind the attestation key"
        )
    try:
        ak = certs.p256_key(quote.attestation_key)
    except ValueError as exc:
        raise VerificationError("quote_signature", f"bad attestation key: {exc}") from exc
    if not certs.ecdsa_ok(ak, quote.signature, quote.signed):
        raise VerificationError("quote_signature", "quote is not signed by the attestation key")
    return quote, chain, pck, ca_kind


def _signed_json(
    body: bytes | None,
    signature: bytes | None,
    chain_pem: bytes | None,
    now: datetime,
    check: str,
) -> dict[str, Any]:
    """Verify a signed collateral object (issuer chain to the pinned root, signature over the
    exact bytes, ``issueDate <= now <= nextUpdate``) and return it parsed."""
    if body is None or signature is None or chain_pem is None:
        raise VerificationError("collateral", f"{check} (with signature and issuer chain) missing")
    chain = certs.verify_chain(certs.parse_pem_chain(chain_pem, check), now, check)
    if certs.common_name(chain[0]) != "Intel SGX TCB Signing":
        raise VerificationError(check, "not signed by the Intel SGX TCB Signing certificate")
    key_der = chain[0].public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if not certs.signed_by_key(key_der, signature, body):
        raise VerificationError(check, "signature does not verify")
    data = tcb.load_json(body, check)
    try:
        issued = parse_time(data.get("issueDate"), f"{check} issueDate")
        next_update = parse_time(data.get("nextUpdate"), f"{check} nextUpdate")
    except ValueError as exc:
        raise VerificationError(check, str(exc)) from exc
    if not issued <= now <= next_update:
        raise VerificationError(
            "collateral_expired",
            f"{check} is valid {data['issueDate']} .. {data['nextUpdate']}, "
            f"not at {now.isoformat()}",
        )
    return data


def _check_revocation(
    collateral: Collateral, chain: list[x509.Certificate], now: datetime, require: bool
) -> str:
    leaf, ca, root = chain
    if collateral.root_ca_crl is not None:
        root_crl = certs.check_crl(collateral.root_ca_crl, _der(root), now, "root CA CRL")
        if certs.is_revoked(root_crl, ca):
            raise VerificationError("revoked", f"{certs.common_name(ca)!r} is revoked")
    if collateral.pck_crl is not None:
        pck_crl = certs.check_crl(collateral.pck_crl, _der(ca), now, "PCK CRL")
        if certs.is_revoked(pck_crl, leaf):
            raise VerificationError("revoked", "the PCK certificate is revoked")
    complete = collateral.root_ca_crl is not None and collateral.pck_crl is not None
    if not complete and require:
        missing = [n for n in ("pck_crl", "root_ca_crl") if getattr(collateral, n) is None]
        raise VerificationError(
            "collateral", f"no {' / '.join(missing)}: revocation cannot be checked"
        )
    return "checked" if complete else "unchecked"


def verify_quote(
    data: bytes,
    collateral: Collateral | None,
    now: datetime,
    *,
    require_crls: bool = True,
) -> QuoteVerdict:
    """Verify ``data`` (a quote, trailing bytes allowed) completely at ``now``.

    With ``collateral`` None only steps 1-7 run and the status is ``"Unknown"``. With
    ``require_crls`` false, missing CRLs leave revocation ``"unchecked"`` instead of failing
    (CRLs that are present are always checked).
    """
    now = _utc(now)
    quote, chain, pck, ca_kind = verify_quote_crypto(data, now)
    if collateral is None:
        return QuoteVerdict(quote, pck, ca_kind, UNKNOWN)
    revocation = _check_revocation(collateral, chain, now, require_crls)
    info = _signed_json(
        collateral.tcb_info,
        collateral.tcb_info_signature,
        collateral.tcb_info_issuer_chain,
        now,
        "tcb_info",
    )
    identity = _signed_json(
        collateral.qe_identity,
        collateral.qe_identity_signature,
        collateral.qe_identity_issuer_chain or collateral.tcb_info_issuer_chain,
        now,
        "qe_identity",
    )
    tcb.check_tcb_info_identity(info, pck)
    qe_level, _ = tcb.qe_identity_level(identity, quote.qe_report)
    result = tcb.evaluate(info, pck, quote.body, qe_level)
    evaluation = info.get("tcbEvaluationDataNumber")
    return QuoteVerdict(
        quote,
        pck,
        ca_kind,
        result.status,
        result.advisory_ids,
        result,
        revocation,
        evaluation if isinstance(evaluation, int) else None,
    )


def clear_caches() -> None:
    """Forget every cached certificate, CRL, collateral signature and parsed JSON."""
    certs.clear_caches()
    tcb.clear_caches()
