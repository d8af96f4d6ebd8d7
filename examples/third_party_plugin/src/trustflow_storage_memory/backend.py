"""``MemoryStorage``: objects in a dict, written atomically by swapping in complete values."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import ClassVar

from trustflow_core.errors import InvalidInput, ObjectNotFound
from trustflow_core.storage import DEFAULT_CHUNK_SIZE, ObjectInfo, Storage

SCHEME = "mem://"


def _key(uri: str) -> str:
    if not uri.startswith(SCHEME):
        raise InvalidInput(f"memory storage serves {SCHEME} URIs, got {uri!r}")
    return uri[len(SCHEME) :]


class MemoryStorage(Storage):
    """A non-persistent object store. One instance = one namespace."""

    name: ClassVar[str] = "memory"
    schemes: ClassVar[tuple[str, ...]] = ("mem",)

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}

    async def read(self, uri: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        data = self._objects.get(_key(uri))
        if data is None:
            raise ObjectNotFound(f"no object {uri!r}")
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    async def write(self, uri: str, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        key = _key(uri)
        if not key or key.endswith("/"):
            raise InvalidInput(f"{uri!r} names a prefix, not an object")
        data = b"".join([chunk async for chunk in chunks])  # complete before it becomes visible
        self._objects[key] = data
        return ObjectInfo(uri, len(data))

    async def stat(self, uri: str) -> ObjectInfo:
        data = self._objects.get(_key(uri))
        if data is None:
            raise ObjectNotFound(f"no object {uri!r}")
        return ObjectInfo(uri, len(data))

    async def list(self, uri: str) -> list[ObjectInfo]:
        key = _key(uri)
        if key in self._objects:
            return [ObjectInfo(uri, len(self._objects[key]))]
        prefix = key if not key or key.endswith("/") else key + "/"
        return [
            ObjectInfo(SCHEME + k, len(v))
            for k, v in sorted(self._objects.items())
            if k.startswith(prefix)
        ]

    async def delete(self, uri: str) -> None:
        if self._objects.pop(_key(uri), None) is None:
            raise ObjectNotFound(f"no object {uri!r}")
