"""LocalStorage settings, file modes, crash safety, and a round trip of the compat vectors."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from trustflow_core.errors import InvalidInput
from trustflow_core.storage import ObjectInfo
from trustflow_core.testing.storage import Boom, Gate, failing

from trustflow_storage_local.paths import TEMP_SUFFIX
from trustflow_storage_local.storage import LocalStorage


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


# ---- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (None, "local storage settings: missing required key\\(s\\) roots"),
        ({}, "local storage settings: missing required key\\(s\\) roots"),
        ({"roots": []}, "empty"),
        ({"roots": "/tmp"}, "list"),
        ({"roots": ["relative/dir"]}, "absolute"),
        ({"roots": ["/nonexistent/trustflow-root"]}, "existing directory"),
        ({"roots": ["/"]}, "confines nothing"),
        ({"roots": [None]}, "absolute"),
        ({"roots": ["{tmp}"], "root": "/x"}, "unknown key"),
        ({"roots": ["{tmp}"], "chunk_size": 0}, "chunk_size"),
        ({"roots": ["{tmp}"], "chunk_size": "4096"}, "chunk_size"),
        ({"roots": ["{tmp}"], "chunk_size": True}, "chunk_size"),
        ({"roots": ["{tmp}"], "file_mode": "rw-"}, "octal"),
        ({"roots": ["{tmp}"], "file_mode": 0o4755}, "file_mode"),
        ({"roots": ["{tmp}"], "file_mode": 6.0}, "file_mode"),
    ],
)
def test_bad_settings_are_invalid(
    tmp_path: Path, settings: dict[str, Any] | None, message: str
) -> None:
    if settings and settings.get("roots") == ["{tmp}"]:
        settings = {**settings, "roots": [str(tmp_path)]}
    with pytest.raises(InvalidInput, match=message):
        LocalStorage.from_settings(settings)


def test_regular_file_as_root_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInput, match="existing directory"):
        LocalStorage.from_settings({"roots": [str(tmp_path / "file")]})


# ---- file modes -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_written_files_default_to_mode_0600(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        async with LocalStorage.from_settings({"roots": [str(tmp_path)]}) as storage:
            await storage.write_bytes(str(tmp_path / "new.txt"), b"secret")
            existing = tmp_path / "existing.txt"
            existing.write_text("old")
            existing.chmod(0o644)
            await storage.write_bytes(str(existing), b"secret")
    finally:
        os.umask(old_umask)
    assert mode_of(tmp_path / "new.txt") == 0o600
    assert mode_of(existing) == 0o600
    assert existing.read_bytes() == b"secret"


@pytest.mark.parametrize("file_mode", [0o640, "0640"])
@pytest.mark.asyncio
async def test_file_mode_setting(tmp_path: Path, file_mode: int | str) -> None:
    async with LocalStorage.from_settings(
        {"roots": [str(tmp_path)], "file_mode": file_mode}
    ) as storage:
        await storage.write_bytes(str(tmp_path / "shared.txt"), b"x")
    assert mode_of(tmp_path / "shared.txt") == 0o640


# ---- crash safety -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_crash_mid_write_leaves_no_temp_files(tmp_path: Path) -> None:
    async with LocalStorage.from_settings({"roots": [str(tmp_path)], "chunk_size": 16}) as storage:
        target = tmp_path / "deep" / "dir" / "out.bin"
        with pytest.raises(Boom):
            await storage.write(str(target), failing(os.urandom(100), 16))
        assert not target.exists()
        assert temp_files(tmp_path) == []

        target.write_bytes(b"old")
        with pytest.raises(Boom):
            await storage.write(str(target), failing(os.urandom(100), 16))
        assert target.read_bytes() == b"old"
        assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


@pytest.mark.asyncio
async def test_non_bytes_chunk_aborts_the_write(tmp_path: Path) -> None:
    async def text() -> AsyncIterator[Any]:
        yield b"ok"
        yield "not bytes"

    async with LocalStorage.from_settings({"roots": [str(tmp_path)]}) as storage:
        with pytest.raises(InvalidInput, match="bytes"):
            await storage.write(str(tmp_path / "t.bin"), text())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.asyncio
async def test_cancelled_write_leaves_no_temp_files(tmp_path: Path) -> None:
    async with LocalStorage.from_settings({"roots": [str(tmp_path)]}) as storage:
        target = tmp_path / "cancelled.bin"
        target.write_bytes(b"old")
        gate = Gate(os.urandom(1000), b"never")
        writing = asyncio.create_task(storage.write(str(target), gate.chunks()))
        await asyncio.wait_for(gate.started.wait(), 30)
        (pending,) = temp_files(tmp_path)  # the hidden temporary file exists meanwhile
        assert await storage.list(str(tmp_path)) == [ObjectInfo(str(target), 3)]
        assert await storage.list(str(pending)) == []
        writing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writing
    assert target.read_bytes() == b"old"
    assert temp_files(tmp_path) == []


@pytest.mark.asyncio
async def test_temp_file_names_are_reserved(tmp_path: Path) -> None:
    async with LocalStorage.from_settings({"roots": [str(tmp_path)]}) as storage:
        with pytest.raises(InvalidInput, match="reserved"):
            await storage.write_bytes(str(tmp_path / f".x.abc{TEMP_SUFFIX}"), b"x")


# ---- reading ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_default_read_chunk_size_is_the_setting(tmp_path: Path) -> None:
    data = os.urandom(1000)
    (tmp_path / "f.bin").write_bytes(data)
    async with LocalStorage.from_settings({"roots": [str(tmp_path)], "chunk_size": 64}) as storage:
        chunks = [c async for c in storage.read(str(tmp_path / "f.bin"))]
        assert len(chunks) == -(-len(data) // 64)
        assert all(len(c) <= 64 for c in chunks)
        assert b"".join(chunks) == data
        with pytest.raises(InvalidInput, match="chunk_size"):
            async for _ in storage.read(str(tmp_path / "f.bin"), chunk_size=0):
                pass


@pytest.mark.asyncio
async def test_compat_vectors_copy_through_storage(
    tmp_path: Path, compat_dir: Path, compat_manifest: dict[str, Any]
) -> None:
    """Copy every vector file from the (read-only) compat directory via the storage and
    compare the SHA-256 recorded in the manifest."""
    hashes: dict[str, str] = compat_manifest["sha256"]
    assert hashes
    settings = {"roots": [str(compat_dir), str(tmp_path)], "chunk_size": 8192}
    async with LocalStorage.from_settings(settings) as storage:
        for relative, expected in hashes.items():
            source = (compat_dir / relative).as_uri()
            copy = str(tmp_path / relative)
            info = await storage.write(copy, storage.read(source))
            assert info == await storage.stat(copy)
            assert info.size == (compat_dir / relative).stat().st_size
            digest = hashlib.sha256()
            async for chunk in storage.read(copy):
                digest.update(chunk)
            assert digest.hexdigest() == expected, relative
        listed = await storage.list(str(tmp_path))
        assert [i.uri for i in listed] == sorted(str(tmp_path / r) for r in hashes)
