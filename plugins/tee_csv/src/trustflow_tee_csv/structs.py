"""Binary layouts of Hygon certificates and the V1 CSV attestation report (Hygon's
layouts). Parsing only: nothing here checks a signature.

All integers are little endian. EC coordinates and signature halves sit in 72-byte slots
holding a little-endian number; only 32 bytes are meaningful on the SM2 curve, so a slot whose
upper 40 bytes are not zero is malformed (it would encode a number >= 2**256).

Certificates must be canonical where no signature protects them: the reserved bytes after the
signature(s) are zero and an empty signature slot is usage ``0x1000`` (or 0), algorithm 0 and
zero values -- as in every genuine certificate examined. So any change to a certificate is
detected, not only changes to its signed part.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from trustflow_core.errors import VerificationError

SLOT = 72
CURVE_SM2 = 3
ALGO_SM2_SA = 0x0004
ALGO_SM2_DH = 0x0005

USAGE_HRK = 0x0000
USAGE_INVALID = 0x1000
USAGE_HSK = 0x0013
USAGE_OCA = 0x1001
USAGE_PEK = 0x1002
USAGE_CEK = 0x1004

CA_CERT_SIZE = 832
CA_SIGNED = 576
CSV_CERT_SIZE = 2084
CSV_SIGNED = 1044
HSK_CEK_SIZE = CA_CERT_SIZE + CSV_CERT_SIZE

REPORT_SIZE = 2548
REPORT_PAGE = 4096
REPORT_SIGNED = 180
OFF_USER_DATA = 64
OFF_MNONCE = 128
OFF_MEASURE = 144
OFF_POLICY = 176
OFF_SIG_USAGE = 180
OFF_ANONCE = 188
OFF_SIG = 192
OFF_PEK = 336
OFF_SN = OFF_PEK + CSV_CERT_SIZE  # 2420
OFF_RESERVED2 = OFF_SN + 64  # 2484
OFF_MAC = OFF_RESERVED2 + 32  # 2516

#: Guest policy bit 0: debugging of the guest is disallowed.
POLICY_NODBG = 0x1


def le_slot(data: bytes, offset: int, what: str) -> int:
    """The number in the 72-byte little-endian slot at ``offset``."""
    slot = data[offset : offset + SLOT]
    if len(slot) != SLOT or any(slot[32:]):
        raise VerificationError("format", f"{what}: malformed 72-byte little-endian value")
    return int.from_bytes(slot[:32], "little")


def require_zero(data: bytes, start: int, end: int, what: str) -> None:
    """Reject non-zero bytes in the unsigned reserved range ``[start, end)``."""
    if any(data[start:end]):
        raise VerificationError("format", f"{what}: reserved bytes {start}..{end} are not zero")


@dataclass(frozen=True)
class PublicKey:
    """An SM2 public key with its owner's user ID (the SM2 ``ID_A`` used for its signatures)."""

    x: int
    y: int
    user_id: bytes


def _public_key(data: bytes, curve_off: int, what: str) -> PublicKey:
    (curve_id,) = struct.unpack_from("<I", data, curve_off)
    if curve_id != CURVE_SM2:
        raise VerificationError("format", f"{what}: curve id {curve_id}, expected {CURVE_SM2}")
    x = le_slot(data, curve_off + 4, f"{what} Qx")
    y = le_slot(data, curve_off + 4 + SLOT, f"{what} Qy")
    uid_off = curve_off + 4 + 2 * SLOT
    (uid_len,) = struct.unpack_from("<H", data, uid_off)
    if not 0 < uid_len <= 254:
        raise VerificationError("format", f"{what}: user ID length {uid_len} is not in 1..254")
    return PublicKey(x, y, bytes(data[uid_off + 2 : uid_off + 2 + uid_len]))


@dataclass(frozen=True)
class Signature:
    usage: int
    algo: int
    r: int
    s: int


@dataclass(frozen=True)
class CaCert:
    """HRK / HSK certificate (``CHIP_ROOT_CERT_t``, 832 bytes; signed part ``[0, 576)``)."""

    raw: bytes
    version: int
    key_id: bytes
    certifying_id: bytes
    key_usage: int
    key: PublicKey
    r: int
    s: int

    @property
    def signed(self) -> bytes:
        return self.raw[:CA_SIGNED]

    @classmethod
    def parse(cls, raw: bytes, what: str) -> CaCert:
        if len(raw) != CA_CERT_SIZE:
            raise VerificationError("format", f"{what}: {len(raw)} bytes, expected {CA_CERT_SIZE}")
        version, key_id, certifying_id, usage = struct.unpack_from("<I16s16sI", raw, 0)
        require_zero(raw, 720, CA_CERT_SIZE, what)
        return cls(
            raw=bytes(raw),
            version=version,
            key_id=key_id,
            certifying_id=certifying_id,
            key_usage=usage,
            key=_public_key(raw, 64, what),
            r=le_slot(raw, 576, f"{what} signature r"),
            s=le_slot(raw, 648, f"{what} signature s"),
        )


@dataclass(frozen=True)
class CsvCert:
    """CEK / PEK certificate (``CSV_CERT_t``, 2084 bytes; signed part ``[0, 1044)``)."""

    raw: bytes
    version: int
    api_major: int
    api_minor: int
    usage: int
    algo: int
    key: PublicKey
    sid: bytes
    sigs: tuple[Signature, Signature]

    @property
    def signed(self) -> bytes:
        return self.raw[:CSV_SIGNED]

    @classmethod
    def parse(cls, raw: bytes, what: str) -> CsvCert:
        if len(raw) != CSV_CERT_SIZE:
            raise VerificationError("format", f"{what}: {len(raw)} bytes, expected {CSV_CERT_SIZE}")
        version, major, minor, usage, algo = struct.unpack_from("<IBBxxII", raw, 0)
        sigs = []
        for i, off in enumerate((1044, 1564), start=1):
            sig_usage, sig_algo = struct.unpack_from("<II", raw, off)
            r = s = 0
            if sig_algo in (ALGO_SM2_SA, ALGO_SM2_DH):
                r = le_slot(raw, off + 8, f"{what} sig{i} r")
                s = le_slot(raw, off + 8 + SLOT, f"{what} sig{i} s")
            elif sig_usage not in (0, USAGE_INVALID) or sig_algo or any(raw[off + 8 : off + 152]):
                raise VerificationError("format", f"{what}: signature slot {i} is not empty")
            require_zero(raw, off + 152, off + 520, what)
            sigs.append(Signature(sig_usage, sig_algo, r, s))
        return cls(
            raw=bytes(raw),
            version=version,
            api_major=major,
            api_minor=minor,
            usage=usage,
            algo=algo,
            key=_public_key(raw, 16, what),
            sid=bytes(raw[420:436]),
            sigs=(sigs[0], sigs[1]),
        )

    def signature_by(self, usage: int) -> Signature | None:
        """The SM2 signature slot made by a key of ``usage``, or None."""
        for sig in self.sigs:
            if sig.usage == usage and sig.algo == ALGO_SM2_SA:
                return sig
        return None


def xor_words(data: bytes, anonce: int) -> bytes:
    """``data`` with every 32-bit little-endian word XOR-ed with ``anonce`` (the anti-tamper
    mask; its own inverse)."""
    mask = anonce.to_bytes(4, "little")
    full = (mask * (len(data) // 4 + 1))[: len(data)]
    mixed = int.from_bytes(data, "little") ^ int.from_bytes(full, "little")
    return mixed.to_bytes(len(data), "little")


@dataclass(frozen=True)
class CsvReport:
    """A V1 CSV attestation report (``csv_attestation_report``, 2548 bytes), with de-masked
    copies of the masked fields. ``raw`` is the report as stored (masked)."""

    raw: bytes
    anonce: int
    user_pubkey_digest: bytes
    vm_id: bytes
    vm_version: bytes
    user_data: bytes
    mnonce: bytes
    measure: bytes
    policy: int
    sig_usage: int
    sig_algo: int
    r: int
    s: int
    pek_raw: bytes
    pek_masked: bool
    sn: bytes
    reserved2: bytes
    mac: bytes

    @property
    def signed(self) -> bytes:
        """The signed bytes ``[0, 180)`` as stored (masked): never de-mask before checking."""
        return self.raw[:REPORT_SIGNED]

    @property
    def mac_data(self) -> bytes:
        """``pek_cert || sn || reserved2`` as stored, the HMAC-SM3 input."""
        return self.raw[OFF_PEK:OFF_MAC]

    @property
    def chip_id(self) -> str:
        """The de-masked serial number without NUL padding."""
        return self.sn.rstrip(b"\0").decode("ascii")

    @classmethod
    def parse(cls, data: bytes) -> CsvReport:
        """Parse a report of 2548 bytes, or a 4096-byte page whose tail is zero."""
        if len(data) == REPORT_PAGE:
            if any(data[REPORT_SIZE:]):
                raise VerificationError(
                    "format", "CSV report page has non-zero bytes after the 2548-byte report"
                )
            data = data[:REPORT_SIZE]
        if len(data) != REPORT_SIZE:
            raise VerificationError(
                "format",
                f"CSV report is {len(data)} bytes, expected {REPORT_SIZE} (or a {REPORT_PAGE}-byte "
                "page); extended (V2) reports are not supported",
            )
        (anonce,) = struct.unpack_from("<I", data, OFF_ANONCE)
        head = xor_words(data[:OFF_ANONCE], anonce)
        policy, sig_usage, sig_algo = struct.unpack_from("<III", head, OFF_POLICY)
        stored_pek = data[OFF_PEK:OFF_SN]
        # The PEK is masked in a raw report and plain in re-exported ones (trustee, csv-rs):
        # its version word is 1 either way, so the stored first word tells which form it is.
        plain_first = stored_pek[:4]
        pek_masked = plain_first != b"\x01\0\0\0"
        pek_raw = xor_words(stored_pek, anonce) if pek_masked else stored_pek
        stored_sn = data[OFF_SN:OFF_RESERVED2]
        sn = xor_words(stored_sn, anonce) if pek_masked else stored_sn
        return cls(
            raw=bytes(data),
            anonce=anonce,
            user_pubkey_digest=head[0:32],
            vm_id=head[32:48],
            vm_version=head[48:64],
            user_data=head[OFF_USER_DATA:OFF_MNONCE],
            mnonce=head[OFF_MNONCE:OFF_MEASURE],
            measure=head[OFF_MEASURE:OFF_POLICY],
            policy=policy,
            sig_usage=sig_usage,
            sig_algo=sig_algo,
            r=le_slot(data, OFF_SIG, "report signature r"),
            s=le_slot(data, OFF_SIG + SLOT, "report signature s"),
            pek_raw=pek_raw,
            pek_masked=pek_masked,
            sn=sn,
            reserved2=bytes(data[OFF_RESERVED2:OFF_MAC]),
            mac=bytes(data[OFF_MAC:REPORT_SIZE]),
        )
