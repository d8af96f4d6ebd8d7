"""Getting a quote from inside a TD: configfs-tsm first, the legacy
``/dev/tdx_guest`` ioctls second.

Both go through small seams so tests can run without a TD: :class:`ConfigfsOps` (mkdir / read /
write / rmdir on the configfs tree) and an ``ioctl`` callable with the signature of
:func:`fcntl.ioctl`. All calls block; the attester runs them in a worker thread. Kernel errors
become :class:`BackendUnavailable`; bad arguments :class:`InvalidInput`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import hmac
import os
import secrets
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from trustflow_core.errors import BackendUnavailable, InvalidInput

CONFIGFS_ROOT = Path("/sys/kernel/config/tsm/report")
DEVICE = Path("/dev/tdx_guest")
REPORT_DATA_LEN = 64
TDREPORT_LEN = 1024
#: ``_IOWR('T', 1, struct tdx_report_req)``: report data in, TDREPORT out (upstream kernels).
TDX_CMD_GET_REPORT0 = 0xC4405401
#: ``_IOR('T', 4, struct tdx_quote_req)``: out-of-tree drivers / Intel libtdx_attest.
TDX_CMD_GET_QUOTE = 0x80105404
QUOTE_BUFFER_LEN = 4 * 4096
QGS_GET_QUOTE_REQ, QGS_GET_QUOTE_RESP = 0, 1
_STATUS_TEXT = {
    0xFFFFFFFFFFFFFFFF: "still in flight",
    0x8000000000000000: "error",
    0x8000000000000001: "quote service unavailable",
}


def _check_report_data(report_data: bytes) -> None:
    if len(report_data) != REPORT_DATA_LEN:
        raise InvalidInput(f"TDX report data must be exactly 64 bytes, got {len(report_data)}")


def _os_error(what: str, exc: OSError) -> BackendUnavailable:
    name = errno.errorcode.get(exc.errno or 0, "?")
    return BackendUnavailable(f"{what} failed: {name} ({exc.strerror or exc})")


class QuoteSource(Protocol):
    """Anything that turns 64 bytes of report data into a raw TDX quote."""

    def get_quote(self, report_data: bytes) -> bytes: ...


# ---- configfs-tsm ---------------------------------------------------------------------------


class ConfigfsOps:
    """The file operations configfs-tsm needs (the real ones; tests subclass this)."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

    def write(self, path: Path, data: bytes) -> None:
        with open(path, "wb", buffering=0) as handle:
            handle.write(data)


class ConfigfsTsm:
    """Quotes through ``/sys/kernel/config/tsm/report`` with the race-free protocol: read
    ``generation``, write ``inblob``, expect ``generation + 1``, read ``outblob``, expect the
    generation unchanged; retry on a race. One private directory per request, removed after."""

    def __init__(
        self, root: Path = CONFIGFS_ROOT, ops: ConfigfsOps | None = None, *, attempts: int = 3
    ) -> None:
        self.root = Path(root)
        self.ops = ops or ConfigfsOps()
        self.attempts = attempts

    def _generation(self, entry: Path) -> int:
        text = self.ops.read(entry / "generation").strip()
        try:
            return int(text)
        except ValueError as exc:
            raise BackendUnavailable(f"configfs-tsm generation is not a number: {text!r}") from exc

    def get_quote(self, report_data: bytes) -> bytes:
        _check_report_data(report_data)
        entry = self.root / f"trustflow-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            self.ops.mkdir(entry)
        except OSError as exc:
            raise _os_error(f"creating configfs-tsm report {entry}", exc) from exc
        try:
            provider = self.ops.read(entry / "provider").strip()
            if provider != b"tdx_guest":
                raise BackendUnavailable(
                    f"configfs-tsm provider is {provider.decode(errors='replace')!r}, "
                    "not 'tdx_guest'"
                )
            for _ in range(self.attempts):
                before = self._generation(entry)
                self.ops.write(entry / "inblob", report_data)
                written = self._generation(entry)
                if written != before + 1:
                    continue  # another writer raced us
                quote = self.ops.read(entry / "outblob")
                if self._generation(entry) != written:
                    continue
                if not quote:
                    raise BackendUnavailable("configfs-tsm returned an empty outblob")
                return quote
            raise BackendUnavailable(
                f"configfs-tsm report {entry} kept changing under us ({self.attempts} attempts)"
            )
        except OSError as exc:
            raise _os_error(f"configfs-tsm report {entry}", exc) from exc
        finally:
            # Best effort: the kernel frees the entry with its last reference anyway.
            with contextlib.suppress(OSError):
                self.ops.rmdir(entry)


# ---- /dev/tdx_guest ---------------------------------------------------------------------------

Ioctl = Callable[..., Any]


def check_tdreport(tdreport: bytes, report_data: bytes) -> None:
    """The TDREPORT's two SHA-384 integrity hashes and its REPORTDATA (Intel TDX module ABI)."""
    if len(tdreport) != TDREPORT_LEN:
        raise BackendUnavailable(f"TDREPORT is {len(tdreport)} bytes, not 1024")
    if not (
        hmac.compare_digest(tdreport[32:80], hashlib.sha384(tdreport[256:495]).digest())
        and hmac.compare_digest(tdreport[80:128], hashlib.sha384(tdreport[512:1024]).digest())
    ):
        raise BackendUnavailable("TDREPORT integrity hashes do not match its contents")
    if not hmac.compare_digest(tdreport[128:192], report_data):
        raise BackendUnavailable("TDREPORT does not carry the requested report data")


def qgs_get_quote_request(tdreport: bytes) -> bytes:
    """A QGS GET_QUOTE_REQ message (qgs_msg_lib.h) for ``tdreport``, no key-id list."""
    body = struct.pack("<II", len(tdreport), 0) + tdreport
    header = struct.pack("<HHIII", 1, 1, QGS_GET_QUOTE_REQ, 16 + len(body), 0)
    return header + body


def qgs_quote_from_response(message: bytes) -> bytes:
    """The quote in a QGS GET_QUOTE_RESP message."""
    if len(message) < 24:
        raise BackendUnavailable("QGS response is truncated")
    major, _minor, kind, size, error = struct.unpack_from("<HHIII", message)
    if major != 1 or kind != QGS_GET_QUOTE_RESP or size != len(message):
        raise BackendUnavailable("QGS response header is not a GET_QUOTE_RESP")
    if error:
        raise BackendUnavailable(f"quote generation service error {error:#x}")
    id_size, quote_size = struct.unpack_from("<II", message, 16)
    if 24 + id_size + quote_size != len(message) or not quote_size:
        raise BackendUnavailable("QGS response sizes are inconsistent")
    return message[24 + id_size :]


class TdxGuestDevice:
    """Quotes through ``/dev/tdx_guest``: ``TDX_CMD_GET_REPORT0`` for the TDREPORT, then the
    out-of-tree ``TDX_CMD_GET_QUOTE`` with a QGS message in a ``tdx_quote_hdr`` buffer."""

    def __init__(self, path: Path = DEVICE, ioctl: Ioctl | None = None) -> None:
        import fcntl

        self.path = Path(path)
        self.ioctl = ioctl or fcntl.ioctl

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise _os_error(f"opening {self.path}", exc) from exc

    def get_report(self, report_data: bytes) -> bytes:
        """The 1024-byte TDREPORT binding ``report_data`` (checked, see :func:`check_tdreport`)."""
        _check_report_data(report_data)
        fd = self._open()
        try:
            request = bytearray(report_data + bytes(TDREPORT_LEN))
            self.ioctl(fd, TDX_CMD_GET_REPORT0, request, True)
        except OSError as exc:
            raise _os_error("TDX_CMD_GET_REPORT0", exc) from exc
        finally:
            os.close(fd)
        tdreport = bytes(request[REPORT_DATA_LEN:])
        check_tdreport(tdreport, report_data)
        return tdreport

    def get_quote(self, report_data: bytes) -> bytes:
        tdreport = self.get_report(report_data)
        message = qgs_get_quote_request(tdreport)
        data = struct.pack(">I", len(message)) + message
        buffer = ctypes.create_string_buffer(QUOTE_BUFFER_LEN)
        header = struct.pack("<QQII", 1, 0, len(data), 0)
        ctypes.memmove(buffer, header + data, len(header) + len(data))
        request = struct.pack("<QQ", ctypes.addressof(buffer), QUOTE_BUFFER_LEN)
        fd = self._open()
        try:
            self.ioctl(fd, TDX_CMD_GET_QUOTE, request)
        except OSError as exc:
            raise _os_error("TDX_CMD_GET_QUOTE", exc) from exc
        finally:
            os.close(fd)
        raw = buffer.raw
        version, status, _in_len, out_len = struct.unpack_from("<QQII", raw)
        if version != 1 or status != 0:
            text = _STATUS_TEXT.get(status, f"status {status:#x}")
            raise BackendUnavailable(f"TDX_CMD_GET_QUOTE: {text}")
        if not 4 <= out_len <= QUOTE_BUFFER_LEN - 24:
            raise BackendUnavailable(f"TDX_CMD_GET_QUOTE returned out_len {out_len}")
        (length,) = struct.unpack_from(">I", raw, 24)
        if length != out_len - 4:
            raise BackendUnavailable("TDX_CMD_GET_QUOTE: QGS message length mismatch")
        return qgs_quote_from_response(raw[28 : 28 + length])


def detect(configfs_root: Path = CONFIGFS_ROOT, device: Path = DEVICE) -> str | None:
    """Why this host is not a usable TD, or None. Never raises, never writes."""
    try:
        if device.exists():
            return None
        if configfs_root.is_dir():
            flags = Path("/proc/cpuinfo").read_text(errors="replace")
            if " tdx_guest" in flags:
                return None
            return f"{configfs_root} exists but the CPU does not report tdx_guest"
    except OSError as exc:
        return f"cannot probe for TDX: {exc}"
    return f"not inside an Intel TDX guest (no {device}, no {configfs_root})"
