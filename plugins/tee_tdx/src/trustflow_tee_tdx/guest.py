"""Getting a quote from inside a TD, by every path Linux guests have:

1. **configfs-tsm** (``/sys/kernel/config/tsm/report``, Linux >= 6.7): the kernel asks the VMM;
2. **the QGS over vsock**: the TDREPORT from ``/dev/tdx_guest`` (``TDX_CMD_GET_REPORT0``, Linux
   >= 6.2), sent as a QGS ``GET_QUOTE_REQ`` to the Quote Generation Service on the host
   (vsock CID 2, port from ``/etc/tdx-attest.conf``), what Intel's ``libtdx_attest`` tries;
3. **``TDX_CMD_GET_QUOTE``**: the same QGS message through an ioctl that only out-of-tree
   ``tdx-guest`` drivers have (mainline answers ENOTTY).

:class:`QuotePaths` tries them in that order and names, per path, why it did not work; an
operator can pin one. Everything goes through small seams so tests run without a TD:
:class:`ConfigfsOps` (mkdir / read / write / rmdir on the configfs tree), an ``ioctl`` callable
with the signature of :func:`fcntl.ioctl`, and the QGS socket's family and address. All calls
block; the attester runs them in a worker thread. Kernel errors become
:class:`BackendUnavailable`; bad arguments :class:`InvalidInput`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import hmac
import os
import re
import secrets
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from trustflow_core.errors import BackendUnavailable, InvalidInput

CONFIGFS_ROOT = Path("/sys/kernel/config/tsm/report")
DEVICE = Path("/dev/tdx_guest")
#: Where ``libtdx_attest`` reads the QGS vsock port (``port = N``).
QGS_CONFIG = Path("/etc/tdx-attest.conf")
#: ``VMADDR_CID_HOST``: the QGS runs on the host.
VSOCK_CID_HOST = 2
REPORT_DATA_LEN = 64
TDREPORT_LEN = 1024
#: ``_IOWR('T', 1, struct tdx_report_req)``: report data in, TDREPORT out (upstream kernels).
TDX_CMD_GET_REPORT0 = 0xC4405401
#: ``_IOR('T', 4, struct tdx_quote_req)``: out-of-tree drivers / Intel libtdx_attest.
TDX_CMD_GET_QUOTE = 0x80105404
QUOTE_BUFFER_LEN = 4 * 4096
#: Largest QGS message libtdx_attest accepts (its 4-page buffer minus the headers).
QGS_MESSAGE_MAX = QUOTE_BUFFER_LEN - 24 - 4
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

    name = "configfs-tsm"

    def unavailable_reason(self) -> str | None:
        """Why this path cannot work here, without touching the kernel state; None = try it."""
        try:
            if self.root.is_dir():
                return None
        except OSError as exc:
            return f"cannot look at {self.root}: {exc}"
        return (
            f"{self.root} does not exist (needs Linux >= 6.7 with the tdx-guest configfs-tsm "
            "provider and configfs mounted at /sys/kernel/config)"
        )

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

    name = "TDX_CMD_GET_QUOTE ioctl"

    def __init__(self, path: Path = DEVICE, ioctl: Ioctl | None = None) -> None:
        import fcntl

        self.path = Path(path)
        self.ioctl = ioctl or fcntl.ioctl

    def unavailable_reason(self) -> str | None:
        """Why ``/dev/tdx_guest`` cannot be used here; None = try it."""
        try:
            if self.path.exists():
                return None
        except OSError as exc:
            return f"cannot look at {self.path}: {exc}"
        return f"{self.path} does not exist (needs Linux >= 6.2 with the tdx-guest driver)"

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
            problem = _os_error("TDX_CMD_GET_QUOTE", exc)
            if exc.errno == errno.ENOTTY:
                problem = BackendUnavailable(
                    f"{problem}: this kernel's tdx-guest driver has no GET_QUOTE (mainline "
                    "never had it); use configfs-tsm (Linux >= 6.7) or the QGS over vsock"
                )
            raise problem from exc
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


# ---- the Quote Generation Service over vsock ------------------------------------------------

_PORT_LINE = re.compile(r"\s*port\s*=\s*([0-9]{1,10})\s*")


def qgs_port(config: Path = QGS_CONFIG) -> int | None:
    """The QGS vsock port configured in ``config`` the way ``libtdx_attest`` reads it: the
    first ``port = N`` line (whitespace anywhere around, nothing else on the line; ``#`` lines
    are comments). None when the file is missing or names no valid port (1..2**32-1)."""
    try:
        text = config.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        match = _PORT_LINE.fullmatch(line)
        if match:
            port = int(match.group(1))
            return port if 0 < port <= 0xFFFFFFFF else None
    return None


def _recv_exactly(sock: socket.socket, size: int, what: str) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise BackendUnavailable(f"QGS closed the connection during {what}")
        data += chunk
    return bytes(data)


class QgsVsock:
    """Quotes from the Quote Generation Service: the TDREPORT from ``device``
    (``TDX_CMD_GET_REPORT0``), a ``GET_QUOTE_REQ`` sent as ``u32 big-endian length ||
    message``, the ``GET_QUOTE_RESP`` read back the same way.

    ``port`` is the QGS vsock port (None: not configured, the path is unavailable). The socket
    is a seam: ``family`` (default ``AF_VSOCK``) and ``address`` (default ``(2, port)``) let
    tests point it at a stand-in on a unix socket or 127.0.0.1.
    """

    name = "QGS over vsock"

    def __init__(
        self,
        device: TdxGuestDevice,
        port: int | None,
        *,
        config: Path = QGS_CONFIG,
        family: int | None = None,
        address: Any = None,
        timeout: float = 30.0,
    ) -> None:
        self.device = device
        self.port = port
        self.config = config
        self.family = family if family is not None else getattr(socket, "AF_VSOCK", -1)
        self.address = address if address is not None else (VSOCK_CID_HOST, port)
        self.timeout = timeout

    def unavailable_reason(self) -> str | None:
        """Why this path cannot work here (no port, no vsock, no device); None = try it."""
        if self.port is None:
            return f"no QGS port: {self.config} has no 'port = N' line (or does not exist)"
        if self.family == -1:
            return "this Python has no AF_VSOCK sockets"
        return self.device.unavailable_reason()

    def _connect(self) -> socket.socket:
        if self.family == -1:
            raise BackendUnavailable("this Python has no AF_VSOCK sockets")
        where = f"QGS at {self.address}"
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as exc:
            raise _os_error(f"creating a socket for the {where}", exc) from exc
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.address)
        except OSError as exc:
            sock.close()
            raise _os_error(f"connecting to the {where}", exc) from exc
        return sock

    def probe(self) -> str | None:
        """Whether the QGS accepts a connection (nothing is sent); None = it does."""
        reason = self.unavailable_reason()
        if reason is not None:
            return reason
        try:
            self._connect().close()
        except BackendUnavailable as exc:
            return str(exc)
        return None

    def get_quote(self, report_data: bytes) -> bytes:
        if self.port is None:
            raise BackendUnavailable(str(self.unavailable_reason()))
        tdreport = self.device.get_report(report_data)
        message = qgs_get_quote_request(tdreport)
        sock = self._connect()
        try:
            sock.sendall(struct.pack(">I", len(message)) + message)
            (length,) = struct.unpack(">I", _recv_exactly(sock, 4, "the response length"))
            if not 24 <= length <= QGS_MESSAGE_MAX:
                raise BackendUnavailable(f"QGS response length {length} is out of range")
            response = _recv_exactly(sock, length, "the response")
        except OSError as exc:
            raise _os_error(f"talking to the QGS at {self.address}", exc) from exc
        finally:
            sock.close()
        return qgs_quote_from_response(response)


# ---- trying every path ----------------------------------------------------------------------


class QuotePath(Protocol):
    """A :class:`QuoteSource` that can say why it cannot work without trying."""

    name: str

    def unavailable_reason(self) -> str | None: ...

    def get_quote(self, report_data: bytes) -> bytes: ...


@dataclass(frozen=True)
class Attempt:
    """One path tried (or skipped) for a quote: ``ok`` and, if not, why."""

    path: str
    ok: bool
    reason: str = ""


class QuotePaths:
    """Tries ``paths`` in order (configfs-tsm, QGS over vsock, ``TDX_CMD_GET_QUOTE``) and
    returns the first quote; a path that cannot work here is skipped with its reason. When
    none works, :class:`BackendUnavailable` lists every path with its reason. ``attempts``
    records the last call's paths. Bad report data (:class:`InvalidInput`) stops at once."""

    def __init__(self, paths: Sequence[QuotePath]) -> None:
        self.paths = list(paths)
        self.attempts: list[Attempt] = []

    def get_quote(self, report_data: bytes) -> bytes:
        _check_report_data(report_data)
        self.attempts = []
        for path in self.paths:
            reason = path.unavailable_reason()
            if reason is None:
                try:
                    quote = path.get_quote(report_data)
                except BackendUnavailable as exc:
                    reason = str(exc)
                else:
                    self.attempts.append(Attempt(path.name, True))
                    return quote
            self.attempts.append(Attempt(path.name, False, reason))
        raise BackendUnavailable(
            "no TDX quote path worked: " + "; ".join(f"{a.path}: {a.reason}" for a in self.attempts)
        )


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
