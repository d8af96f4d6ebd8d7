"""Streaming transforms between a source and a sink, with memory bounded by one chunk plus one
capsule block or segment whatever the file size. CPU work (AES-GCM) and file I/O run in worker
threads so the event loop keeps serving other requests.

Two paths:

* **local file to local file** (:func:`run_local`): when the source backend hands out a local
  file (:meth:`~trustflow_core.storage.Storage.open_file`), the whole file is read, transformed,
  written and fsynced in *one* worker thread: v2 with ``readinto`` and ``decrypt_into`` /
  ``encrypt_into`` into one buffer pair per file, v1 through its incremental reader/writer,
  unchanged copies with ``copy_file_range`` in the kernel. No event-loop hop per chunk. The
  output's write-back to disk starts every few MiB (:class:`EarlyWriteback`), so the disk
  works while the file is being transformed and the closing fsync is short.
  Cancelling the caller stops the thread at its next chunk and waits for it.
* **streams** (:func:`transformed`, :func:`write_file`): chunks of an object store (or into
  one), each chunk's transform and write in a worker thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import sys
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, BinaryIO, Protocol

from ...errors import CapsuleFormatError, InvalidInput

if TYPE_CHECKING:
    from prometheus_client import Counter

    from ...storage import Storage

Progress = Callable[[int], None]
Job = Callable[[BinaryIO, BinaryIO, int, Progress], int]
"""A blocking transform: ``job(src, dst, source_size, progress)`` returns the bytes written."""
_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)
COPY_CHUNK = 8 << 20
"""Bytes per ``copy_file_range`` call (the cancellation check runs between calls)."""


class Transform(Protocol):
    """What a capsule encryptor/decryptor offers: incremental ``update`` and a final call."""

    def update(self, data: bytes) -> bytes: ...


def decrypting(key: bytes, file_len: int) -> Callable[[], tuple[Transform, bytes, Callable]]:
    """A factory of (decryptor, prologue, finish) for a capsule of ``file_len`` bytes; the
    reader auto-detects the upstream and v2 formats."""
    from ...capsule import open_reader

    def make() -> tuple[Transform, bytes, Callable]:
        reader = open_reader(key, file_len)
        return reader, b"", reader.finalize

    return make


def encrypting(key: bytes, plaintext_len: int, fmt: str) -> Callable[[], tuple]:
    """A factory of (encryptor, header, finish) writing format ``fmt`` (``v1`` or ``v2``)."""
    from ...capsule import open_writer

    def make() -> tuple[Transform, bytes, Callable]:
        writer = open_writer(fmt, key, plaintext_len)
        return writer, writer.header, writer.finalize

    return make


def copying() -> tuple[Transform, bytes, Callable]:
    class _Same:
        def update(self, data: bytes) -> bytes:
            return bytes(data)

    return _Same(), b"", lambda: b""


async def transformed(
    source: AsyncIterable[bytes],
    make: Callable[[], tuple[Transform, bytes, Callable]],
) -> AsyncIterator[bytes]:
    """Yield the transform of ``source``: prologue, ``update`` of each chunk (in a worker
    thread), then what ``finish`` returns (``None`` counts as nothing)."""
    transform, prologue, finish = make()
    if prologue:
        yield prologue
    async for chunk in source:
        out = await asyncio.to_thread(transform.update, chunk)
        if out:
            yield out
    tail = finish()
    if tail:
        yield tail


async def write_file(out: BinaryIO, chunks: AsyncIterable[bytes]) -> int:
    """Write ``chunks`` to ``out`` (a new staged file), fsync and close it; return its size.
    The caller removes the file on failure (it lives in staging)."""
    size = 0
    with out:
        async for chunk in chunks:
            await asyncio.to_thread(out.write, chunk)
            size += len(chunk)
        await asyncio.to_thread(out.flush)
        await asyncio.to_thread(os.fsync, out.fileno())
    return size


def decrypt_job(key: bytes) -> Job:
    """Decrypt a capsule of either format (detected) of exactly the listed size."""
    from ...capsule import decrypt_stream

    def job(src: BinaryIO, dst: BinaryIO, size: int, progress: Progress) -> int:
        return decrypt_stream(src, dst, key, size, progress=progress)

    return job


def encrypt_job(key: bytes, fmt: str) -> Job:
    """Encrypt exactly the listed size into format ``fmt`` (a source that changed size fails)."""
    from ...capsule import encrypt_stream

    def job(src: BinaryIO, dst: BinaryIO, size: int, progress: Progress) -> int:
        return encrypt_stream(src, dst, key, size, fmt=fmt, progress=progress)

    return job


def copy_job(src: BinaryIO, dst: BinaryIO, size: int, progress: Progress) -> int:
    """Copy ``src`` to its end into ``dst`` (like the stream path: the whole file as it is
    when read) with ``copy_file_range``, in the kernel; a file system that cannot do it gets a
    ``readinto``/``write`` loop. ``src``/``dst`` must be unread/unwritten."""
    in_fd, out_fd = src.fileno(), dst.fileno()
    total = 0
    while True:
        try:
            n = os.copy_file_range(in_fd, out_fd, COPY_CHUNK)
        except OSError as exc:
            if total or exc.errno not in _NO_KERNEL_COPY:
                raise
            return _copy_loop(src, dst, progress)
        if not n:
            return total
        total += n
        progress(n)


def _copy_loop(src: BinaryIO, dst: BinaryIO, progress: Progress) -> int:
    view = memoryview(bytearray(1 << 20))
    total = 0
    while n := src.readinto(view):  # type: ignore[attr-defined]
        dst.write(view[:n])
        total += n
        progress(n)
    return total


WRITEBACK_CHUNK = 8 << 20
"""Bytes written to a local output between two requests to start their write-back."""
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>


def _writeback_starter() -> Callable[[int, int, int], object] | None:
    """``start(fd, offset, length)``: ask Linux to start writing the range back to disk now
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``: asynchronous, the pages stay cached); None
    where the call is not available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int

    def start(fd: int, offset: int, length: int) -> object:
        return call(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # a hint: failures ignored

    return start


_START_WRITEBACK = _writeback_starter()


class EarlyWriteback:
    """A new output file whose write-back starts every :data:`WRITEBACK_CHUNK` bytes, as soon
    as they are written, so the disk writes while the proxy reads and transforms the rest and
    the closing fsync waits for the last chunk only, not for the whole file. The written bytes
    and their order are unchanged (a plain pass-through where the call is unavailable). Offsets
    count from where the file was when wrapped (a new, empty file)."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._fd = file.fileno()
        self._written = 0
        self._started = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = self._file.write(data) or 0
        self._written += n
        if _START_WRITEBACK and self._written - self._started >= WRITEBACK_CHUNK:
            self._file.flush()
            _START_WRITEBACK(self._fd, self._started, self._written - self._started)
            self._started = self._written
        return n

    def fileno(self) -> int:
        return self._fd

    def flush(self) -> None:
        self._file.flush()


class _Stopped(Exception):
    """The caller was cancelled: the worker thread gives up at its next chunk."""


async def run_local(
    storage: Storage,
    uri: str,
    job: Job,
    dst: BinaryIO,
    size: int,
    counters: tuple[Counter, Counter],
) -> bool:
    """Run ``job`` from ``storage``'s local file ``uri`` (of listed ``size``) into ``dst`` (a
    new staged file, which is then flushed, fsynced and closed, also on errors) in one worker
    thread, counting bytes read and written on ``counters``. Return False, having done nothing
    (``dst`` stays open), when the backend offers no local file. If the caller is cancelled,
    the thread stops at its next chunk and is waited for before the cancellation goes on
    (the caller removes the staged file)."""
    read, written = counters
    stop = threading.Event()

    def progress(n: int) -> None:
        if stop.is_set():
            raise _Stopped
        read.inc(n)

    def work() -> bool:
        try:
            src = storage.open_file(uri)
        except BaseException:
            dst.close()
            raise
        if src is None:
            return False
        with dst, src:
            written.inc(job(src, EarlyWriteback(dst), size, progress))  # type: ignore[arg-type]
            dst.flush()
            os.fsync(dst.fileno())
        return True

    future = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait({future})
        if not future.cancelled():
            future.exception()  # retrieved: the cancellation is what the caller sees
        raise


def check_length(actual: int, expected: int, what: str) -> None:
    if actual != expected:
        raise InvalidInput(f"{what} changed size while being read ({expected} -> {actual} bytes)")


__all__ = [
    "CapsuleFormatError",
    "check_length",
    "copy_job",
    "copying",
    "decrypt_job",
    "decrypting",
    "encrypt_job",
    "encrypting",
    "run_local",
    "transformed",
    "write_file",
]
