"""``MemoryStorage``: objects in a dict, written atomically by swapping in complete values."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from trustflow_core.errors import InvalidInput, ObjectNotFound
from trustflow_core.storage import DEFAULT_CHUNK_SIZE, ObjectInfo, Storage

if TYPE_CHECKING:
    from typing_extensions import Self

SCHEME = "mem://"
#: The settings a role gives an object store (the Data Capsule Proxy, for a request's
#: ``s3_config``): ``endpoint`` and ``bucket`` choose the namespace, the others are ignored.
OBJECT_STORE_SETTINGS = frozenset(
    {
        "endpoint",
        "bucket",
        "access_key_id",
        "access_key_secret",
        "sts_token",
        "region",
        "secure",
        "cert_check",
        "chunk_size",
    }
)
_SHARED: dict[str, dict[str, bytes]] = {}


def _key(uri: str) -> str:
    if not uri.startswith(SCHEME):
        raise InvalidInput(f"memory storage serves {SCHEME} URIs, got {uri!r}")
    return uri[len(SCHEME) :]


class MemoryStorage(Storage):
    """A non-persistent object store. Built without settings, an instance is a namespace of
    its own; built as an object store (``endpoint``, ``bucket``), it shares the namespace of
    every instance built for the same endpoint in this process, so that a role opening the
    store per request sees what earlier requests wrote."""

    name: ClassVar[str] = "memory"
    schemes: ClassVar[tuple[str, ...]] = ("mem",)

    def __init__(self, objects: dict[str, bytes] | None = None) -> None:
        self._objects: dict[str, bytes] = {} if objects is None else objects

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        s = dict(settings or {})
        if not s:
            return cls()
        unknown = sorted(set(s) - OBJECT_STORE_SETTINGS)
        if unknown:
            raise InvalidInput(f"storage 'memory' got unknown setting(s) {unknown}")
        endpoint, bucket = s.get("endpoint"), s.get("bucket")
        if not (isinstance(endpoint, str) and endpoint and isinstance(bucket, str) and bucket):
            raise InvalidInput("storage 'memory' as an object store needs 'endpoint' and 'bucket'")
        return cls(_SHARED.setdefault(endpoint, {}))

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
