"""Data-capsule reader of upstream's v1 format: every malformed or tampered file raises a
specific CapsuleFormatError and decrypt_file leaves nothing behind."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from trustflow_core import capsule
from trustflow_core.errors import CapsuleFormatError

KEY = os.urandom(16)
PLAIN = os.urandom(3 * 8126 + 5)  # 4 blocks, the last one short (71 bytes)
B2 = 20 + 8192  # offset of block 2
LAST = 20 + 3 * 8192  # offset of block 4


def _capsule() -> bytes:
    out = io.BytesIO()
    capsule.encrypt_stream(io.BytesIO(PLAIN), out, KEY, len(PLAIN))
    return out.getvalue()


BLOB = _capsule()


def _set(offset: int, fmt: str, value: int) -> Callable[[bytes], bytes]:
    def mutate(blob: bytes) -> bytes:
        b = bytearray(blob)
        struct.pack_into(fmt, b, offset, value)
        return bytes(b)

    return mutate


def _flip(offset: int) -> Callable[[bytes], bytes]:
    def mutate(blob: bytes) -> bytes:
        b = bytearray(blob)
        b[offset] ^= 0x01
        return bytes(b)

    return mutate


CASES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty file": (lambda b: b"", "header too short: the file has 0 bytes"),
    "short header": (lambda b: b[:19], "header too short: the file has 19 bytes"),
    "header only": (lambda b: b[:20], "block_count 4 .* does not match the 0 bytes"),
    "version": (_set(0, "<I", 2), "unsupported version 2"),
    "schema": (_set(4, "<I", 0), "unsupported schema 0"),
    "block_count +1": (_set(8, "<Q", 5), "block_count 5 .* does not match"),
    "block_count -1": (_set(8, "<Q", 3), "block_count 3 .* does not match"),
    "block_count huge": (_set(8, "<Q", 2**64 - 1), "does not match"),
    "block_count 0": (_set(8, "<Q", 0), "block_count is 0 but 24647 bytes"),
    "block_len 0": (_set(16, "<I", 0), "block_len is 0"),
    "block_len 65": (_set(16, "<I", 65), "block_len 65 is shorter than the 66-byte"),
    "block_len huge": (_set(16, "<I", 2**32 - 1), "exceeds the supported maximum"),
    "block_len 8191": (_set(16, "<I", 8191), "block 1 failed authentication"),
    "iv_len 0": (_set(B2, "<B", 0), r"block 2: iv_len 0 is outside 8\.\.32"),
    "iv_len 7": (_set(B2, "<B", 7), r"block 2: iv_len 7 is outside"),
    "iv_len 33": (_set(B2, "<B", 33), r"block 2: iv_len 33 is outside"),
    "iv_len 255": (_set(B2, "<B", 255), r"block 2: iv_len 255 is outside"),
    "iv_len 13": (_set(B2, "<B", 13), "block 2 failed authentication"),
    "iv": (_flip(B2 + 1), "block 2 failed authentication"),
    "iv last byte": (_flip(B2 + 12), "block 2 failed authentication"),
    "iv padding": (_flip(B2 + 13), "block 2: non-zero padding after the IV"),
    "tag_len 12": (_set(B2 + 33, "<B", 12), "block 2: tag_len 12 is not 16"),
    "tag_len 32": (_set(B2 + 33, "<B", 32), "block 2: tag_len 32 is not 16"),
    "tag": (_flip(B2 + 34), "block 2 failed authentication"),
    "tag last byte": (_flip(B2 + 49), "block 2 failed authentication"),
    "tag padding": (_flip(B2 + 65), "block 2: non-zero padding after the tag"),
    "ciphertext first block": (_flip(20 + 66), "block 1 failed authentication"),
    "ciphertext middle": (_flip(B2 + 4000), "block 2 failed authentication"),
    "ciphertext last block": (_flip(len(BLOB) - 1), "block 4 failed authentication"),
    "truncated at block boundary": (lambda b: b[:LAST], "block_count 4 .* does not match"),
    "truncated to one block": (lambda b: b[: 20 + 8192], "does not match"),
    "truncated mid last block": (lambda b: b[:-1], "block 4 failed authentication"),
    "truncated in last block header": (lambda b: b[: LAST + 40], "does not match"),
    "truncated mid middle block": (lambda b: b[: B2 + 100], "does not match"),
    "appended byte": (lambda b: b + b"\0", "block 4 failed authentication"),
    "appended block": (lambda b: b + b[20 : 20 + 8192], "does not match"),
    "last block moved": (lambda b: b[:20] + b[LAST:] + b[20:LAST], "block 1 failed auth"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_core_capsule_tampered_file_is_rejected(case: str, tmp_path: Path) -> None:
    mutate, message = CASES[case]
    src = tmp_path / "in.enc"
    src.write_bytes(mutate(BLOB))
    dst = tmp_path / "out"
    with pytest.raises(CapsuleFormatError, match=message):
        capsule.decrypt_file(src, dst, KEY, fmt="v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.enc"]


def test_core_capsule_untampered_baseline_decrypts(tmp_path: Path) -> None:
    """The tampering cases start from a valid file."""
    out = io.BytesIO()
    capsule.decrypt_stream(io.BytesIO(BLOB), out, KEY, len(BLOB), fmt="v1")
    assert out.getvalue() == PLAIN


def test_core_capsule_wrong_key_leaves_existing_destination_untouched(tmp_path: Path) -> None:
    src = tmp_path / "in.enc"
    src.write_bytes(BLOB)
    dst = tmp_path / "out"
    dst.write_bytes(b"previous")
    wrong = bytes(b ^ 0x80 for b in KEY)
    with pytest.raises(CapsuleFormatError, match=r"block 1 failed authentication \(wrong key"):
        capsule.decrypt_file(src, dst, wrong, fmt="v1")
    assert dst.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.enc", "out"]


def test_core_capsule_failed_inplace_decrypt_keeps_the_capsule(tmp_path: Path) -> None:
    path = tmp_path / "f.enc"
    path.write_bytes(BLOB[:-1])
    with pytest.raises(CapsuleFormatError, match="block 4 failed authentication"):
        capsule.decrypt_file_inplace(path, KEY, fmt="v1")
    assert path.read_bytes() == BLOB[:-1]
    assert [p.name for p in tmp_path.iterdir()] == ["f.enc"]


def test_core_capsule_upstream_empty_shape_with_extra_bytes_is_rejected() -> None:
    out = io.BytesIO()
    capsule.encrypt_stream(io.BytesIO(b""), out, KEY, 0)
    blob = bytearray(out.getvalue())
    struct.pack_into("<Q", blob, 8, 0)  # upstream Python's empty shape: accepted
    opened = capsule.decrypt_stream(io.BytesIO(bytes(blob)), io.BytesIO(), KEY, len(blob), fmt="v1")
    assert opened == 0
    longer = bytes(blob) + b"\0"
    with pytest.raises(CapsuleFormatError, match="block_count is 0 but 67 bytes"):
        capsule.decrypt_stream(io.BytesIO(longer), io.BytesIO(), KEY, len(longer), fmt="v1")


def test_core_capsule_stream_shorter_than_declared_length() -> None:
    with pytest.raises(CapsuleFormatError, match=f"ended after {len(BLOB) - 10} of the declared"):
        capsule.decrypt_stream(io.BytesIO(BLOB[:-10]), io.BytesIO(), KEY, len(BLOB), fmt="v1")


def test_core_capsule_block_reordering_is_undetectable() -> None:
    """Documents the format's limit: blocks carry no index, so swapping two full blocks
    decrypts without error to reordered plaintext. Callers must not rely on ordering."""
    blocks = [BLOB[20 + i * 8192 : 20 + (i + 1) * 8192] for i in range(3)]
    swapped = BLOB[:20] + blocks[1] + blocks[0] + blocks[2] + BLOB[LAST:]
    out = io.BytesIO()
    capsule.decrypt_stream(io.BytesIO(swapped), out, KEY, len(swapped), fmt="v1")
    assert out.getvalue() == PLAIN[8126:16252] + PLAIN[:8126] + PLAIN[16252:]
