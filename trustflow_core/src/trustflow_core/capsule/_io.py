"""Format-independent plumbing of the capsule package: the key-length check, pumping a stream
through a format's incremental writer or reader, and atomic file transforms."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from ..errors import CapsuleFormatError, InvalidInput
from ..fileio import atomic_writer

KEY_LENGTHS = (16, 24, 32)
"""Data-key lengths in bytes (AES-128, AES-192, AES-256), the same for every format."""
IO_CHUNK = 8 * 8126
"""Bytes read from the source at a time (eight v1 blocks of plaintext)."""

Progress = Callable[[int], None]
"""Called with the number of source bytes consumed since the previous call."""


def check_key(key: bytes) -> bytes:
    """Return ``key`` if its length is one of :data:`KEY_LENGTHS`, else raise InvalidInput."""
    if len(key) not in KEY_LENGTHS:
        raise InvalidInput(f"data key must be 16, 24 or 32 bytes long, got {len(key)} bytes")
    return key


def fill(src: BinaryIO, view: memoryview, progress: Progress | None = None) -> int:
    """Read from ``src`` into ``view`` until it is full or ``src`` ends (no intermediate
    ``bytes``: ``readinto``); return the bytes read, fewer than ``len(view)`` only at the end."""
    got, want = 0, len(view)
    while got < want:
        n = src.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    if progress and got:
        progress(got)
    return got


def read_exactly(src: BinaryIO, length: int, progress: Progress | None) -> Iterator[bytes]:
    """Yield up to ``length`` bytes of ``src`` in chunks; the caller detects a short read."""
    remaining = length
    while remaining:
        data = src.read(min(IO_CHUNK, remaining))
        if not data:
            return
        remaining -= len(data)
        if progress:
            progress(len(data))
        yield data


class StreamWriter(Protocol):
    """An encryptor of some capsule format: ``header``, then ``update``s and ``finalize``."""

    @property
    def header(self) -> bytes: ...
    def update(self, data: bytes) -> bytes: ...
    def finalize(self) -> bytes: ...


class StreamReader(Protocol):
    """A decryptor of some capsule format: ``update``s, then ``finalize`` (which checks)."""

    def update(self, data: bytes) -> bytes: ...
    def finalize(self) -> object: ...


def write_capsule(
    writer: StreamWriter,
    src: BinaryIO,
    dst: BinaryIO,
    plaintext_len: int,
    progress: Progress | None = None,
) -> int:
    """Pump exactly ``plaintext_len`` bytes of ``src`` through ``writer`` into ``dst`` (any
    format); return the bytes written. A source shorter or longer than declared raises
    :class:`InvalidInput`."""
    written = dst.write(writer.header) or 0
    for data in read_exactly(src, plaintext_len, progress):
        written += dst.write(writer.update(data)) or 0
    written += dst.write(writer.finalize()) or 0
    if src.read(1):
        raise InvalidInput(f"source is longer than the declared {plaintext_len} bytes")
    return written


def read_capsule(
    reader: StreamReader,
    src: BinaryIO,
    dst: BinaryIO,
    file_len: int,
    progress: Progress | None = None,
    *,
    head: bytes = b"",
) -> int:
    """Pump exactly ``file_len`` bytes of capsule ``src`` (of which the caller already read
    the first ones, ``head``) through ``reader`` into ``dst`` (any format); return the
    plaintext length. :class:`CapsuleFormatError` when it does not open
    or ``src`` is longer; what was written to ``dst`` must then be discarded."""
    written = dst.write(reader.update(head)) or 0 if head else 0
    for data in read_exactly(src, file_len - len(head), progress):
        written += dst.write(reader.update(data)) or 0
    reader.finalize()
    check_ended(
        src, CapsuleFormatError(f"source is longer than the declared file length {file_len}")
    )
    return written


def check_ended(src: BinaryIO, error: Exception) -> None:
    """Raise ``error`` if ``src`` holds more bytes."""
    if src.read(1):
        raise error


def check_distinct(src_path: Path, dst_path: Path) -> None:
    """Raise :class:`InvalidInput` when both paths name the same file (also via links)."""
    same = src_path.resolve() == dst_path.resolve()
    if not same and dst_path.exists():
        same = os.path.samefile(src_path, dst_path)
    if same:
        raise InvalidInput(
            f"source and destination are the same file ({src_path}); "
            "use the in-place variant to replace a file"
        )


def transform_file(
    src_path: Path,
    dst_path: Path,
    run: Callable[[BinaryIO, BinaryIO, int], int],
    mode: int,
) -> int:
    """Run ``run(src, dst, source_size)`` from ``src_path`` into an atomic writer for
    ``dst_path`` created with ``mode``; nothing is left at ``dst_path`` if it raises."""
    with open(src_path, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        with atomic_writer(dst_path, mode=mode) as dst:
            return run(src, dst, size)
