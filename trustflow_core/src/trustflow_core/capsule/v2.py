"""The authenticated data-capsule format ``v2`` (ours): streaming writer and reader.

Upstream's format (``v1``, :mod:`trustflow_core.capsule.v1`) cannot detect blocks reordered,
dropped, duplicated, spliced from another file, or the file truncated at a block boundary
(docs/compat.md#capsule-v1-no-integrity). ``v2`` is the segmented streaming-AEAD construction of
Tink's ``AesGcmHkdfStreaming`` (nOAE, Hoang et al. 2015) with our framing::

    header (56 bytes): magic "TFCAPS\\x00\\x02" | u32 segment_len | u64 plaintext_len |
                       32-byte random salt | 4 reserved zero bytes   (integers big-endian)
    segments i = 0..n-1: AES-GCM(subkey, nonce_i, chunk_i, aad = header) = ciphertext || tag
      subkey  = HKDF-SHA256(ikm = data key, salt, info = "trustflow data capsule v2"),
                as long as the data key (16, 24 or 32 bytes)
      nonce_i = u64 segment index || u32 final flag (1 on the last segment, else 0)
      every segment but the last is exactly ``segment_len`` bytes of ciphertext+tag, the first
      one counting the header too (so segment boundaries fall on multiples of segment_len:
      aligned reads decrypt without copying); the last holds the rest (at least the tag)

The header is authenticated as AAD of every segment; the index and final flag in the nonce
make reordering, dropping and truncation fail authentication; the per-file salt makes segments
of another file (same data key) fail. The file length must equal what ``plaintext_len`` and
``segment_len`` give (:func:`v2_size`) before any segment is opened. A segment's plaintext is
released only after it authenticated; memory is bounded by one segment (at most
:data:`MAX_SEGMENT_LEN`) plus the caller's reads. Every reader failure raises
:class:`~trustflow_core.errors.CapsuleFormatError` naming the problem; bad writer use or a
wrong key length raises :class:`~trustflow_core.errors.InvalidInput`.

Format detection, streaming and file-level functions for both formats: the package API,
:mod:`trustflow_core.capsule`.
"""

from __future__ import annotations

import secrets
import struct
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import CapsuleFormatError, InvalidInput
from ._io import Progress, check_key, fill

MAGIC = b"TFCAPS\x00\x02"
HEADER = struct.Struct(">8sIQ32s4s")
HEADER_LEN = HEADER.size  # 56
TAG_LEN = 16
SEGMENT_LEN = 1 << 20
MIN_SEGMENT_LEN = HEADER_LEN + TAG_LEN + 1
MAX_SEGMENT_LEN = 1 << 24
INFO = b"trustflow data capsule v2"

Buffer = bytes | bytearray | memoryview


def _subkey(key: bytes, salt: bytes) -> AESGCM:
    check_key(key)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=len(key), salt=salt, info=INFO)
    return AESGCM(hkdf.derive(key))


def _layout(plaintext_len: int, segment_len: int) -> tuple[int, int, int]:
    """``(segments, plaintext bytes of the first segment, of the others)`` (all but the last
    are full)."""
    first = segment_len - HEADER_LEN - TAG_LEN
    rest = segment_len - TAG_LEN
    if plaintext_len <= first:
        return 1, first, rest
    return 1 + -(-(plaintext_len - first) // rest), first, rest


def _nonce(index: int, final: bool) -> bytes:
    return struct.pack(">QI", index, 1 if final else 0)


def v2_size(plaintext_len: int, segment_len: int = SEGMENT_LEN) -> int:
    """Exact size of a v2 file for ``plaintext_len`` bytes."""
    count, _, _ = _layout(plaintext_len, segment_len)
    return HEADER_LEN + plaintext_len + TAG_LEN * count


class V2Encryptor:
    """Incremental v2 writer: :attr:`header`, then :meth:`update` outputs, then
    :meth:`finalize`. Exactly ``plaintext_len`` bytes must be fed."""

    def __init__(self, key: bytes, plaintext_len: int, segment_len: int = SEGMENT_LEN) -> None:
        if plaintext_len < 0:
            raise InvalidInput(f"plaintext length must not be negative, got {plaintext_len}")
        if not MIN_SEGMENT_LEN <= segment_len <= MAX_SEGMENT_LEN:
            raise InvalidInput(f"segment length {segment_len} is out of range")
        salt = secrets.token_bytes(32)
        self.header = HEADER.pack(MAGIC, segment_len, plaintext_len, salt, bytes(4))
        self._aead = _subkey(key, salt)
        self._count, self._first, self._rest = _layout(plaintext_len, segment_len)
        self._expected = plaintext_len
        self._fed = 0
        self._index = 0
        self._pending = bytearray()
        self._done = False

    def _want(self) -> int:
        """Plaintext bytes of the next segment if it is not the last, else -1."""
        if self._index >= self._count - 1:
            return -1
        return self._first if self._index == 0 else self._rest

    def _seal(self, chunk: Buffer) -> bytes:
        final = self._index == self._count - 1
        out = self._aead.encrypt(_nonce(self._index, final), chunk, self.header)
        self._index += 1
        return out

    def update(self, data: Buffer) -> bytes:
        if self._done:
            raise InvalidInput("encryptor already finalized")
        self._fed += len(data)
        if self._fed > self._expected:
            raise InvalidInput(f"plaintext is longer than the declared {self._expected} bytes")
        view = memoryview(data).cast("B")
        out = []
        while (want := self._want()) > 0:
            if self._pending:
                take = want - len(self._pending)
                self._pending += view[:take]
                view = view[take:]
                if len(self._pending) < want:
                    break
                out.append(self._seal(self._pending))
                self._pending = bytearray()
            elif len(view) >= want:
                out.append(self._seal(view[:want]))
                view = view[want:]
            else:
                break
        if len(view):
            self._pending += view  # the last segment waits for finalize: it carries the flag
        return out[0] if len(out) == 1 else b"".join(out)

    def finalize(self) -> bytes:
        if self._done:
            raise InvalidInput("encryptor already finalized")
        self._done = True
        if self._fed != self._expected:
            raise InvalidInput(
                f"plaintext ended after {self._fed} of the declared {self._expected} bytes"
            )
        return self._seal(self._pending)


def _open_header(
    header: bytes, key: bytes, file_len: int
) -> tuple[AESGCM, int, tuple[int, int, int]]:
    """Check a v2 header against the file length; return the segment cipher, the segment
    count and the sealed sizes of the first, middle and last segments."""
    magic, segment_len, plaintext_len, salt, reserved = HEADER.unpack(header)
    if magic != MAGIC:
        raise CapsuleFormatError("not a v2 data capsule (bad magic)")
    if reserved != bytes(4):
        raise CapsuleFormatError("v2 header: reserved bytes are not zero")
    if not MIN_SEGMENT_LEN <= segment_len <= MAX_SEGMENT_LEN:
        raise CapsuleFormatError(f"v2 header: segment_len {segment_len} is out of range")
    expected = v2_size(plaintext_len, segment_len)
    if expected != file_len:
        raise CapsuleFormatError(
            f"v2 header declares {plaintext_len} plaintext bytes ({expected}-byte file) but "
            f"the file has {file_len} bytes (truncated or extended)"
        )
    aead = _subkey(key, salt)
    count, first, rest = _layout(plaintext_len, segment_len)
    last = plaintext_len - (first + rest * (count - 2) if count > 1 else 0)
    return aead, count, (first + TAG_LEN, rest + TAG_LEN, last + TAG_LEN)


def _auth_failed(index: int) -> CapsuleFormatError:
    return CapsuleFormatError(
        f"v2 segment {index} failed authentication (wrong key, tampered, reordered or "
        "truncated data)"
    )


class V2Decryptor:
    """Incremental v2 reader of a file of exactly ``file_len`` bytes; releases a segment's
    plaintext only after it authenticated. Errors raise CapsuleFormatError."""

    def __init__(self, key: bytes, file_len: int) -> None:
        self._key = key
        self._file_len = file_len
        self._buffer = bytearray()
        self._header: bytes | None = None
        self._aead: AESGCM | None = None
        self._fed = 0
        self._index = 0
        self._count = 0
        self._sizes: tuple[int, int, int] = (0, 0, 0)
        if file_len < HEADER_LEN + TAG_LEN:
            raise CapsuleFormatError(f"v2 file of {file_len} bytes is shorter than header + tag")

    def _parse_header(self, header: bytes) -> None:
        self._aead, self._count, self._sizes = _open_header(header, self._key, self._file_len)
        self._header = header

    def _segment_size(self) -> int:
        first, rest, last = self._sizes
        if self._index == self._count - 1:
            return last
        return first if self._index == 0 else rest

    def _open(self, sealed: Buffer) -> bytes:
        final = self._index == self._count - 1
        assert self._aead is not None, "the header is read first"
        try:
            plain = self._aead.decrypt(_nonce(self._index, final), sealed, self._header)
        except InvalidTag:
            raise _auth_failed(self._index) from None
        self._index += 1
        return plain

    def update(self, data: Buffer) -> bytes:
        self._fed += len(data)
        if self._fed > self._file_len:
            raise CapsuleFormatError(f"input is longer than the declared {self._file_len} bytes")
        view = memoryview(data).cast("B")
        if self._header is None:
            take = HEADER_LEN - len(self._buffer)
            self._buffer += view[:take]
            view = view[take:]
            if len(self._buffer) < HEADER_LEN:
                return b""
            self._parse_header(bytes(self._buffer))
            self._buffer = bytearray()
        out = []
        while len(view) and self._index < self._count:
            size = self._segment_size()
            if self._buffer:
                take = size - len(self._buffer)
                self._buffer += view[:take]
                view = view[take:]
                if len(self._buffer) == size:
                    out.append(self._open(self._buffer))
                    self._buffer = bytearray()
            elif len(view) >= size:
                out.append(self._open(view[:size]))
                view = view[size:]
            else:
                self._buffer += view
                view = view[len(view) :]
        return out[0] if len(out) == 1 else b"".join(out)

    def finalize(self) -> None:
        if self._header is None or self._fed != self._file_len or self._index != self._count:
            raise CapsuleFormatError(f"input ended after {self._fed} of {self._file_len} bytes")


# ---- bulk streams: buffers allocated once per file, no per-segment allocation -------------------


def encrypt_stream(
    key: bytes,
    src: BinaryIO,
    dst: BinaryIO,
    plaintext_len: int,
    *,
    segment_len: int = SEGMENT_LEN,
    progress: Progress | None = None,
) -> int:
    """Write the v2 file of the next ``plaintext_len`` bytes of ``src`` to ``dst``; return
    the bytes written (:func:`v2_size`). The same bytes as :class:`V2Encryptor`, but read
    with ``readinto`` and sealed with ``encrypt_into`` into two buffers of one segment each,
    allocated once. ``src`` ending early raises :class:`InvalidInput` (the caller checks
    that it ends)."""
    if plaintext_len < 0:
        raise InvalidInput(f"plaintext length must not be negative, got {plaintext_len}")
    if not MIN_SEGMENT_LEN <= segment_len <= MAX_SEGMENT_LEN:
        raise InvalidInput(f"segment length {segment_len} is out of range")
    salt = secrets.token_bytes(32)
    header = HEADER.pack(MAGIC, segment_len, plaintext_len, salt, bytes(4))
    aead = _subkey(key, salt)
    count, first, rest = _layout(plaintext_len, segment_len)
    plain = memoryview(bytearray(min(max(first, rest), plaintext_len)))
    sealed = memoryview(bytearray(len(plain) + TAG_LEN))
    written = dst.write(header) or 0
    done = 0
    for index in range(count):
        final = index == count - 1
        want = plaintext_len - done if final else (first if index == 0 else rest)
        got = fill(src, plain[:want], progress)
        done += got
        if got < want:
            raise InvalidInput(
                f"plaintext ended after {done} of the declared {plaintext_len} bytes"
            )
        out = sealed[: want + TAG_LEN]
        aead.encrypt_into(_nonce(index, final), plain[:want], header, out)
        written += dst.write(out) or 0
    return written


def decrypt_stream(
    key: bytes,
    src: BinaryIO,
    dst: BinaryIO,
    file_len: int,
    *,
    head: bytes = b"",
    progress: Progress | None = None,
) -> int:
    """Decrypt the v2 file of ``file_len`` bytes in ``src`` (whose first bytes the caller may
    already have read: ``head``) into ``dst``; return the plaintext length. The same checks and
    errors as :class:`V2Decryptor`: the header is checked against ``file_len`` before any
    segment is read, and a segment is written to ``dst`` only after it authenticated. Reads
    with ``readinto`` and opens with ``decrypt_into`` into two buffers of one segment each,
    allocated once. On :class:`CapsuleFormatError` what was written to ``dst`` must be
    discarded; the caller checks that ``src`` ends."""
    if file_len < HEADER_LEN + TAG_LEN:
        raise CapsuleFormatError(f"v2 file of {file_len} bytes is shorter than header + tag")
    header = bytearray(HEADER_LEN)
    header[: len(head)] = head
    fed = len(head) + fill(src, memoryview(header)[len(head) :], progress)
    if fed < HEADER_LEN:
        raise CapsuleFormatError(f"input ended after {fed} of {file_len} bytes")
    aad = bytes(header)
    aead, count, (first, rest, last) = _open_header(aad, key, file_len)
    biggest = max(last, first if count > 1 else 0, rest if count > 2 else 0)
    sealed = memoryview(bytearray(biggest))
    plain = memoryview(bytearray(biggest - TAG_LEN))
    total = 0
    for index in range(count):
        final = index == count - 1
        size = last if final else (first if index == 0 else rest)
        got = fill(src, sealed[:size], progress)
        fed += got
        if got < size:
            raise CapsuleFormatError(f"input ended after {fed} of {file_len} bytes")
        out = plain[: size - TAG_LEN]
        try:
            aead.decrypt_into(_nonce(index, final), sealed[:size], aad, out)
        except InvalidTag:
            out[:] = bytes(len(out))  # unauthenticated plaintext never leaves this buffer
            raise _auth_failed(index) from None
        total += dst.write(out) or 0
    return total
