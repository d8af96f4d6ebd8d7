"""The authenticated v2 data-capsule format (round trips, every kind of tampering upstream's
format misses) and format auto-detection of upstream v1 files (the compat vectors)."""

from __future__ import annotations

import base64
import hashlib
import os
import struct

import pytest

from trustflow_core import capsule
from trustflow_core.capsule import AutoDecryptor, detect_format, open_writer
from trustflow_core.capsule.v2 import (
    HEADER_LEN,
    MAGIC,
    TAG_LEN,
    V2Decryptor,
    V2Encryptor,
    v2_size,
)
from trustflow_core.errors import CapsuleFormatError, InvalidInput

SEG = 1000  # small segments keep the tests fast
FIRST = SEG - HEADER_LEN - TAG_LEN  # plaintext bytes of the first segment
REST = SEG - TAG_LEN  # plaintext bytes of the others


def encrypt_v2(key: bytes, data: bytes, segment_len: int = SEG, feed: int = 333) -> bytes:
    enc = V2Encryptor(key, len(data), segment_len)
    out = [enc.header]
    for start in range(0, len(data), feed):
        out.append(enc.update(data[start : start + feed]))
    out.append(enc.finalize())
    return b"".join(out)


def decrypt(key: bytes, blob: bytes, feed: int = 777) -> bytes:
    dec = AutoDecryptor(key, len(blob))
    out = [dec.update(blob[i : i + feed]) for i in range(0, len(blob), feed)]
    dec.finalize()
    return b"".join(out)


def segments(blob: bytes) -> list[bytes]:
    """The sealed segments: boundaries at multiples of SEG (the first one after the header)."""
    return [blob[HEADER_LEN:SEG]] + [blob[i : i + SEG] for i in range(SEG, len(blob), SEG)]


@pytest.mark.parametrize("length", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 5 * SEG + 17])
@pytest.mark.parametrize("key_len", [16, 24, 32])
def test_v2_round_trip_and_size(length, key_len):
    key = os.urandom(key_len)
    data = os.urandom(length)
    blob = encrypt_v2(key, data)
    assert blob[:8] == MAGIC
    assert len(blob) == v2_size(length, SEG)
    assert decrypt(key, blob) == data
    assert decrypt(key, blob, feed=1) == data


def test_v2_default_segment_size_round_trip():
    key, data = os.urandom(32), os.urandom(3 * (1 << 20) + 5)
    writer = open_writer("v2", key, len(data))
    blob = writer.header + writer.update(data) + writer.finalize()
    assert decrypt(key, blob, feed=1 << 20) == data


def _expect_failure(key: bytes, blob: bytes, match: str = "") -> None:
    with pytest.raises(CapsuleFormatError, match=match):
        decrypt(key, blob)


def test_v2_segment_boundaries_are_aligned():
    data = os.urandom(FIRST + 2 * REST + 5)
    blob = encrypt_v2(os.urandom(16), data)
    assert [len(s) for s in segments(blob)] == [SEG - HEADER_LEN, SEG, SEG, 5 + TAG_LEN]


def test_v2_detects_swapped_segments():
    key, data = os.urandom(16), os.urandom(FIRST + 3 * REST)
    blob = encrypt_v2(key, data)
    segs = segments(blob)
    swapped = blob[:HEADER_LEN] + segs[0] + segs[2] + segs[1] + segs[3]
    _expect_failure(key, swapped, "segment 1 failed authentication")


def test_v2_detects_duplicated_segment_and_truncation_at_a_boundary():
    key, data = os.urandom(16), os.urandom(FIRST + 3 * REST)
    blob = encrypt_v2(key, data)
    segs = segments(blob)
    # drop the last segment and fix the header's length so the sizes agree: the now-last
    # segment was not sealed as final (and the header no longer matches the AAD)
    header = struct.pack(">8sIQ", MAGIC, SEG, FIRST + 2 * REST) + blob[20:HEADER_LEN]
    _expect_failure(key, header + b"".join(segs[:3]), "failed authentication")
    duplicated = blob[:HEADER_LEN] + segs[0] + segs[1] + segs[1] + segs[3]
    _expect_failure(key, duplicated, "segment 2 failed authentication")


def test_v2_detects_plain_truncation_and_extension():
    key, data = os.urandom(16), os.urandom(FIRST + REST + 5)
    blob = encrypt_v2(key, data)
    _expect_failure(key, blob[: -TAG_LEN - 5], "truncated or extended")
    _expect_failure(key, blob[:-1], "truncated or extended")
    _expect_failure(key, blob + b"\0", "truncated or extended")


def test_v2_detects_header_tampering_and_splicing_between_files():
    key, data = os.urandom(16), os.urandom(2 * SEG)
    blob = encrypt_v2(key, data)
    other = encrypt_v2(key, os.urandom(2 * SEG))
    reserved = bytearray(blob)
    reserved[-(len(blob) - HEADER_LEN) - 1] ^= 1  # last reserved header byte
    _expect_failure(key, bytes(reserved), "reserved")
    salt = bytearray(blob)
    salt[30] ^= 1
    _expect_failure(key, bytes(salt), "failed authentication")
    spliced = blob[:HEADER_LEN] + segments(other)[0] + b"".join(segments(blob)[1:])
    _expect_failure(key, spliced, "segment 0 failed authentication")


def test_v2_wrong_key_and_bit_flip():
    key, data = os.urandom(32), os.urandom(SEG + 1)
    blob = encrypt_v2(key, data)
    _expect_failure(os.urandom(32), blob, "failed authentication")
    flipped = bytearray(blob)
    flipped[HEADER_LEN + 5] ^= 0x80
    _expect_failure(key, bytes(flipped), "segment 0")


def test_v2_releases_nothing_before_a_segment_authenticates():
    key, data = os.urandom(16), os.urandom(3 * SEG)
    blob = encrypt_v2(key, data)
    dec = V2Decryptor(key, len(blob))
    assert dec.update(blob[: SEG - 1]) == b""  # segment 0 not complete yet
    assert dec.update(blob[SEG - 1 : SEG]) == data[:FIRST]
    assert dec.update(blob[SEG : 2 * SEG]) == data[FIRST : FIRST + REST]


def test_v2_writer_refuses_wrong_lengths():
    key = os.urandom(16)
    enc = V2Encryptor(key, 10, SEG)
    with pytest.raises(InvalidInput, match="longer"):
        enc.update(b"x" * 11)
    enc = V2Encryptor(key, 10, SEG)
    enc.update(b"x" * 9)
    with pytest.raises(InvalidInput, match="ended after"):
        enc.finalize()
    with pytest.raises(InvalidInput, match="16, 24 or 32"):
        V2Encryptor(os.urandom(20), 10)


def test_unknown_format_and_tiny_files_are_refused():
    with pytest.raises(CapsuleFormatError, match="neither v1 nor v2"):
        decrypt(os.urandom(16), b"PK\x03\x04" + bytes(100))
    with pytest.raises(CapsuleFormatError):
        AutoDecryptor(os.urandom(16), 3)


def test_auto_detects_upstream_vectors(compat_dir, compat_manifest):
    checked = 0
    for name, entry in compat_manifest["data"].items():
        if entry["upstream_decrypt"] != "ok":
            continue
        key = base64.b64decode((compat_dir / entry["key_b64_file"]).read_text().strip())
        blob = (compat_dir / "data" / name).read_bytes()
        dec = AutoDecryptor(key, len(blob))
        plain = decrypt(key, blob, feed=4096)
        assert hashlib.sha256(plain).hexdigest() == entry["plaintext_sha256"]
        dec.update(blob[:8])
        assert dec.format == "v1"
        checked += 1
    assert checked >= 3


def test_v1_writer_is_the_upstream_format():
    key, data = os.urandom(16), os.urandom(20_000)
    writer = open_writer("v1", key, len(data))
    blob = writer.header + writer.update(data) + writer.finalize()
    assert len(blob) == capsule.v1.encrypted_size(len(data))
    assert decrypt(key, blob) == data
    with pytest.raises(InvalidInput, match="unknown data capsule format"):
        open_writer("v3", key, 1)


def test_detect_format_by_prefix():
    key = os.urandom(16)
    assert detect_format(encrypt_v2(key, b"x")[:8]) == "v2"
    assert detect_format(capsule.v1.CapsuleEncryptor(key, 1).header[:8]) == "v1"
    for head in (MAGIC[:7], b"\x01\x00\x00", b"\x02\x00\x00\x00" + bytes(4), MAGIC[:-1] + b"\x03"):
        with pytest.raises(CapsuleFormatError, match="neither v1 nor v2"):
            detect_format(head)


def test_format_file_functions_refuse_bad_input_before_writing(tmp_path):
    src, dst = tmp_path / "p", tmp_path / "c"
    src.write_bytes(b"abc")
    with pytest.raises(InvalidInput, match="unknown data capsule format 'v3'"):
        capsule.encrypt_file(src, dst, os.urandom(16), fmt="v3")
    with pytest.raises(InvalidInput, match="16, 24 or 32"):
        capsule.encrypt_file_inplace(src, os.urandom(20), fmt="v2")
    with pytest.raises(InvalidInput, match="same file"):
        capsule.decrypt_file(src, src, os.urandom(16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    assert src.read_bytes() == b"abc"


def test_reader_given_a_format_refuses_the_other_one(tmp_path):
    """``fmt`` on the reader side insists on that format: a v2 file is no v1 capsule and the
    other way round; an unknown name is refused before any output is written."""
    key, data = os.urandom(16), b"a,b\n1,2\n"
    for fmt, other in (("v1", "v2"), ("v2", "v1")):
        plain, enc = tmp_path / "p", tmp_path / f"{fmt}.enc"
        plain.write_bytes(data)
        capsule.encrypt_file(plain, enc, key, fmt=fmt)
        assert capsule.decrypt_file(enc, tmp_path / "ok", key, fmt=fmt) == len(data)
        with pytest.raises(CapsuleFormatError):
            capsule.decrypt_file(enc, tmp_path / "bad", key, fmt=other)
        assert not (tmp_path / "bad").exists()
    with pytest.raises(InvalidInput, match="unknown data capsule format 'v3'"):
        capsule.decrypt_file(tmp_path / "v1.enc", tmp_path / "bad", key, fmt="v3")
    assert not (tmp_path / "bad").exists()
