"""Data-capsule format: upstream vectors decrypt; our writer follows
docs/compat.md#capsule-v1-format."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustflow_core import capsule
from trustflow_core.errors import CapsuleFormatError, InvalidInput
from trustflow_core.testing.fixtures import compat_vectors_dir

COMPAT = compat_vectors_dir()


def _manifest_data() -> dict[str, dict]:
    if not (COMPAT / "manifest.json").is_file():
        return {}
    return json.loads((COMPAT / "manifest.json").read_text())["data"]


def _key(entry: dict) -> bytes:
    return base64.b64decode((COMPAT / entry["key_b64_file"]).read_text().strip(), validate=True)


def _independent_decrypt(blob: bytes, key: bytes) -> tuple[int, list[int], bytes]:
    """A second, minimal reader following the C++ upstream rules literally (N >= 1,
    iv_len 12, tag_len 16, zero padding). Returns (block_count, block sizes, plaintext)."""
    version, schema, count, block_len = struct.unpack_from("<IIQI", blob)
    assert (version, schema, block_len) == (1, 1, 8192)
    assert count >= 1
    body = len(blob) - 20
    assert (count - 1) * block_len <= body <= count * block_len
    sizes = [block_len] * (count - 1) + [body - (count - 1) * block_len]
    out, pos = [], 20
    for size in sizes:
        block = blob[pos : pos + size]
        pos += size
        assert size >= 66
        assert block[0] == 12 and block[33] == 16
        assert block[13:33] == bytes(20) and block[50:66] == bytes(16)
        out.append(AESGCM(key).decrypt(block[1:13], block[66:] + block[34:50], None))
    return count, sizes, b"".join(out)


# ---- upstream vectors ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(_manifest_data()) or ["<none>"])
def test_core_capsule_decrypts_every_compat_vector(name: str, tmp_path: Path) -> None:
    entry = _manifest_data()[name]
    src = COMPAT / "data" / name
    header = src.read_bytes()[:20]
    assert struct.unpack("<IIQI", header)[2] == entry["header_block_count"]
    assert src.stat().st_size == entry["encrypted_len"]

    out = tmp_path / "plain"
    n = capsule.decrypt_file(src, out, _key(entry))

    plain = out.read_bytes()
    assert n == len(plain) == entry["plaintext_len"]
    assert hashlib.sha256(plain).hexdigest() == entry["plaintext_sha256"]
    assert plain == (COMPAT / entry["plaintext"]).read_bytes()
    assert out.stat().st_mode & 0o777 == 0o600


def test_core_capsule_upstream_empty_file_is_empty_plaintext_but_authenticated() -> None:
    """docs/compat.md#capsule-v1-empty-file: block_count 0 + one empty block is accepted as empty
    plaintext, and its GCM tag is still checked."""
    [(name, entry)] = [(n, e) for n, e in _manifest_data().items() if e["plaintext_len"] == 0]
    blob = (COMPAT / "data" / name).read_bytes()
    assert struct.unpack_from("<Q", blob, 8)[0] == entry["header_block_count"] == 0
    out = io.BytesIO()
    assert capsule.decrypt_stream(io.BytesIO(blob), out, _key(entry), len(blob)) == 0
    assert out.getvalue() == b""
    wrong = bytes(b ^ 1 for b in _key(entry))
    with pytest.raises(CapsuleFormatError, match="block 1 failed authentication"):
        capsule.decrypt_stream(io.BytesIO(blob), io.BytesIO(), wrong, len(blob))


def test_core_capsule_our_files_have_upstream_sizes() -> None:
    """For every vector, our writer produces a file of the upstream length."""
    for entry in _manifest_data().values():
        assert capsule.v1.encrypted_size(entry["plaintext_len"]) == entry["encrypted_len"]


# ---- our writer ----------------------------------------------------------------------------

SIZES = [0, 1, 8125, 8126, 8127, 3 * 8126 + 5]


@pytest.mark.parametrize("key_len", [16, 32, 24])
@pytest.mark.parametrize("size", SIZES)
def test_core_capsule_round_trip(size: int, key_len: int) -> None:
    key = os.urandom(key_len)
    plain = os.urandom(size)
    enc = io.BytesIO()
    written = capsule.encrypt_stream(io.BytesIO(plain), enc, key, size)
    blob = enc.getvalue()

    expected_blocks = max(1, -(-size // 8126))
    assert written == len(blob) == 20 + 66 * expected_blocks + size
    assert len(blob) == capsule.v1.encrypted_size(size)

    count, sizes, recovered = _independent_decrypt(blob, key)
    assert recovered == plain
    assert count == expected_blocks
    assert all(s == 8192 for s in sizes[:-1]) and 66 <= sizes[-1] <= 8192

    out = io.BytesIO()
    assert capsule.decrypt_stream(io.BytesIO(blob), out, key, len(blob)) == size
    assert out.getvalue() == plain


def test_core_capsule_empty_plaintext_is_one_block_with_an_authenticated_tag() -> None:
    key = os.urandom(16)
    enc = io.BytesIO()
    capsule.encrypt_stream(io.BytesIO(b""), enc, key, 0)
    blob = enc.getvalue()
    assert len(blob) == 86
    assert struct.unpack_from("<IIQI", blob) == (1, 1, 1, 8192)
    assert _independent_decrypt(blob, key) == (1, [66], b"")


def test_core_capsule_fresh_iv_per_block() -> None:
    key = os.urandom(16)
    plain = bytes(3 * 8126)
    enc = io.BytesIO()
    capsule.encrypt_stream(io.BytesIO(plain), enc, key, len(plain))
    blob = enc.getvalue()
    ivs = {blob[20 + i * 8192 + 1 : 20 + i * 8192 + 13] for i in range(3)}
    assert len(ivs) == 3


@pytest.mark.parametrize("key_len", [0, 15, 17, 31, 33, 64])
def test_core_capsule_rejects_bad_key_lengths(key_len: int) -> None:
    with pytest.raises(InvalidInput, match=f"got {key_len} bytes"):
        capsule.encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), bytes(key_len), 1)
    with pytest.raises(InvalidInput, match=f"got {key_len} bytes"):
        capsule.v1.CapsuleDecryptor(bytes(key_len), 100)


def test_core_capsule_incremental_api_any_split() -> None:
    key = os.urandom(16)
    plain = os.urandom(2 * 8126 + 300)
    enc = capsule.v1.CapsuleEncryptor(key, len(plain))
    parts = [enc.header]
    for i in range(0, len(plain), 1000):
        parts.append(enc.update(plain[i : i + 1000]))
    parts.append(enc.finalize())
    blob = b"".join(parts)
    assert _independent_decrypt(blob, key)[2] == plain

    for step in (1, 19, 20, 21, 8192, 50_000):
        dec = capsule.v1.CapsuleDecryptor(key, len(blob))
        out = b"".join(dec.update(blob[i : i + step]) for i in range(0, len(blob), step))
        dec.finalize()
        assert out == plain


def test_core_capsule_encryptor_enforces_declared_length() -> None:
    enc = capsule.v1.CapsuleEncryptor(os.urandom(16), 10)
    with pytest.raises(InvalidInput, match="longer than the declared 10"):
        enc.update(bytes(11))
    enc = capsule.v1.CapsuleEncryptor(os.urandom(16), 10)
    enc.update(bytes(9))
    with pytest.raises(InvalidInput, match="ended after 9 of the declared 10"):
        enc.finalize()
    with pytest.raises(InvalidInput, match="source is longer"):
        capsule.encrypt_stream(io.BytesIO(bytes(11)), io.BytesIO(), os.urandom(16), 10)
    with pytest.raises(InvalidInput, match="ended after 5 of the declared 10"):
        capsule.encrypt_stream(io.BytesIO(bytes(5)), io.BytesIO(), os.urandom(16), 10)


def test_core_capsule_decryptor_rejects_input_past_declared_length() -> None:
    key = os.urandom(16)
    enc = io.BytesIO()
    capsule.encrypt_stream(io.BytesIO(b"abc"), enc, key, 3)
    blob = enc.getvalue()
    dec = capsule.v1.CapsuleDecryptor(key, len(blob))
    with pytest.raises(CapsuleFormatError, match="longer than the declared file length"):
        dec.update(blob + b"x")
    with pytest.raises(CapsuleFormatError, match="source is longer than the declared"):
        capsule.decrypt_stream(io.BytesIO(blob + b"x"), io.BytesIO(), key, len(blob))


def test_core_capsule_file_api_modes_and_same_path(tmp_path: Path) -> None:
    key = os.urandom(32)
    src = tmp_path / "data.csv"
    src.write_bytes(b"a,b\n1,2\n" * 3000)
    enc, dec = tmp_path / "data.csv.enc", tmp_path / "data.csv.dec"
    assert capsule.encrypt_file(src, enc, key) == enc.stat().st_size
    assert capsule.decrypt_file(enc, dec, key) == src.stat().st_size
    assert dec.read_bytes() == src.read_bytes()
    assert dec.stat().st_mode & 0o777 == 0o600

    with pytest.raises(InvalidInput, match="same file"):
        capsule.encrypt_file(src, tmp_path / "." / "data.csv", key)
    link = tmp_path / "hardlink"
    os.link(enc, link)
    with pytest.raises(InvalidInput, match="same file"):
        capsule.decrypt_file(enc, link, key)


def test_core_capsule_inplace_round_trip(tmp_path: Path) -> None:
    key = os.urandom(16)
    path = tmp_path / "f.bin"
    plain = os.urandom(20_000)
    path.write_bytes(plain)
    capsule.encrypt_file_inplace(path, key)
    assert path.stat().st_size == capsule.v1.encrypted_size(len(plain))
    assert _independent_decrypt(path.read_bytes(), key)[2] == plain
    capsule.decrypt_file_inplace(path, key)
    assert path.read_bytes() == plain
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_core_capsule_progress_reports_every_source_byte(tmp_path: Path) -> None:
    key = os.urandom(16)
    src = tmp_path / "p"
    src.write_bytes(os.urandom(200_000))
    seen: list[int] = []
    capsule.encrypt_file(src, tmp_path / "p.enc", key, progress=seen.append)
    assert sum(seen) == 200_000 and len(seen) > 1
    seen.clear()
    capsule.decrypt_file(tmp_path / "p.enc", tmp_path / "p.dec", key, progress=seen.append)
    assert sum(seen) == (tmp_path / "p.enc").stat().st_size
