"""Upstream's data-capsule format ``v1`` (docs/compat.md#capsule-v1-format): incremental writer and
reader.

Used through the package API (:mod:`trustflow_core.capsule`: ``open_writer("v1", ...)``,
``encrypt_file(..., fmt="v1")``, format detection for readers).

Compatible with upstream ``cms_util encrypt-file`` / ``decrypt-file``, the Data Capsule Proxy
and TEEAPPS. All integers are little-endian::

    header (20 bytes):  u32 version = 1 | u32 schema = 1 | u64 block_count N | u32 block_len = 8192
    N blocks, each block_len bytes except the last (which may be shorter):
        u8 iv_len = 12  | IV, zero-padded to 32 bytes
        u8 tag_len = 16 | GCM tag, zero-padded to 32 bytes
        AES-GCM ciphertext of one plaintext chunk (at most 8192 - 66 = 8126 bytes), empty AAD

The key length selects the cipher: 16 bytes AES-128, 24 bytes AES-192, 32 bytes AES-256
(the C++ upstream accepts only 16 and 32; the Python upstream also takes 24). Other lengths
raise :class:`~trustflow_core.errors.InvalidInput`.

Memory use is bounded by one block (``block_len`` of the file, at most :data:`MAX_BLOCK_LEN`)
plus the size of the caller's reads, independent of the file size.

Writer
  Fresh random 12-byte IV per block, 16-byte tag, blocks of exactly ``8192`` bytes except the
  last; the file size is :func:`encrypted_size`. **Empty plaintext** is written as
  ``block_count = 1`` and one 66-byte block whose ciphertext is empty (just the GCM tag of
  nothing). Both upstream readers accept that file. We never write upstream Python's empty
  file (``block_count = 0`` plus one empty block, docs/compat.md#capsule-v1-empty-file), which
  upstream itself cannot read.

Reader
  The header is checked against the file length before any block is read, and a block's
  plaintext is released only after that block authenticated (the streaming functions may
  already have emitted earlier blocks when a later one fails; the package's ``decrypt_file``
  writes atomically, so it leaves nothing behind). Every failure raises
  :class:`~trustflow_core.errors.CapsuleFormatError` naming the problem:

  * the file must hold the 20-byte header; version and schema must be 1 (upstream readers skip
    both fields; we are stricter);
  * ``block_len`` must be at least 66 (the block header) and at most :data:`MAX_BLOCK_LEN`
    (upstream writers always use 8192);
  * the file length must match the header: ``(N-1)*block_len + 66 <= file_len - 20 <=
    N*block_len``. So whole blocks cut off the end (truncation at a block boundary) and
    appended blocks are detected; bytes appended to or cut from a short last block make that
    block fail authentication;
  * ``block_count = 0`` is accepted only in upstream Python's empty-file shape (exactly one
    66-byte block follows, which must authenticate as the empty plaintext): it decrypts to
    empty plaintext (docs/compat.md#capsule-v1-empty-file);
  * per block: ``iv_len`` must be 8..32 (the C++ upstream insists on 12; upstream Python
    accepts anything up to 32, but GCM in ``cryptography`` needs at least 8 bytes) and
    ``tag_len`` must be 16; the padding after IV and tag must be zero (both upstream writers
    write zeros; upstream readers do not look); a block is at least 66 bytes;
  * GCM failure -> ``block N failed authentication (wrong key or tampered data)``.

Limits of the format (docs/compat.md#capsule-v1-no-integrity): blocks carry no index and no AAD, so
**swapping or duplicating whole blocks of one file, or splicing blocks of two files encrypted with
the same key, is undetectable** by any reader; only per-block GCM protects the data. The header is
not authenticated either, but each of its fields is fixed or checked against the file length, and a
changed ``block_len`` misaligns the blocks so that GCM fails.
"""

from __future__ import annotations

import hmac
import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import CapsuleFormatError, InvalidInput
from ._io import check_key

HEADER = struct.Struct("<IIQI")
HEADER_LEN = HEADER.size  # 20
VERSION = 1
SCHEMA = 1
BLOCK_LEN = 0x2000
FIELD_LEN = 32
BLOCK_HEADER_LEN = 1 + FIELD_LEN + 1 + FIELD_LEN  # 66
CHUNK_LEN = BLOCK_LEN - BLOCK_HEADER_LEN  # 8126 plaintext bytes per block
IV_LEN = 12
TAG_LEN = 16
MIN_IV_LEN = 8
MAX_BLOCK_LEN = 1 << 20
_TAG_OFFSET = 1 + FIELD_LEN  # 33: tag_len byte


def _cipher(key: bytes) -> AESGCM:
    return AESGCM(check_key(key))


def block_count(plaintext_len: int) -> int:
    """Number of blocks our writer uses for ``plaintext_len`` bytes (at least 1)."""
    if plaintext_len < 0:
        raise InvalidInput(f"plaintext length must not be negative, got {plaintext_len}")
    return max(1, -(-plaintext_len // CHUNK_LEN))


def encrypted_size(plaintext_len: int) -> int:
    """Exact size of the file our writer produces for ``plaintext_len`` bytes."""
    return HEADER_LEN + BLOCK_HEADER_LEN * block_count(plaintext_len) + plaintext_len


class CapsuleEncryptor:
    """Incremental writer: :attr:`header` first, then what :meth:`update` and :meth:`finalize`
    return, in order. The total fed must equal ``plaintext_len`` (the header records the
    block count), else :class:`InvalidInput`."""

    def __init__(self, key: bytes, plaintext_len: int) -> None:
        self._aead = _cipher(key)
        self._blocks = block_count(plaintext_len)
        self._expected = plaintext_len
        self._fed = 0
        self._pending = bytearray()
        self._finalized = False
        self.header = HEADER.pack(VERSION, SCHEMA, self._blocks, BLOCK_LEN)

    def _block(self, chunk: bytes | bytearray) -> bytes:
        iv = secrets.token_bytes(IV_LEN)
        sealed = self._aead.encrypt(iv, chunk, None)
        ciphertext, tag = sealed[:-TAG_LEN], sealed[-TAG_LEN:]
        return b"".join(
            (
                bytes((IV_LEN,)),
                iv.ljust(FIELD_LEN, b"\0"),
                bytes((TAG_LEN,)),
                tag.ljust(FIELD_LEN, b"\0"),
                ciphertext,
            )
        )

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed plaintext; return the blocks completed so far (possibly ``b""``)."""
        if self._finalized:
            raise InvalidInput("encryptor already finalized")
        self._fed += len(data)
        if self._fed > self._expected:
            raise InvalidInput(f"plaintext is longer than the declared {self._expected} bytes")
        self._pending += data
        full = len(self._pending) - len(self._pending) % CHUNK_LEN
        out = b"".join(
            self._block(self._pending[i : i + CHUNK_LEN]) for i in range(0, full, CHUNK_LEN)
        )
        del self._pending[:full]
        return out

    def finalize(self) -> bytes:
        """Return the last, short block (or the single empty block for empty plaintext)."""
        if self._finalized:
            raise InvalidInput("encryptor already finalized")
        self._finalized = True
        if self._fed != self._expected:
            raise InvalidInput(
                f"plaintext ended after {self._fed} of the declared {self._expected} bytes"
            )
        if self._pending or self._expected == 0:
            return self._block(self._pending)
        return b""


class CapsuleDecryptor:
    """Incremental reader of a capsule of exactly ``file_len`` bytes: feed the file's bytes
    in order to :meth:`update`, which returns the plaintext of every block completed so far
    (each only after it authenticated); then call :meth:`finalize`, which raises if the
    input ended early."""

    def __init__(self, key: bytes, file_len: int) -> None:
        self._aead = _cipher(key)
        self._file_len = file_len
        if file_len < HEADER_LEN:
            raise CapsuleFormatError(
                f"header too short: the file has {file_len} bytes, the header needs {HEADER_LEN}"
            )
        self._fed = 0
        self._buffer = bytearray()
        self._header_done = False
        self._count = 0  # blocks in the file, known once the header is parsed
        self._block_len = 0
        self._last_len = 0
        self._next_index = 1
        self._finalized = False

    def _parse_header(self, header: bytes) -> None:
        version, schema, count, block_len = HEADER.unpack(header)
        if version != VERSION:
            raise CapsuleFormatError(f"unsupported version {version} (expected {VERSION})")
        if schema != SCHEMA:
            raise CapsuleFormatError(f"unsupported schema {schema} (expected {SCHEMA})")
        if block_len == 0:
            raise CapsuleFormatError("header block_len is 0")
        if block_len < BLOCK_HEADER_LEN:
            raise CapsuleFormatError(
                f"header block_len {block_len} is shorter than the {BLOCK_HEADER_LEN}-byte "
                "block header"
            )
        if block_len > MAX_BLOCK_LEN:
            raise CapsuleFormatError(
                f"header block_len {block_len} exceeds the supported maximum {MAX_BLOCK_LEN}"
            )
        body = self._file_len - HEADER_LEN
        if count == 0:
            # Upstream Python's empty file (docs/compat.md#capsule-v1-empty-file): block_count 0 and
            # one empty block.
            if body != BLOCK_HEADER_LEN:
                raise CapsuleFormatError(
                    f"header block_count is 0 but {body} bytes of block data follow "
                    f"(only the {BLOCK_HEADER_LEN}-byte empty block is allowed)"
                )
            count = 1
        elif not (count - 1) * block_len + BLOCK_HEADER_LEN <= body <= count * block_len:
            raise CapsuleFormatError(
                f"header block_count {count} with block_len {block_len} does not match the "
                f"{body} bytes of block data (file truncated or extended)"
            )
        self._count = count
        self._block_len = block_len
        self._last_len = body - (count - 1) * block_len
        self._header_done = True

    def _next_block_len(self) -> int:
        return self._last_len if self._next_index == self._count else self._block_len

    def _open_block(self, block: bytes) -> bytes:
        index = self._next_index
        iv_len = block[0]
        tag_len = block[_TAG_OFFSET]
        if not MIN_IV_LEN <= iv_len <= FIELD_LEN:
            raise CapsuleFormatError(
                f"block {index}: iv_len {iv_len} is outside {MIN_IV_LEN}..{FIELD_LEN}"
            )
        if tag_len != TAG_LEN:
            raise CapsuleFormatError(f"block {index}: tag_len {tag_len} is not {TAG_LEN}")
        iv_field = block[1:_TAG_OFFSET]
        tag_field = block[_TAG_OFFSET + 1 : BLOCK_HEADER_LEN]
        for name, field, used in (("IV", iv_field, iv_len), ("tag", tag_field, tag_len)):
            padding = field[used:]
            if not hmac.compare_digest(padding, bytes(len(padding))):
                raise CapsuleFormatError(f"block {index}: non-zero padding after the {name}")
        sealed = block[BLOCK_HEADER_LEN:] + tag_field[:tag_len]
        try:
            plaintext = self._aead.decrypt(iv_field[:iv_len], sealed, None)
        except InvalidTag:
            raise CapsuleFormatError(
                f"block {index} failed authentication (wrong key or tampered data)"
            ) from None
        self._next_index += 1
        return plaintext

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed the next bytes of the file; return the plaintext of completed blocks."""
        if self._finalized:
            raise CapsuleFormatError("decryptor already finalized")
        self._fed += len(data)
        if self._fed > self._file_len:
            raise CapsuleFormatError(
                f"input is longer than the declared file length {self._file_len}"
            )
        self._buffer += data
        out: list[bytes] = []
        if not self._header_done:
            if len(self._buffer) < HEADER_LEN:
                return b""
            self._parse_header(bytes(self._buffer[:HEADER_LEN]))
            del self._buffer[:HEADER_LEN]
        start = 0
        while self._next_index <= self._count:
            size = self._next_block_len()
            if len(self._buffer) - start < size:
                break
            out.append(self._open_block(bytes(self._buffer[start : start + size])))
            start += size
        del self._buffer[:start]
        return b"".join(out)

    def finalize(self) -> None:
        """Check that the whole file was fed and every block decrypted."""
        self._finalized = True
        if self._fed != self._file_len or not self._header_done:
            raise CapsuleFormatError(
                f"input ended after {self._fed} of the declared {self._file_len} bytes"
            )
        if self._next_index <= self._count:
            raise CapsuleFormatError(f"block {self._next_index} is missing")
