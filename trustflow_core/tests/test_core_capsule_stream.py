"""Data-capsule streaming: memory stays bounded independently of the file size."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

from trustflow_core import capsule

SIZE = 8 * 1024 * 1024
LIMIT = 1024 * 1024  # peak Python allocations allowed, well below SIZE


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
    return h.hexdigest()


def test_core_capsule_file_streaming_memory_is_bounded(tmp_path: Path) -> None:
    key = os.urandom(32)
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(SIZE // (1 << 20)):
            f.write(os.urandom(1 << 20))
    enc, dec = tmp_path / "big.bin.enc", tmp_path / "big.bin.dec"

    tracemalloc.start()
    try:
        capsule.encrypt_file(src, enc, key)
        _, enc_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        capsule.decrypt_file(enc, dec, key)
        _, dec_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert enc.stat().st_size == capsule.v1.encrypted_size(SIZE)
    assert _sha256(dec) == _sha256(src)
    assert enc_peak < LIMIT, f"encrypt peak {enc_peak} bytes"
    assert dec_peak < LIMIT, f"decrypt peak {dec_peak} bytes"
