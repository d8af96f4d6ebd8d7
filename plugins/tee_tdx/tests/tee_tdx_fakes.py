"""Fakes of the TD guest kernel interfaces (configfs-tsm tree, /dev/tdx_guest ioctls), of the
host's Quote Generation Service (real framing, on 127.0.0.1) and of a PCCS, built on the real
test vectors. Not a test module."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote as urlquote

from aiohttp import web

from trustflow_tee_tdx import certs, guest
from trustflow_tee_tdx.collateral import Collateral
from trustflow_tee_tdx.quote import parse_quote


def quote_with_report_data(quote: bytes, report_data: bytes) -> bytes:
    """``quote`` with its REPORTDATA replaced, as a QE would produce for ``report_data`` (the
    signature no longer verifies: the fake has no Intel keys)."""
    parsed = parse_quote(quote)
    offset = len(parsed.signed) - (648 if parsed.body.tee_tcb_svn2 is not None else 584) + 520
    return quote[:offset] + report_data + quote[offset + 64 :]


class FakeConfigfs(guest.ConfigfsOps):
    """A directory laid out like ``/sys/kernel/config/tsm/report``: ``mkdir`` creates the
    attribute files, writing ``inblob`` bumps ``generation``, reading ``outblob`` returns the
    template quote carrying the inblob as REPORTDATA (or the template as is, ``splice=False``)."""

    def __init__(self, root: Path, quote: bytes) -> None:
        self.root = root
        self.quote = quote
        self.provider = b"tdx_guest\n"
        self.splice = True
        self.races = 0  # how many inblob writes get an extra generation bump
        self.outblob: bytes | None = None
        self.inblobs: list[bytes] = []
        self.removed: list[Path] = []
        root.mkdir(parents=True, exist_ok=True)

    def mkdir(self, path: Path) -> None:
        assert path.parent == self.root
        os.mkdir(path)
        (path / "provider").write_bytes(self.provider)
        (path / "generation").write_bytes(b"0\n")
        for name in ("inblob", "outblob", "auxblob", "privlevel_floor"):
            (path / name).write_bytes(b"")

    def rmdir(self, path: Path) -> None:
        for child in path.iterdir():
            child.unlink()
        os.rmdir(path)
        self.removed.append(path)

    def _bump(self, path: Path, by: int) -> None:
        gen = path / "generation"
        gen.write_bytes(f"{int(gen.read_bytes()) + by}\n".encode())

    def write(self, path: Path, data: bytes) -> None:
        if path.name == "inblob":
            if len(data) != 64:  # TDX wants exactly 64 bytes
                raise OSError(errno.EINVAL, "Invalid argument")
            self.inblobs.append(data)
            path.write_bytes(data)
            self._bump(path.parent, 1)
            if self.races:
                self.races -= 1
                self._bump(path.parent, 1)
            return
        raise OSError(errno.EACCES, "Permission denied")

    def read(self, path: Path) -> bytes:
        if path.name == "outblob":
            if self.outblob is not None:
                return self.outblob
            inblob = (path.parent / "inblob").read_bytes()
            if not self.splice:
                return self.quote
            return quote_with_report_data(self.quote, inblob) + bytes(64)  # kernel padding
        return path.read_bytes()


class FakeTdxIoctl:
    """``fcntl.ioctl`` of ``/dev/tdx_guest``: GET_REPORT0 returns the real TDREPORT vector with
    the caller's report data; GET_QUOTE answers a QGS GET_QUOTE_REQ with the template quote."""

    def __init__(self, tdreport: bytes, quote: bytes) -> None:
        self.tdreport = tdreport
        self.quote = quote
        self.requests: list[int] = []
        self.status = 0
        self.corrupt_report = False
        #: A mainline driver: GET_REPORT0 only, GET_QUOTE is ENOTTY.
        self.mainline = False

    def __call__(self, fd: int, request: int, arg, mutate: bool = True) -> int:
        self.requests.append(request)
        if request == guest.TDX_CMD_GET_REPORT0:
            assert isinstance(arg, bytearray) and len(arg) == 1088 and mutate
            report = bytearray(self.tdreport)
            report[128:192] = arg[:64]
            if self.corrupt_report:
                report[600] ^= 1
            arg[64:] = report
            return 0
        if request == guest.TDX_CMD_GET_QUOTE and not self.mainline:
            address, length = struct.unpack("<QQ", arg)
            raw = (ctypes.c_char * length).from_address(address).raw
            version, _status, in_len, _out = struct.unpack_from("<QQII", raw)
            assert version == 1
            (msg_len,) = struct.unpack_from(">I", raw, 24)
            assert msg_len == in_len - 4
            message = raw[28 : 28 + msg_len]
            _, _, kind, size, _ = struct.unpack_from("<HHIII", message)
            assert kind == guest.QGS_GET_QUOTE_REQ and size == len(message)
            report_size, id_size = struct.unpack_from("<II", message, 16)
            assert id_size == 0
            tdreport = message[24 : 24 + report_size]
            quote = quote_with_report_data(self.quote, tdreport[128:192])
            body = struct.pack("<II", 0, len(quote)) + quote
            response = struct.pack("<HHIII", 1, 1, guest.QGS_GET_QUOTE_RESP, 16 + len(body), 0)
            response += body
            out = struct.pack(">I", len(response)) + response
            header = struct.pack("<QQII", 1, self.status, in_len, len(out))
            ctypes.memmove(address, header + out, len(header) + len(out))
            return 0
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")


def qgs_response(quote: bytes, error_code: int = 0) -> bytes:
    """A QGS GET_QUOTE_RESP message (qgs_msg_lib.h layout) carrying ``quote``."""
    body = struct.pack("<II", 0, len(quote)) + quote
    return struct.pack("<HHIII", 1, 1, guest.QGS_GET_QUOTE_RESP, 16 + len(body), error_code) + body


class QgsStandIn:
    """The host's Quote Generation Service as ``libtdx_attest`` talks to it: reads ``u32
    big-endian length || GET_QUOTE_REQ``, checks the message, answers ``u32 length ||
    GET_QUOTE_RESP`` with the template quote carrying the TDREPORT's REPORTDATA. ``mode``
    makes it misbehave: ``"error"`` (error code in the header), ``"hang_up"`` (closes after
    the request), ``"huge"`` (announces an oversized response)."""

    def __init__(self, quote: bytes) -> None:
        self.quote = quote
        self.mode = "ok"
        self.requests: list[bytes] = []
        self.probes = 0

    def answer(self, message: bytes) -> bytes:
        major, minor, kind, size, error = struct.unpack_from("<HHIII", message)
        assert (major, minor, kind, error) == (1, 1, guest.QGS_GET_QUOTE_REQ, 0)
        assert size == len(message)
        report_size, id_size = struct.unpack_from("<II", message, 16)
        assert report_size == 1024 and id_size == 0 and len(message) == 24 + 1024
        tdreport = message[24:]
        self.requests.append(tdreport)
        quote = quote_with_report_data(self.quote, tdreport[128:192])
        return qgs_response(quote, 0x12 if self.mode == "error" else 0)

    def handle(self, conn: socket.socket) -> None:
        header = conn.recv(4, socket.MSG_WAITALL)
        if len(header) < 4:  # a reachability probe: connected and closed
            self.probes += 1
            return
        (length,) = struct.unpack(">I", header)
        message = b""
        while len(message) < length:
            message += conn.recv(length - len(message))
        if self.mode == "hang_up":
            return
        if self.mode == "huge":
            conn.sendall(struct.pack(">I", 1 << 20))
            return
        response = self.answer(message)
        conn.sendall(struct.pack(">I", len(response)) + response)


@contextlib.contextmanager
def serve_qgs(fake: QgsStandIn) -> Iterator[tuple[str, int]]:
    """Run ``fake`` on 127.0.0.1 (free port) in a thread; yield its address."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            fake.handle(self.request)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _der(crl: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return certs.load_crl(crl, "crl").public_bytes(Encoding.DER)


class FakePccs:
    """Serves one collateral set like PCS; records requests; can fail or stall."""

    def __init__(self, collateral: Collateral) -> None:
        self.c = collateral
        self.paths: list[str] = []
        self.fail_with: int | None = None
        self.stall = 0.0
        self.garbage = False
        self.release = asyncio.Event()

    def fmspc(self) -> str:
        return json.loads(self.c.tcb_info)["fmspc"]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path_qs)
        if self.stall:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.release.wait(), self.stall)
        if self.fail_with:
            return web.Response(status=self.fail_with)
        c, path = self.c, request.path
        if self.garbage:
            return web.Response(body=b'{"tcbInfo": nope', headers={"TCB-Info-Issuer-Chain": "x"})
        if path == "/tdx/certification/v4/tcb":
            if request.query.get("fmspc", "").upper() != self.fmspc().upper():
                return web.Response(status=404)
            body = b'{"tcbInfo":' + c.tcb_info + b',"signature":"'
            body += c.tcb_info_signature.hex().encode() + b'"}'
            chain = urlquote(c.tcb_info_issuer_chain)
            return web.Response(body=body, headers={"TCB-Info-Issuer-Chain": chain})
        if path == "/tdx/certification/v4/qe/identity":
            body = b'{"enclaveIdentity":' + c.qe_identity + b',"signature":"'
            body += c.qe_identity_signature.hex().encode() + b'"}'
            chain = urlquote(c.qe_identity_issuer_chain)
            return web.Response(body=body, headers={"SGX-Enclave-Identity-Issuer-Chain": chain})
        if path == "/sgx/certification/v4/pckcrl" and request.query.get("ca") == "platform":
            chain = urlquote(c.pck_crl_issuer_chain)
            return web.Response(body=_der(c.pck_crl), headers={"SGX-PCK-CRL-Issuer-Chain": chain})
        if path == "/sgx/certification/v4/rootcacrl":
            return web.Response(body=_der(c.root_ca_crl))
        return web.Response(status=404)


@contextlib.asynccontextmanager
async def serve_pccs(fake: FakePccs):
    """Run ``fake`` on 127.0.0.1 (free port); yield its base URL."""
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        fake.release.set()
        await runner.cleanup()
