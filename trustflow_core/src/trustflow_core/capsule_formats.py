"""Choosing between the data-capsule formats: ``v1`` (upstream's, :mod:`.capsule`) and ``v2``
(ours, authenticated, :mod:`.capsule_v2`).

Writers take the format by name (:data:`FORMATS`; ``v1`` is the upstream-compatible default).
Readers detect it from the first bytes: upstream files start with u32 LE version 1
(``01 00 00 00``), v2 files with :data:`~.capsule_v2.MAGIC`; anything else is refused with
:class:`~trustflow_core.errors.CapsuleFormatError`.

The file functions behave like those of :mod:`.capsule`: outputs are replaced atomically
(plaintext mode 0600, capsules 0644), so a failed decryption leaves nothing behind and an
in-place failure leaves the original untouched; source and destination must differ.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from . import capsule, capsule_v2
from .errors import CapsuleFormatError, InvalidInput

FORMATS = ("v1", "v2")
DEFAULT_FORMAT = "v1"
V1_PREFIX = struct.pack("<I", capsule.VERSION)
DETECT_LEN = len(capsule_v2.MAGIC)
"""Bytes a reader needs to tell the formats apart."""

Writer = capsule.CapsuleEncryptor | capsule_v2.V2Encryptor


def detect_format(head: bytes) -> str:
    """``"v1"`` or ``"v2"`` from the first :data:`DETECT_LEN` bytes of a capsule."""
    if head[:DETECT_LEN] == capsule_v2.MAGIC:
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
        self._inner: capsule.CapsuleDecryptor | capsule_v2.V2Decryptor | None = None
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
                self._inner = capsule_v2.V2Decryptor(self._key, self._file_len)
            else:
                self._inner = capsule.CapsuleDecryptor(self._key, self._file_len)
            data, self._head = bytes(self._head), bytearray()
        return self._inner.update(data)

    def finalize(self) -> None:
        """Check that the whole file was fed and authenticated."""
        if self._inner is None:
            raise CapsuleFormatError("input ended before the format could be detected")
        self._inner.finalize()


def open_reader(key: bytes, file_len: int) -> AutoDecryptor:
    """An auto-detecting reader of a ``file_len``-byte capsule."""
    return AutoDecryptor(key, file_len)


def open_writer(fmt: str, key: bytes, plaintext_len: int) -> Writer:
    """A writer of format ``fmt`` for exactly ``plaintext_len`` bytes: its ``header``, then
    what ``update`` and ``finalize`` return. Unknown formats raise :class:`InvalidInput`."""
    if fmt == "v1":
        return capsule.CapsuleEncryptor(key, plaintext_len)
    if fmt == "v2":
        return capsule_v2.V2Encryptor(key, plaintext_len)
    raise InvalidInput(f"unknown data capsule format {fmt!r}; expected one of {FORMATS}")


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: bytes,
    plaintext_len: int,
    *,
    fmt: str = DEFAULT_FORMAT,
    progress: capsule.Progress | None = None,
) -> int:
    """Encrypt exactly ``plaintext_len`` bytes of ``src`` into ``dst`` in format ``fmt``;
    return the bytes written. A source shorter or longer than declared raises InvalidInput."""
    writer = open_writer(fmt, key, plaintext_len)
    return capsule.write_capsule(writer, src, dst, plaintext_len, progress)


def decrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: bytes,
    file_len: int,
    *,
    progress: capsule.Progress | None = None,
) -> int:
    """Decrypt the capsule (either format) in ``src``, exactly ``file_len`` bytes, into
    ``dst``; return the plaintext length. On CapsuleFormatError the caller discards ``dst``."""
    return capsule.read_capsule(open_reader(key, file_len), src, dst, file_len, progress)


def encrypt_file(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    key: bytes,
    *,
    fmt: str = DEFAULT_FORMAT,
    progress: capsule.Progress | None = None,
) -> int:
    """Encrypt file ``src_path`` to ``dst_path`` in format ``fmt``; return the capsule size."""
    open_writer(fmt, key, 0)  # refuse a bad format or key before touching any file
    src, dst = Path(src_path), Path(dst_path)
    capsule.check_distinct(src, dst)
    return capsule.transform_file(
        src, dst, lambda s, d, n: encrypt_stream(s, d, key, n, fmt=fmt, progress=progress), 0o644
    )


def decrypt_file(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    key: bytes,
    *,
    progress: capsule.Progress | None = None,
) -> int:
    """Decrypt capsule ``src_path`` (either format) to ``dst_path``; return the plaintext
    length. On any error ``dst_path`` is left untouched and no partial file remains."""
    src, dst = Path(src_path), Path(dst_path)
    capsule.check_distinct(src, dst)
    return capsule.transform_file(
        src, dst, lambda s, d, n: decrypt_stream(s, d, key, n, progress=progress), 0o600
    )


def encrypt_file_inplace(
    path: str | os.PathLike[str],
    key: bytes,
    *,
    fmt: str = DEFAULT_FORMAT,
    progress: capsule.Progress | None = None,
) -> int:
    """Replace plaintext file ``path`` atomically by its capsule in format ``fmt``."""
    open_writer(fmt, key, 0)
    p = Path(path)
    return capsule.transform_file(
        p, p, lambda s, d, n: encrypt_stream(s, d, key, n, fmt=fmt, progress=progress), 0o644
    )


def decrypt_file_inplace(
    path: str | os.PathLike[str], key: bytes, *, progress: capsule.Progress | None = None
) -> int:
    """Replace capsule ``path`` (either format) atomically by its plaintext; on error the
    capsule stays as it was."""
    p = Path(path)
    return capsule.transform_file(
        p, p, lambda s, d, n: decrypt_stream(s, d, key, n, progress=progress), 0o600
    )
