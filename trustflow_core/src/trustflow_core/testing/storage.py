"""Conformance kit for :class:`~trustflow_core.storage.Storage` backends.

Subclass :class:`StorageConformance` in a test module and override its fixtures::

    class TestMyStorageConformance(StorageConformance):
        @pytest_asyncio.fixture
        async def storage(self, tmp_path):
            async with MyStorage.from_settings({...}) as s:
                yield s

        @pytest.fixture
        def base_uri(self, tmp_path):
            return "my://bucket/" + tmp_path.name

Abstract fixtures (raise ``NotImplementedError`` until overridden):

* ``storage`` — an opened backend.
* ``base_uri`` — a writable prefix URI, empty and used by this test only. Tests address
  objects as ``f"{base_uri}/<relative key>"`` with plain ASCII keys.

Parameters and capability flags (defaults are the strict answer):

* ``chunk_size`` — bytes; objects "larger than a chunk" are ``3 * chunk_size + 17`` bytes and
  reads are requested with it. Default :data:`~trustflow_core.storage.DEFAULT_CHUNK_SIZE`;
  backends make it smaller to keep the suite fast.
* ``supports_empty_objects`` — zero-byte objects can be written and read (True).
* ``read_is_snapshot`` — a read that has started keeps returning the content it started with
  even if the object is overwritten meanwhile (True).

Listing uses directory semantics on every backend: ``list(f"{base}/d")`` and
``list(f"{base}/d/")`` return the objects below ``d/`` only, never ``dx/...`` or ``d.txt``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable

import pytest
import pytest_asyncio

from trustflow_core.errors import ObjectNotFound
from trustflow_core.storage import DEFAULT_CHUNK_SIZE, ObjectInfo, Storage


class Boom(Exception):
    """Raised by the kit's failing chunk iterators; the backend must let it propagate."""


def join(base: str, key: str) -> str:
    """``base`` and a relative ``key`` joined by one ``/``."""
    return f"{base.rstrip('/')}/{key}"


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    """Yield ``data`` in pieces of ``size`` bytes, yielding to the event loop between them."""
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


async def pieces(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    """Yield the given pieces as they are."""
    for part in parts:
        yield part
        await asyncio.sleep(0)


async def failing(prefix: bytes, size: int) -> AsyncIterator[bytes]:
    """Yield ``prefix`` in ``size`` pieces, then raise :class:`Boom`."""
    async for chunk in chunks_of(prefix, size):
        yield chunk
    raise Boom("chunk source failed midway")


class Gate:
    """A chunk source that yields one chunk, reports ``started`` once the backend asked for
    more (so the first chunk was consumed), and finishes after :meth:`release`."""

    def __init__(self, first: bytes, rest: bytes) -> None:
        self.first, self.rest = first, rest
        self.started = asyncio.Event()
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.first
        self.started.set()
        await self._released.wait()
        yield self.rest


async def read_all(storage: Storage, uri: str) -> bytes:
    return b"".join([chunk async for chunk in storage.read(uri)])


async def assert_missing(storage: Storage, uri: str) -> None:
    """``uri`` is absent: stat and reading raise ObjectNotFound (reading on first iteration
    at the latest)."""
    with pytest.raises(ObjectNotFound):
        await storage.stat(uri)
    with pytest.raises(ObjectNotFound):
        async for _ in storage.read(uri):
            pytest.fail(f"read of missing {uri!r} yielded data")


class StorageConformance:
    """Generic behaviour every storage backend must show. See the module docstring."""

    pytestmark = [pytest.mark.asyncio]  # inherited by subclasses in other modules

    # ---- fixtures to override ---------------------------------------------------------------

    @pytest_asyncio.fixture
    async def storage(self) -> Storage:
        raise NotImplementedError("override the 'storage' fixture: an opened backend")

    @pytest_asyncio.fixture
    async def base_uri(self) -> str:
        raise NotImplementedError("override the 'base_uri' fixture: a writable, empty prefix")

    @pytest.fixture
    def chunk_size(self) -> int:
        return DEFAULT_CHUNK_SIZE

    @pytest.fixture
    def supports_empty_objects(self) -> bool:
        return True

    @pytest.fixture
    def read_is_snapshot(self) -> bool:
        return True

    # ---- round trips ------------------------------------------------------------------------

    @pytest.mark.parametrize("size", ["empty", "small", "multi_chunk"])
    async def test_write_read_round_trip(
        self,
        storage: Storage,
        base_uri: str,
        chunk_size: int,
        supports_empty_objects: bool,
        size: str,
    ) -> None:
        if size == "empty" and not supports_empty_objects:
            pytest.skip("backend does not support empty objects")
        length = {"empty": 0, "small": 100, "multi_chunk": 3 * chunk_size + 17}[size]
        data = os.urandom(length)
        uri = join(base_uri, f"round/{size}.bin")
        info = await storage.write(uri, chunks_of(data, chunk_size))
        assert info == ObjectInfo(uri, length)
        assert await read_all(storage, uri) == data
        assert await storage.read_bytes(uri) == data
        assert await storage.stat(uri) == ObjectInfo(uri, length)

    async def test_write_accepts_uneven_chunks(
        self, storage: Storage, base_uri: str, chunk_size: int
    ) -> None:
        parts = [os.urandom(n) for n in (1, chunk_size - 1, chunk_size + 1, 0, 2 * chunk_size, 3)]
        uri = join(base_uri, "uneven.bin")
        info = await storage.write(uri, pieces(parts))
        assert info.size == sum(map(len, parts))
        assert await storage.read_bytes(uri) == b"".join(parts)

    async def test_write_bytes_helper_round_trip(self, storage: Storage, base_uri: str) -> None:
        uri = join(base_uri, "helper.txt")
        assert await storage.write_bytes(uri, b"hello") == ObjectInfo(uri, 5)
        assert await storage.read_bytes(uri) == b"hello"

    async def test_read_streams_in_bounded_chunks(
        self, storage: Storage, base_uri: str, chunk_size: int
    ) -> None:
        data = os.urandom(3 * chunk_size + 17)
        uri = join(base_uri, "stream.bin")
        await storage.write(uri, chunks_of(data, chunk_size))
        chunks = [chunk async for chunk in storage.read(uri, chunk_size=chunk_size)]
        assert len(chunks) > 1
        assert all(0 < len(chunk) <= chunk_size for chunk in chunks)
        assert b"".join(chunks) == data
        smaller = max(1, chunk_size // 3)
        chunks = [chunk async for chunk in storage.read(uri, chunk_size=smaller)]
        assert all(0 < len(chunk) <= smaller for chunk in chunks)
        assert b"".join(chunks) == data

    async def test_abandoned_read_can_be_closed(
        self, storage: Storage, base_uri: str, chunk_size: int
    ) -> None:
        data = os.urandom(2 * chunk_size + 1)
        uri = join(base_uri, "abandoned.bin")
        await storage.write(uri, chunks_of(data, chunk_size))
        reader = storage.read(uri, chunk_size=chunk_size)
        assert await anext(reader) == data[:chunk_size]
        await reader.aclose()  # type: ignore[attr-defined]
        await storage.delete(uri)
        await assert_missing(storage, uri)

    # ---- overwrite and atomicity ------------------------------------------------------------

    async def test_overwrite_replaces_content(
        self, storage: Storage, base_uri: str, chunk_size: int
    ) -> None:
        uri = join(base_uri, "over.bin")
        await storage.write(uri, chunks_of(os.urandom(2 * chunk_size + 5), chunk_size))
        new = os.urandom(10)
        assert await storage.write(uri, chunks_of(new, chunk_size)) == ObjectInfo(uri, len(new))
        assert await storage.read_bytes(uri) == new
        assert await storage.list(base_uri) == [ObjectInfo(uri, len(new))]

    async def test_failed_write_leaves_no_object(
        self, storage: Storage, base_uri: str, chunk_size: int
    ) -> None:
        uri = join(base_uri, "fail/new.bin")
        with pytest.raises(Boom):
            await storage.write(uri, failing(os.urandom(2 * chunk_size), chunk_size))
        await assert_missing(storage, uri)
        assert await storage.list(base_uri) == []

    async def test_failed_overwrite_keeps_old_content(
        self, storage: Storage, base_uri: str, chunk_size: int
    ) -> None:
        uri = join(base_uri, "fail/old.bin")
        old = os.urandom(chunk_size + 3)
        await storage.write(uri, chunks_of(old, chunk_size))
        with pytest.raises(Boom):
            await storage.write(uri, failing(os.urandom(2 * chunk_size), chunk_size))
        assert await storage.read_bytes(uri) == old
        assert await storage.list(base_uri) == [ObjectInfo(uri, len(old))]

    async def test_write_in_progress_is_invisible(
        self, storage: Storage, base_uri: str, chunk_size: int
    ) -> None:
        uri = join(base_uri, "pending/new.bin")
        gate = Gate(os.urandom(chunk_size), os.urandom(7))
        writing = asyncio.create_task(storage.write(uri, gate.chunks()))
        try:
            await asyncio.wait_for(gate.started.wait(), 30)
            assert await storage.list(base_uri) == []
            await assert_missing(storage, uri)
        finally:
            gate.release()
            info = await writing
        assert info == ObjectInfo(uri, chunk_size + 7)
        assert await storage.list(base_uri) == [info]

    async def test_overwrite_in_progress_keeps_old_visible(
        self, storage: Storage, base_uri: str, chunk_size: int
    ) -> None:
        uri = join(base_uri, "pending/old.bin")
        old = os.urandom(5)
        await storage.write_bytes(uri, old)
        gate = Gate(os.urandom(chunk_size), os.urandom(7))
        writing = asyncio.create_task(storage.write(uri, gate.chunks()))
        try:
            await asyncio.wait_for(gate.started.wait(), 30)
            assert await storage.read_bytes(uri) == old
            assert await storage.list(base_uri) == [ObjectInfo(uri, len(old))]
        finally:
            gate.release()
            await writing
        assert await storage.read_bytes(uri) == gate.first + gate.rest

    async def test_read_started_before_overwrite_sees_old_content(
        self, storage: Storage, base_uri: str, chunk_size: int, read_is_snapshot: bool
    ) -> None:
        if not read_is_snapshot:
            pytest.skip("backend reads are not snapshots")
        uri = join(base_uri, "snapshot.bin")
        old = os.urandom(3 * chunk_size)
        await storage.write(uri, chunks_of(old, chunk_size))
        reader = storage.read(uri, chunk_size=chunk_size)
        got = [await anext(reader)]
        await storage.write(uri, chunks_of(os.urandom(3 * chunk_size), chunk_size))
        got += [chunk async for chunk in reader]
        assert b"".join(got) == old

    async def test_concurrent_writes_to_different_keys(
        self, storage: Storage, base_uri: str, chunk_size: int
    ) -> None:
        blobs = {join(base_uri, f"many/{i}.bin"): os.urandom(chunk_size + i) for i in range(8)}
        infos = await asyncio.gather(
            *(
                storage.write(uri, chunks_of(data, chunk_size // 2 or 1))
                for uri, data in blobs.items()
            )
        )
        assert infos == [ObjectInfo(uri, len(data)) for uri, data in blobs.items()]
        for uri, data in blobs.items():
            assert await storage.read_bytes(uri) == data
        assert await storage.list(join(base_uri, "many")) == sorted(infos, key=lambda i: i.uri)

    # ---- missing objects --------------------------------------------------------------------

    async def test_missing_object_raises_object_not_found(
        self, storage: Storage, base_uri: str
    ) -> None:
        await assert_missing(storage, join(base_uri, "absent.bin"))
        await assert_missing(storage, join(base_uri, "no/such/dir/absent.bin"))

    async def test_open_file_gives_what_read_gives(self, storage: Storage, base_uri: str) -> None:
        """A backend offering local files (``open_file`` not None) serves the same bytes
        through them as through ``read``, and the same ObjectNotFound for a missing object."""
        uri = join(base_uri, "local.bin")
        data = os.urandom(3 * 4096 + 17)
        await storage.write_bytes(uri, data)
        opened = await asyncio.to_thread(storage.open_file, uri)
        if opened is None:
            pytest.skip("the backend only streams (open_file is None)")
        with opened:
            assert opened.read() == data == await read_all(storage, uri)
        with pytest.raises(ObjectNotFound):
            await asyncio.to_thread(storage.open_file, join(base_uri, "absent.bin"))

    async def test_delete(self, storage: Storage, base_uri: str) -> None:
        keep, gone = join(base_uri, "del/keep.txt"), join(base_uri, "del/gone.txt")
        await storage.write_bytes(keep, b"keep")
        await storage.write_bytes(gone, b"gone")
        await storage.delete(gone)
        await assert_missing(storage, gone)
        assert await storage.list(base_uri) == [ObjectInfo(keep, 4)]
        with pytest.raises(ObjectNotFound):
            await storage.delete(gone)
        with pytest.raises(ObjectNotFound):
            await storage.delete(join(base_uri, "del/never.txt"))

    # ---- listing ----------------------------------------------------------------------------

    async def test_list_is_recursive_sorted_and_directory_scoped(
        self, storage: Storage, base_uri: str
    ) -> None:
        keys = ["d/sub/deeper/e", "d/b", "dx/f", "d/sub/c", "d.txt", "d/a"]
        for n, key in enumerate(keys):
            await storage.write_bytes(join(base_uri, key), b"x" * (n + 1))
        everything = await storage.list(base_uri)
        expected = sorted(
            (ObjectInfo(join(base_uri, key), n + 1) for n, key in enumerate(keys)),
            key=lambda info: info.uri,
        )
        assert everything == expected
        below_d = [info for info in expected if info.uri.startswith(join(base_uri, "d/"))]
        assert len(below_d) == 4
        assert await storage.list(join(base_uri, "d")) == below_d
        assert await storage.list(join(base_uri, "d/")) == below_d
        assert await storage.list(join(base_uri, "d/sub")) == below_d[2:]

    async def test_list_of_one_object(self, storage: Storage, base_uri: str) -> None:
        uri = join(base_uri, "one/file.txt")
        await storage.write_bytes(uri, b"12345")
        await storage.write_bytes(join(base_uri, "one/file.txt.bak"), b"1")
        assert await storage.list(uri) == [ObjectInfo(uri, 5)]

    async def test_list_of_missing_prefix_is_empty(self, storage: Storage, base_uri: str) -> None:
        assert await storage.list(base_uri) == []
        assert await storage.list(join(base_uri, "nothing")) == []
        assert await storage.list(join(base_uri, "nothing/deeper/")) == []
