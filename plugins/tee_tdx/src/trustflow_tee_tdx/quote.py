"""Strict parser of Intel TDX DCAP quotes v4 and v5 (Intel's DCAP quote format).

:func:`parse_quote` bounds-checks every length field, accepts trailing bytes after the quote
(recorded in :attr:`Quote.trailing`) and raises :class:`VerificationError` with check
``"quote_format"`` for anything else it cannot accept. It verifies nothing cryptographic.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from trustflow_core.errors import VerificationError

HEADER_LEN = 48
TD10_BODY_LEN = 584
TD15_BODY_LEN = 648
QE_REPORT_LEN = 384
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
CERT_TYPE_QE_REPORT = 6
CERT_TYPE_PCK_CHAIN = 5
BODY_TYPES = {2: TD10_BODY_LEN, 3: TD15_BODY_LEN}


def _fail(message: str) -> VerificationError:
    return VerificationError("quote_format", message)


class _Reader:
    """Bounds-checked little-endian reads from a buffer."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.offset = offset

    def take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if size < 0 or end > len(self.data):
            raise _fail(f"truncated: {what} needs {size} bytes at offset {self.offset}")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])


@dataclass(frozen=True)
class TdBody:
    """The TD report body (TDX 1.0 fields; 1.5 adds ``tee_tcb_svn2`` and ``mr_servicetd``)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None

    @classmethod
    def parse(cls, raw: bytes) -> TdBody:
        """Parse a 584-byte (TDX 1.0) or 648-byte (TDX 1.5) body."""
        if len(raw) not in (TD10_BODY_LEN, TD15_BODY_LEN):
            raise _fail(f"TD report body is {len(raw)} bytes")
        sizes = (16, 48, 48, 8, 8, 8, 48, 48, 48, 48, 48, 48, 48, 48, 64)
        values, offset = [], 0
        for size in sizes:
            values.append(raw[offset : offset + size])
            offset += size
        extra: list[bytes | None] = [None, None]
        if len(raw) == TD15_BODY_LEN:
            extra = [raw[584:600], raw[600:648]]
        return cls(*values, *extra)

    @property
    def td_attributes_u64(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def xfam_u64(self) -> int:
        return int.from_bytes(self.xfam, "little")

    @property
    def debug(self) -> bool:
        """TDATTRIBUTES bit 0 (DEBUG): the host can read and write the TD
        (docs/compat.md#tdx-debug-bit)."""
        return bool(self.td_attributes_u64 & 1)


@dataclass(frozen=True)
class QeReport:
    """The fields of the QE's SGX REPORT BODY a verifier uses."""

    raw: bytes
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes

    @classmethod
    def parse(cls, raw: bytes) -> QeReport:
        if len(raw) != QE_REPORT_LEN:
            raise _fail(f"QE report is {len(raw)} bytes")
        return cls(
            raw=raw,
            cpu_svn=raw[0:16],
            misc_select=int.from_bytes(raw[16:20], "little"),
            attributes=raw[48:64],
            mr_enclave=raw[64:96],
            mr_signer=raw[128:160],
            isv_prod_id=int.from_bytes(raw[256:258], "little"),
            isv_svn=int.from_bytes(raw[258:260], "little"),
            report_data=raw[320:384],
        )


@dataclass(frozen=True)
class Quote:
    """A parsed TDX quote. ``signed`` is exactly the region the attestation key signed."""

    version: int
    body_type: int
    header: bytes
    body: TdBody
    signed: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    length: int
    trailing: int

    @property
    def qe_vendor_id(self) -> bytes:
        return self.header[12:28]


def looks_like_quote(data: bytes) -> bool:
    """Whether ``data`` starts like a TDX quote (header: version 4 or 5, tee_type 0x81); a
    structural check only, nothing is verified."""
    if len(data) < HEADER_LEN:
        return False
    version, _, tee_type = struct.unpack("<HHI", data[:8])
    return version in (4, 5) and tee_type == TEE_TYPE_TDX


def parse_quote(data: bytes) -> Quote:
    """Parse a TDX quote v4 or v5 from ``data`` (which may carry trailing bytes)."""
    if not isinstance(data, (bytes, bytearray)):
        raise _fail("quote must be bytes")
    data = bytes(data)
    reader = _Reader(data)
    header = reader.take(HEADER_LEN, "header")
    version, key_type, tee_type = struct.unpack("<HHI", header[:8])
    if version not in (4, 5):
        raise _fail(f"unsupported quote version {version} (expected 4 or 5)")
    if key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise _fail(f"attestation key type {key_type} is not ECDSA-256-with-P-256 (2)")
    if tee_type != TEE_TYPE_TDX:
        raise _fail(f"tee_type {tee_type:#x} is not TDX (0x81)")
    if version == 4:
        body_type, body_size = 2, TD10_BODY_LEN
    else:
        body_type = reader.u16("body type")
        body_size = reader.u32("body size")
        if BODY_TYPES.get(body_type) != body_size:
            raise _fail(f"v5 body type {body_type} with size {body_size} is not a TD report")
    body = TdBody.parse(reader.take(body_size, "TD report body"))
    signed = data[: reader.offset]
    sig_len = reader.u32("signature data length")
    sig = _Reader(reader.take(sig_len, "signature data"))
    signature = sig.take(64, "quote signature")
    attestation_key = sig.take(64, "attestation key")
    cert_type = sig.u16("certification data type")
    if cert_type != CERT_TYPE_QE_REPORT:
        raise _fail(f"certification data type {cert_type} (only 6, QE report, is supported)")
    cert = _Reader(sig.take(sig.u32("certification data size"), "certification data"))
    if sig.offset != sig_len:
        raise _fail(f"{sig_len - sig.offset} unexplained bytes in the signature data")
    qe_report = QeReport.parse(cert.take(QE_REPORT_LEN, "QE report"))
    qe_report_signature = cert.take(64, "QE report signature")
    qe_auth_data = cert.take(cert.u16("QE auth data length"), "QE auth data")
    inner_type = cert.u16("inner certification data type")
    if inner_type != CERT_TYPE_PCK_CHAIN:
        raise _fail(f"inner certification data type {inner_type} (only 5, PCK chain, is supported)")
    chain = cert.take(cert.u32("PCK chain size"), "PCK chain")
    if cert.offset != len(cert.data):
        raise _fail(f"{len(cert.data) - cert.offset} unexplained bytes in the certification data")
    return Quote(
        version=version,
        body_type=body_type,
        header=header,
        body=body,
        signed=signed,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=chain,
        length=reader.offset,
        trailing=len(data) - reader.offset,
    )
