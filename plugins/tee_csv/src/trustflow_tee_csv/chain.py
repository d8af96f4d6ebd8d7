"""The Hygon trust chain HRK -> HSK -> CEK -> PEK -> report (Hygon CSV attestation).

Every function raises :class:`VerificationError` whose ``check`` names the failed step:
``hsk``, ``cek``, ``pek``, ``report_signature``, ``report_fields``, ``mac``. Structural
problems of the input bytes are check ``format``.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TypeVar

from trustflow_core.errors import VerificationError

from .sm import hmac_sm3, sm2_verify
from .structs import (
    ALGO_SM2_SA,
    CSV_CERT_SIZE,
    HSK_CEK_SIZE,
    USAGE_CEK,
    USAGE_HRK,
    USAGE_HSK,
    USAGE_PEK,
    CaCert,
    CsvCert,
    CsvReport,
    PublicKey,
)

_T = TypeVar("_T")

#: The Hygon Root Key, pinned (upstream pins the same public key).
HRK = PublicKey(
    x=0xBE62E14D62A4F14CF3D702DB09563A75C80935E785CD1F502AF5F21D92C2F62D,
    y=0x3BAB123A57BB7015584F8B97164E95384A640C10B9BE884738744D68B41EB946,
    user_id=b"HYGON-SSD-HRK",
)
#: ``key_id`` of the HRK: every HSK names it as ``certifying_id``.
HRK_KEY_ID = bytes.fromhex("3ae86a9701355cce333a589de21583d7")


def verify_hrk(raw: bytes) -> CaCert:
    """Check that ``raw`` is the pinned HRK certificate and that it is self-signed."""
    hrk = CaCert.parse(raw, "HRK")
    if (hrk.key.x, hrk.key.y, hrk.key.user_id) != (HRK.x, HRK.y, HRK.user_id):
        raise VerificationError("hrk", "the certificate's key is not the pinned Hygon Root Key")
    if hrk.key_usage != USAGE_HRK or hrk.key_id != HRK_KEY_ID or hrk.certifying_id != hrk.key_id:
        raise VerificationError("hrk", "HRK usage or key ids are not those of the root")
    if not sm2_verify(HRK.x, HRK.y, HRK.user_id, hrk.signed, hrk.r, hrk.s):
        raise VerificationError("hrk", "HRK self-signature does not verify")
    return hrk


def verify_hsk(raw: bytes) -> CaCert:
    """HSK: usage 0x13, certified by the HRK key id, SM2-signed by the pinned HRK."""
    hsk = CaCert.parse(raw, "HSK")
    if hsk.key_usage != USAGE_HSK:
        raise VerificationError("hsk", f"HSK key usage is {hsk.key_usage:#x}, expected 0x13")
    if hsk.certifying_id != HRK_KEY_ID:
        raise VerificationError("hsk", "HSK is not certified by the Hygon Root Key's key id")
    if not sm2_verify(HRK.x, HRK.y, HRK.user_id, hsk.signed, hsk.r, hsk.s):
        raise VerificationError("hsk", "HSK signature by the Hygon Root Key does not verify")
    return hsk


def _verify_csv_cert(
    cert: CsvCert, check: str, name: str, usage: int, signer: PublicKey, signer_usage: int
) -> None:
    if cert.usage != usage:
        raise VerificationError(check, f"{name} key usage is {cert.usage:#x}, expected {usage:#x}")
    if cert.algo != ALGO_SM2_SA:
        raise VerificationError(check, f"{name} key algorithm is {cert.algo:#x}, expected SM2")
    sig = cert.signature_by(signer_usage)
    if sig is None:
        raise VerificationError(check, f"{name} has no SM2 signature by usage {signer_usage:#x}")
    if not sm2_verify(signer.x, signer.y, signer.user_id, cert.signed, sig.r, sig.s):
        raise VerificationError(check, f"{name} signature by usage {signer_usage:#x} fails")


def verify_cek(raw: bytes, hsk: CaCert) -> CsvCert:
    """CEK: usage 0x1004, ``sid`` = HSK key id, its usage-0x13 slot signed by the HSK."""
    cek = CsvCert.parse(raw, "CEK")
    if cek.sid != hsk.key_id:
        raise VerificationError("cek", "CEK sid does not name the HSK's key id")
    _verify_csv_cert(cek, "cek", "CEK", USAGE_CEK, hsk.key, USAGE_HSK)
    return cek


def verify_pek(raw: bytes, cek: CsvCert) -> CsvCert:
    """PEK: usage 0x1002, its usage-0x1004 slot signed by the CEK."""
    pek = CsvCert.parse(raw, "PEK")
    _verify_csv_cert(pek, "pek", "PEK", USAGE_PEK, cek.key, USAGE_CEK)
    return pek


def check_report_fields(report: CsvReport) -> None:
    """De-masked ``sig_usage`` must be the PEK's and ``sig_algo`` SM2 (a wrong ``anonce`` or a
    tampered header shows here first)."""
    if report.sig_usage != USAGE_PEK or report.sig_algo != ALGO_SM2_SA:
        raise VerificationError(
            "report_fields",
            f"report sig_usage/sig_algo are {report.sig_usage:#x}/{report.sig_algo:#x}, "
            "expected 0x1002/0x4 (wrong anonce or tampered report)",
        )


def check_report(report: CsvReport, pek: CsvCert) -> None:
    """Report fields, then the PEK signature over the stored (masked) bytes ``[0, 180)``."""
    check_report_fields(report)
    key = pek.key
    if not sm2_verify(key.x, key.y, key.user_id, report.signed, report.r, report.s):
        raise VerificationError("report_signature", "report signature by the PEK does not verify")


def mac_status(report: CsvReport) -> str:
    """Check the report MAC as far as the report still allows, and say how far that was.

    The MAC is ``HMAC-SM3(mnonce, pek_cert || sn || reserved2)`` over the bytes the firmware
    wrote. Exporters change them: trustee and csv-rs de-mask PEK and ``sn`` (not checkable),
    and upstream Trustflow, csv-rs and our attester zero ``reserved2`` after checking the MAC in
    the guest. So: a masked PEK with non-zero ``reserved2`` is a raw firmware report whose MAC
    must verify (:class:`VerificationError` ``mac`` otherwise); with ``reserved2`` zero the MAC
    verifies only if the firmware wrote zeros there, and a mismatch means "zeroed on export",
    not tampering. The MAC key travels in the report, so a remote verifier learns nothing
    from it that the CEK -> PEK -> report signatures do not already prove."""
    if not report.pek_masked:
        return "not checkable: PEK and sn were re-exported unmasked"
    if any(report.reserved2):
        check_mac(report)
        return "verified"
    expected = hmac_sm3(report.mnonce, report.mac_data)
    if hmac.compare_digest(expected, report.mac):
        return "verified"
    return "not checkable: reserved2 was zeroed on export (as upstream attesters do)"


def check_mac(report: CsvReport) -> None:
    """``mac == HMAC-SM3(mnonce, pek_cert || sn || reserved2)`` (as stored)."""
    expected = hmac_sm3(report.mnonce, report.mac_data)
    if not hmac.compare_digest(expected, report.mac):
        raise VerificationError("mac", "report MAC (HMAC-SM3 keyed by mnonce) does not verify")


@dataclass(frozen=True)
class Endorsement:
    """A verified HSK and CEK pair."""

    hsk: CaCert
    cek: CsvCert


def split_hsk_cek(bundle: bytes) -> tuple[bytes, bytes]:
    """Split a KDS ``hsk_cek`` bundle (HSK 832 bytes || CEK 2084 bytes)."""
    if len(bundle) != HSK_CEK_SIZE:
        raise VerificationError(
            "format", f"HSK/CEK bundle is {len(bundle)} bytes, expected {HSK_CEK_SIZE}"
        )
    return bundle[:-CSV_CERT_SIZE], bundle[-CSV_CERT_SIZE:]


class ChainCache:
    """Remembers certificates that verified, keyed by their bytes (HSK alone, then HSK and CEK
    together), so a verifier pays their SM2 checks once per chip. Only successes are kept;
    each map is a bounded LRU. Safe to use from several threads."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._hsks: OrderedDict[bytes, CaCert] = OrderedDict()
        self._pairs: OrderedDict[bytes, Endorsement] = OrderedDict()
        self._peks: OrderedDict[bytes, CsvCert] = OrderedDict()

    def endorsement(self, hsk_raw: bytes, cek_raw: bytes) -> Endorsement:
        """The verified pair; :class:`VerificationError` (check ``hsk``/``cek``) otherwise."""
        pair_key = hashlib.sha256(hsk_raw + cek_raw).digest()
        found = self._get(self._pairs, pair_key)
        if found is None:
            hsk_key = hashlib.sha256(hsk_raw).digest()
            hsk = self._get(self._hsks, hsk_key)
            if hsk is None:
                hsk = self._put(self._hsks, hsk_key, verify_hsk(hsk_raw))
            found = self._put(self._pairs, pair_key, Endorsement(hsk, verify_cek(cek_raw, hsk)))
        return found

    def pek(self, pek_raw: bytes, endorsement: Endorsement) -> CsvCert:
        """The PEK verified under ``endorsement.cek``; check ``pek`` otherwise."""
        key = hashlib.sha256(endorsement.cek.raw + pek_raw).digest()
        found = self._get(self._peks, key)
        if found is None:
            found = self._put(self._peks, key, verify_pek(pek_raw, endorsement.cek))
        return found

    def _get(self, entries: OrderedDict[bytes, _T], key: bytes) -> _T | None:
        with self._lock:
            found = entries.get(key)
            if found is not None:
                entries.move_to_end(key)
            return found

    def _put(self, entries: OrderedDict[bytes, _T], key: bytes, value: _T) -> _T:
        with self._lock:
            entries[key] = value
            if len(entries) > self._size:
                entries.popitem(last=False)
            return value
