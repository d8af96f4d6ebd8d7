"""Storage contract: read, write and list objects by URI (``file://``, ``s3://``, ``oss://``).

Reads and writes stream in chunks so memory stays bounded whatever the object size.
Writes are atomic: readers see either the old object or the complete new one, never a
partial one, and a failed write leaves nothing new behind.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO, ClassVar

from .backend import Backend

DEFAULT_CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    """An object (file) in a storage backend."""

    uri: str
    size: int


class Storage(Backend, abc.ABC):
    """An object store addressed by URIs of the schemes in ``schemes``."""

    kind: ClassVar[str] = "storage"
    #: URI schemes this backend serves, e.g. ``("file",)`` or ``("s3", "oss")``.
    schemes: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def read(self, uri: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        """Yield the object's bytes in chunks of at most ``chunk_size``.

        A missing object raises :class:`~trustflow_core.errors.ObjectNotFound` and a URI
        outside the backend's allowed roots :class:`~trustflow_core.errors.AccessDenied`,
        both on first iteration at the latest.
        """

    @abc.abstractmethod
    async def write(self, uri: str, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        """Store the concatenation of ``chunks`` at ``uri`` atomically and return its info.

        If ``chunks`` raises or the backend fails, the exception propagates and ``uri`` keeps
        its previous state (absent or the old content); no temporary object is left visible.
        """

    @abc.abstractmethod
    async def stat(self, uri: str) -> ObjectInfo:
        """Return the object's info or raise :class:`~trustflow_core.errors.ObjectNotFound`."""

    @abc.abstractmethod
    async def list(self, uri: str) -> list[ObjectInfo]:
        """Return every object under the prefix/directory ``uri`` (recursively), sorted by URI.
        A prefix with no objects returns ``[]``; a URI naming one object returns just it."""

    @abc.abstractmethod
    async def delete(self, uri: str) -> None:
        """Delete one object or raise :class:`~trustflow_core.errors.ObjectNotFound`."""

    def open_file(self, uri: str) -> BinaryIO | None:
        """A blocking binary file open for reading the object at ``uri`` (the caller closes
        it), offered by backends whose objects are local files so that a caller can move the
        bytes in one worker thread (``readinto``, ``copy_file_range``) instead of chunk by
        chunk through :meth:`read`. Blocking: call it from a worker thread. Same errors as
        :meth:`read`. ``None``, the default, means the backend only streams through
        :meth:`read`."""
        return None

    async def read_bytes(self, uri: str) -> bytes:
        """Read a whole (small) object into memory."""
        return b"".join([chunk async for chunk in self.read(uri)])

    async def write_bytes(self, uri: str, data: bytes) -> ObjectInfo:
        """Write a whole (small) object atomically."""

        async def once() -> AsyncIterator[bytes]:
            yield data

        return await self.write(uri, once())
