"""The bulk v2 path (``capsule.encrypt_stream`` / ``decrypt_stream`` / the file functions, which
read with ``readinto`` and seal/open with AES-GCM ``*_into``): byte-identical to the incremental
writer, readable by the incremental reader and the other way round, and every tampering the
incremental reader catches is caught here too, with nothing of a failing segment written."""

from __future__ import annotations

import io
import os
import struct
import threading

import pytest
from test_core_capsule_v2 import FIRST, REST, SEG, encrypt_v2, segments

from trustflow_core import capsule
from trustflow_core.capsule import v2
from trustflow_core.capsule.v2 import HEADER_LEN, MAGIC, TAG_LEN, V2Decryptor, v2_size
from trustflow_core.errors import CapsuleFormatError, InvalidInput


def bulk_encrypt(key: bytes, data: bytes, segment_len: int = SEG) -> bytes:
    out = io.BytesIO()
    written = v2.encrypt_stream(key, io.BytesIO(data), out, len(data), segment_len=segment_len)
    assert written == len(out.getvalue())
    return out.getvalue()


def bulk_decrypt(key: bytes, blob: bytes) -> bytes:
    out = io.BytesIO()
    assert capsule.decrypt_stream(io.BytesIO(blob), out, key, len(blob)) == len(out.getvalue())
    return out.getvalue()


def incremental_decrypt(key: bytes, blob: bytes) -> bytes:
    dec = V2Decryptor(key, len(blob))
    out = dec.update(blob)
    dec.finalize()
    return out


@pytest.mark.parametrize("length", [0, 1, FIRST - 1, FIRST, FIRST + 1, FIRST + REST, 5 * SEG + 17])
@pytest.mark.parametrize("key_len", [16, 24, 32])
def test_bulk_writer_and_reader_agree_with_the_incremental_ones(length, key_len):
    key, data = os.urandom(key_len), os.urandom(length)
    mine = bulk_encrypt(key, data)
    assert len(mine) == v2_size(length, SEG)
    assert incremental_decrypt(key, mine) == data
    assert bulk_decrypt(key, mine) == data
    assert bulk_decrypt(key, encrypt_v2(key, data)) == data


def test_bulk_writer_is_byte_identical_to_the_incremental_writer(monkeypatch):
    """Same salt, same bytes: the file format did not change."""
    salt = os.urandom(32)
    monkeypatch.setattr(v2.secrets, "token_bytes", lambda n: salt[:n])
    key, data = os.urandom(16), os.urandom(3 * SEG + 5)
    assert bulk_encrypt(key, data) == encrypt_v2(key, data)
    big = os.urandom(2 * v2.SEGMENT_LEN + 3)
    assert bulk_encrypt(key, big, v2.SEGMENT_LEN) == encrypt_v2(key, big, v2.SEGMENT_LEN, 1 << 16)


def _refused(key: bytes, blob: bytes, match: str) -> bytes:
    """Decrypt through the bulk path, expect ``match``; return what reached the output."""
    out = io.BytesIO()
    with pytest.raises(CapsuleFormatError, match=match):
        capsule.decrypt_stream(io.BytesIO(blob), out, key, len(blob))
    return out.getvalue()


def test_bulk_reader_detects_reordered_and_duplicated_segments():
    key, data = os.urandom(16), os.urandom(FIRST + 3 * REST)
    blob = encrypt_v2(key, data)
    segs = segments(blob)
    swapped = blob[:HEADER_LEN] + segs[0] + segs[2] + segs[1] + segs[3]
    assert _refused(key, swapped, "segment 1 failed authentication") == data[:FIRST]
    duplicated = blob[:HEADER_LEN] + segs[0] + segs[1] + segs[1] + segs[3]
    written = _refused(key, duplicated, "segment 2 failed authentication")
    assert written == data[: FIRST + REST]  # only what authenticated before the failure


def test_bulk_reader_detects_truncation():
    key, data = os.urandom(16), os.urandom(FIRST + 3 * REST)
    blob = encrypt_v2(key, data)
    assert _refused(key, blob[:-1], "truncated or extended") == b""
    assert _refused(key, blob[: -TAG_LEN - 5], "truncated or extended") == b""
    assert _refused(key, blob + b"\0", "truncated or extended") == b""
    # at a segment boundary with the header's length fixed up: the new last segment was not
    # sealed as the final one (and the header is not the AAD it was sealed with)
    header = struct.pack(">8sIQ", MAGIC, SEG, FIRST + 2 * REST) + blob[20:HEADER_LEN]
    assert _refused(key, header + b"".join(segments(blob)[:3]), "segment 0 failed") == b""
    # a source shorter than the declared file length
    out = io.BytesIO()
    with pytest.raises(CapsuleFormatError, match="input ended after"):
        capsule.decrypt_stream(io.BytesIO(blob[:-7]), out, key, len(blob))


def test_bulk_reader_detects_flipped_bytes_wrong_keys_and_splices():
    key, data = os.urandom(32), os.urandom(FIRST + 2 * REST + 9)
    blob = encrypt_v2(key, data)
    for where, match, before in (
        (HEADER_LEN + 5, "segment 0 failed", 0),
        (SEG + REST + 3, "segment 1 failed", FIRST),
        (len(blob) - 1, "segment 3 failed", FIRST + 2 * REST),
        (30, "segment 0 failed", 0),  # the salt: a different subkey
    ):
        flipped = bytearray(blob)
        flipped[where] ^= 0x01
        assert _refused(key, bytes(flipped), match) == data[:before]
    assert _refused(os.urandom(32), blob, "segment 0 failed") == b""
    other = encrypt_v2(key, os.urandom(len(data)))
    spliced = blob[:HEADER_LEN] + segments(blob)[0] + segments(other)[1] + blob[2 * SEG :]
    assert _refused(key, spliced, "segment 1 failed") == data[:FIRST]
    reserved = bytearray(blob)
    reserved[HEADER_LEN - 1] ^= 1
    assert _refused(key, bytes(reserved), "reserved") == b""


def test_bulk_paths_refuse_sources_of_the_wrong_length():
    key, data = os.urandom(16), os.urandom(3 * SEG)
    with pytest.raises(InvalidInput, match=f"ended after {len(data) - 1} of the declared"):
        v2.encrypt_stream(key, io.BytesIO(data[:-1]), io.BytesIO(), len(data), segment_len=SEG)
    with pytest.raises(InvalidInput, match="longer than the declared"):
        capsule.encrypt_stream(io.BytesIO(data + b"x"), io.BytesIO(), key, len(data), fmt="v2")
    blob = encrypt_v2(key, data)
    with pytest.raises(CapsuleFormatError, match="longer than the declared file length"):
        capsule.decrypt_stream(io.BytesIO(blob + b"x"), io.BytesIO(), key, len(blob))
    with pytest.raises(InvalidInput, match="16, 24 or 32"):
        v2.encrypt_stream(b"short", io.BytesIO(data), io.BytesIO(), len(data))


def test_bulk_file_functions_leave_nothing_on_tampering(tmp_path):
    key, data = os.urandom(16), os.urandom(FIRST + 3 * REST)
    blob = bytearray(encrypt_v2(key, data))
    blob[-1] ^= 1
    (tmp_path / "f.enc").write_bytes(blob)
    with pytest.raises(CapsuleFormatError, match="segment 3 failed"):
        capsule.decrypt_file(tmp_path / "f.enc", tmp_path / "f", key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.enc"]


def test_bulk_progress_reports_every_source_byte(tmp_path):
    key, data = os.urandom(16), os.urandom(3 * v2.SEGMENT_LEN // 2)
    seen: list[int] = []
    (tmp_path / "p").write_bytes(data)
    size = capsule.encrypt_file(
        tmp_path / "p", tmp_path / "p.enc", key, fmt="v2", progress=seen.append
    )
    assert sum(seen) == len(data)
    seen.clear()
    capsule.decrypt_file(tmp_path / "p.enc", tmp_path / "back", key, progress=seen.append)
    assert sum(seen) == size
    assert (tmp_path / "back").read_bytes() == data


class _FailingSink:
    """A destination whose ``n``-th write fails (a full disk)."""

    def __init__(self, n: int) -> None:
        self.writes, self.n = 0, n

    def write(self, data: memoryview) -> int:
        self.writes += 1
        if self.writes == self.n:
            raise OSError(28, "No space left on device")
        return len(data)


def test_write_errors_surface_and_leave_no_writer_thread():
    """A failing write reaches the caller at once, and no thread is left behind."""
    key, data = os.urandom(16), os.urandom(FIRST + 20 * REST)
    blob = encrypt_v2(key, data)
    before = threading.active_count()
    for n in (1, 2, 3, 21):
        with pytest.raises(OSError, match="No space left"):
            v2.encrypt_stream(key, io.BytesIO(data), _FailingSink(n), len(data), segment_len=SEG)
        with pytest.raises(OSError, match="No space left"):
            v2.decrypt_stream(key, io.BytesIO(blob), _FailingSink(n), len(blob))
    assert threading.active_count() == before
