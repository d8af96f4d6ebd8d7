"""The data-capsule file formats behind one reader/writer API.

Formats, one module each: ``v1`` (:mod:`.v1`, upstream's, what upstream ``cms_util``, the Data
Capsule Proxy and TEEAPPS read and write) and ``v2`` (:mod:`.v2`, ours, authenticated as a whole
file). Callers use this module only:

* writers take the format by name (:data:`FORMATS`; ``v1``, upstream-compatible, is the
  default): :func:`open_writer` (incremental), :func:`encrypt_stream`, :func:`encrypt_file`,
  :func:`encrypt_file_inplace`;
* readers detect the format from the first bytes (:func:`detect_format`: upstream files start
  with u32 LE version 1, ``01 00 00 00``, v2 files with :data:`.v2.MAGIC`; anything else is
  refused with :class:`~trustflow_core.errors.CapsuleFormatError`), or insist on one when given
  ``fmt``: :func:`open_reader` (incremental), :func:`decrypt_stream`, :func:`decrypt_file`,
  :func:`decrypt_file_inplace`.

Every format takes data keys of :data:`KEY_LENGTHS` bytes (other lengths raise
:class:`~trustflow_core.errors.InvalidInput`), releases plaintext only after it authenticated and
bounds memory by one block or segment plus the caller's reads. The file functions replace their
output atomically (plaintext mode 0600, capsules 0644), so a failed decryption leaves nothing
behind and an in-place failure leaves the original untouched; source and destination must differ.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from ..errors import CapsuleFormatError, InvalidInput
from . import v1, v2
from ._io import (
    KEY_LENGTHS,
    Progress,
    check_distinct,
    check_ended,
    read_capsule,
    read_exactly,
    transform_file,
    write_capsule,
)

__all__ = [
    "DEFAULT_FORMAT",
    "DETECT_LEN",
    "FORMATS",
    "KEY_LENGTHS",
    "AutoDecryptor",
    "Progress",
    "Reader",
    "Writer",
    "decrypt_file",
    "decrypt_file_inplace",
    "decrypt_stream",
    "detect_format",
    "encrypt_file",
    "encrypt_file_inplace",
    "encrypt_stream",
    "open_reader",
    "open_writer",
    "v1",
    "v2",
]

FORMATS = ("v1", "v2")
DEFAULT_FORMAT = "v1"
V1_PREFIX = struct.pack("<I", v1.VERSION)
DETECT_LEN = len(v2.MAGIC)
"""Bytes a reader needs to tell the formats apart."""

Writer = v1.CapsuleEncryptor | v2.V2Encryptor
"""An incremental writer: ``header``, then what ``update`` and ``finalize`` return, in order."""


def detect_format(head: bytes) -> str:
    """``"v1"`` or ``"v2"`` from the first :data:`DETECT_LEN` bytes of a capsule."""
    if head[:DETECT_LEN] == v2.MAGIC:
        return "v2"
    if len(head) >= DETECT_LEN and head[: len(V1_PREFIX)] == V1_PREFIX:
        return "v1"
    raise CapsuleFormatError("unknown data capsule format (neither v1 nor v2)")


class AutoDecryptor:
    """Incremental reader of a capsule of exactly ``file_len`` bytes in either format: the
    format is detected from the first bytes, then :meth:`update` / :meth:`finalize` delegate
    to that format's decryptor (:attr:`format` names it once known)."""

    def __init__(self, key: bytes, file_len: int) -> None:
        self._key, self._file_len = key, file_len
        self._head = bytearray()
        self._inner: v1.CapsuleDecryptor | v2.V2Decryptor | None = None
        self.format: str | None = None
        if file_len < DETECT_LEN:
            raise CapsuleFormatError(f"a {file_len}-byte file is no data capsule")

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed the next bytes of the file; return the plaintext of authenticated blocks."""
        if self._inner is None:
            self._head += data
            if len(self._head) < DETECT_LEN:
                return b""
            self.format = detect_format(bytes(self._head[:DETECT_LEN]))
            if self.format == "v2":
                self._inner = v2.V2Decryptor(self._key, self._file_len)
            else:
                self._inner = v1.CapsuleDecryptor(self._key, self._file_len)
            data, self._head = bytes(self._head), bytearray()
        return self._inner.update(data)

    def finalize(self) -> None:
        """Check that the whole file was fed and authenticated."""
        if self._inner is None:
            raise CapsuleFormatError("input ended before the format could be detected")
        self._inner.finalize()


Reader = AutoDecryptor | v1.CapsuleDecryptor | v2.V2Decryptor
"""An incremental reader: ``update``s (authenticated plaintext), then ``finalize``."""


def open_reader(key: bytes, file_len: int, fmt: str | None = None) -> Reader:
    """A reader of a ``file_len``-byte capsule: of format ``fmt``, or of either format
    (detected from the first bytes) when ``fmt`` is None. Feed the file's bytes in order to
    ``update`` (which returns authenticated plaintext), then call ``finalize`` (which raises
    if the input ended early). Unknown formats raise :class:`InvalidInput`."""
    if fmt is None:
        return AutoDecryptor(key, file_len)
    if fmt == "v1":
        return v1.CapsuleDecryptor(key, file_len)
    if fmt == "v2":
        return v2.V2Decryptor(key, file_len)
    raise InvalidInput(f"unknown data capsule format {fmt!r}; expected one of {FORMATS}")


def open_writer(fmt: str, key: bytes, plaintext_len: int) -> Writer:
    """A writer of format ``fmt`` for exactly ``plaintext_len`` bytes: its ``header``, then
    what ``update`` and ``finalize`` return. Unknown formats raise :class:`InvalidInput`."""
    if fmt == "v1":
        return v1.CapsuleEncryptor(key, plaintext_len)
    if fmt == "v2":
        return v2.V2Encryptor(key, plaintext_len)
    raise InvalidInput(f"unknown data capsule format {fmt!r}; expected one of {FORMATS}")


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: bytes,
    plaintext_len: int,
    *,
    fmt: str = DEFAULT_FORMAT,
    progress: Progress | None = None,
) -> int:
    """Encrypt exactly ``plaintext_len`` bytes of ``src`` into ``dst`` in format ``fmt``;
    return the bytes written. A source shorter or longer than declared raises InvalidInput."""
    if fmt != "v2":
        writer = open_writer(fmt, key, plaintext_len)
        return write_capsule(writer, src, dst, plaintext_len, progress)
    written = v2.encrypt_stream(key, src, dst, plaintext_len, progress=progress)
    check_ended(src, InvalidInput(f"source is longer than the declared {plaintext_len} bytes"))
    return written


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: bytes,
    file_len: int,
    *,
    fmt: str | None = None,
    progress: Progress | None = None,
) -> int:
    """Decrypt the capsule in ``src`` (exactly ``file_len`` bytes, of format ``fmt`` or, when
    None, of either format) into ``dst``; return the plaintext length. On CapsuleFormatError
    (the file does not open, or ``src`` is longer) the caller discards ``dst``."""
    if fmt not in (None, "v2"):  # v1, or an unknown name open_reader refuses
        return read_capsule(open_reader(key, file_len, fmt), src, dst, file_len, progress)
    head = b""
    if fmt is None:
        auto = AutoDecryptor(key, file_len)  # refuses what is too short to tell
        head = b"".join(read_exactly(src, DETECT_LEN, progress))
        if len(head) < DETECT_LEN:
            auto.update(head)
            auto.finalize()  # raises: the input ended before the format could be detected
        if detect_format(head) == "v1":
            reader = open_reader(key, file_len, "v1")
            return read_capsule(reader, src, dst, file_len, progress, head=head)
    total = v2.decrypt_stream(key, src, dst, file_len, head=head, progress=progress)
    check_ended(
        src, CapsuleFormatError(f"source is longer than the declared file length {file_len}")
    )
    return total


def encrypt_file(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    key: bytes,
    *,
    fmt: str = DEFAULT_FORMAT,
    progress: Progress | None = None,
) -> int:
    """Encrypt file ``src_path`` to ``dst_path`` in format ``fmt``; return the capsule size."""
    open_writer(fmt, key, 0)  # refuse a bad format or key before touching any file
    src, dst = Path(src_path), Path(dst_path)
    check_distinct(src, dst)
    return transform_file(
        src, dst, lambda s, d, n: encrypt_stream(s, d, key, n, fmt=fmt, progress=progress), 0o644
    )


def decrypt_file(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    key: bytes,
    *,
    fmt: str | None = None,
    progress: Progress | None = None,
) -> int:
    """Decrypt capsule ``src_path`` (of format ``fmt``, or either when None) to ``dst_path``;
    return the plaintext length. On any error ``dst_path`` is left untouched and no partial
    file remains."""
    src, dst = Path(src_path), Path(dst_path)
    check_distinct(src, dst)
    return transform_file(
        src, dst, lambda s, d, n: decrypt_stream(s, d, key, n, fmt=fmt, progress=progress), 0o600
    )


def encrypt_file_inplace(
    path: str | os.PathLike[str],
    key: bytes,
    *,
    fmt: str = DEFAULT_FORMAT,
    progress: Progress | None = None,
) -> int:
    """Replace plaintext file ``path`` atomically by its capsule in format ``fmt``."""
    open_writer(fmt, key, 0)
    p = Path(path)
    return transform_file(
        p, p, lambda s, d, n: encrypt_stream(s, d, key, n, fmt=fmt, progress=progress), 0o644
    )


def decrypt_file_inplace(
    path: str | os.PathLike[str],
    key: bytes,
    *,
    fmt: str | None = None,
    progress: Progress | None = None,
) -> int:
    """Replace capsule ``path`` (of format ``fmt``, or either when None) atomically by its
    plaintext; on error the capsule stays as it was."""
    p = Path(path)
    return transform_file(
        p, p, lambda s, d, n: decrypt_stream(s, d, key, n, fmt=fmt, progress=progress), 0o600
    )
