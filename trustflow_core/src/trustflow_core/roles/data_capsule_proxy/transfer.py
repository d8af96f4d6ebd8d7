"""Streaming transforms between a chunk source and a sink, with memory bounded by one chunk
plus one capsule block whatever the file size. CPU work (AES-GCM) and file I/O run in worker
threads so the event loop keeps serving other requests."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import BinaryIO, Protocol

from ...errors import CapsuleFormatError, InvalidInput


class Transform(Protocol):
    """What a capsule encryptor/decryptor offers: incremental ``update`` and a final call."""

    def update(self, data: bytes) -> bytes: ...


def decrypting(key: bytes, file_len: int) -> Callable[[], tuple[Transform, bytes, Callable]]:
    """A factory of (decryptor, prologue, finish) for a capsule of ``file_len`` bytes; the
    reader auto-detects the upstream and v2 formats."""
    from ...capsule import open_reader

    def make() -> tuple[Transform, bytes, Callable]:
        reader = open_reader(key, file_len)
        return reader, b"", reader.finalize

    return make


def encrypting(key: bytes, plaintext_len: int, fmt: str) -> Callable[[], tuple]:
    """A factory of (encryptor, header, finish) writing format ``fmt`` (``v1`` or ``v2``)."""
    from ...capsule import open_writer

    def make() -> tuple[Transform, bytes, Callable]:
        writer = open_writer(fmt, key, plaintext_len)
        return writer, writer.header, writer.finalize

    return make


def copying() -> tuple[Transform, bytes, Callable]:
    class _Same:
        def update(self, data: bytes) -> bytes:
            return bytes(data)

    return _Same(), b"", lambda: b""


async def transformed(
    source: AsyncIterable[bytes],
    make: Callable[[], tuple[Transform, bytes, Callable]],
) -> AsyncIterator[bytes]:
    """Yield the transform of ``source``: prologue, ``update`` of each chunk (in a worker
    thread), then what ``finish`` returns (``None`` counts as nothing)."""
    transform, prologue, finish = make()
    if prologue:
        yield prologue
    async for chunk in source:
        out = await asyncio.to_thread(transform.update, chunk)
        if out:
            yield out
    tail = finish()
    if tail:
        yield tail


async def write_file(out: BinaryIO, chunks: AsyncIterable[bytes]) -> int:
    """Write ``chunks`` to ``out`` (a new staged file), fsync and close it; return its size.
    The caller removes the file on failure (it lives in staging)."""
    size = 0
    with out:
        async for chunk in chunks:
            await asyncio.to_thread(out.write, chunk)
            size += len(chunk)
        await asyncio.to_thread(out.flush)
        await asyncio.to_thread(os.fsync, out.fileno())
    return size


def check_length(actual: int, expected: int, what: str) -> None:
    if actual != expected:
        raise InvalidInput(f"{what} changed size while being read ({expected} -> {actual} bytes)")


__all__ = [
    "CapsuleFormatError",
    "check_length",
    "copying",
    "decrypting",
    "encrypting",
    "transformed",
    "write_file",
]
