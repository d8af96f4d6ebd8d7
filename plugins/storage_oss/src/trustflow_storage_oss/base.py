"""What the S3 and OSS backends share: URIs, retries, streaming, multipart writes, listing.

A subclass provides the blocking SDK primitives (``_put``, ``_open``, ``_head``, ...) and the
error translation; this class runs every primitive in a worker thread
(:func:`asyncio.to_thread`) and retries it with exponential backoff when the subclass calls the
error transient (connection failures, timeouts, HTTP 5xx, throttling).

Atomic visibility
  An object smaller than ``part_size`` is buffered and stored with one PUT, which object stores
  make visible atomically. A larger one is sent as a multipart upload whose parts are invisible
  until the final *complete* call; if the chunk source or the store fails before that, the
  upload is aborted. So a failed write leaves nothing at the destination and an overwrite keeps
  the old object until the new one is complete. If the process dies mid-upload, the uploaded
  parts stay as an *incomplete multipart upload* — invisible to reads and listings, but billed
  until removed; configure a lifecycle rule that aborts incomplete uploads after a day.

Memory
  A write buffers at most one part (``part_size``, doubled every 1000 parts so that objects up
  to 10000 parts fit) plus one incoming chunk; a read holds one chunk.

Listing
  Directory semantics: ``list("s3://b/d")`` and ``list("s3://b/d/")`` return the objects below
  ``d/``; ``list`` of a URI naming an object returns that object (and any below ``key/``).
  Keys ending in ``/`` (the empty "folder" markers some consoles create) are not listed.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from typing import Any, BinaryIO, ClassVar, TypeVar

from trustflow_core.errors import (
    BackendUnavailable,
    InvalidInput,
    ObjectNotFound,
    TrustflowError,
)
from trustflow_core.storage import ObjectInfo, Storage
from typing_extensions import Self

from .config import ObjectStoreConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
PARTS_PER_SIZE_STEP = 1000
MAX_BACKOFF = 5.0


class ObjectStorage(Storage, abc.ABC):
    """Base of the object-store backends. See the module docstring."""

    scheme: ClassVar[str]
    #: Top-level module of the SDK; the backend is unviable when it is not installed.
    sdk_module: ClassVar[str]
    #: The extra of trustflow-storage-oss that installs the SDK (named when it is missing).
    sdk_extra: ClassVar[str]

    def __init__(self, config: ObjectStoreConfig) -> None:
        self.config = config
        self.chunk_size = config.chunk_size

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        return cls(ObjectStoreConfig.from_settings(cls.name, settings))

    @classmethod
    def unviable_reason(cls) -> str | None:
        import importlib.util

        try:
            spec = importlib.util.find_spec(cls.sdk_module)
        except ImportError:  # a finder that refuses the name: not importable either
            spec = None
        if spec is None:
            return (
                f"the {cls.sdk_module} package is not installed: "
                f"pip install 'trustflow-storage-oss[{cls.sdk_extra}]'"
            )
        return None

    # ---- SDK primitives (blocking; run in worker threads) ----------------------------------

    @abc.abstractmethod
    def _put(self, bucket: str, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def _open(self, bucket: str, key: str) -> BinaryIO:
        """A readable body with ``read(n)`` and ``close()``."""

    @abc.abstractmethod
    def _head(self, bucket: str, key: str) -> int:
        """The object's size."""

    @abc.abstractmethod
    def _list(self, bucket: str, prefix: str) -> Iterable[tuple[str, int]]:
        """``(key, size)`` of every object whose key starts with ``prefix`` (all pages)."""

    @abc.abstractmethod
    def _delete(self, bucket: str, key: str) -> None: ...

    @abc.abstractmethod
    def _bucket_exists(self, bucket: str) -> bool: ...

    @abc.abstractmethod
    def _mpu_start(self, bucket: str, key: str) -> str:
        """Start a multipart upload; return its id."""

    @abc.abstractmethod
    def _mpu_part(self, bucket: str, key: str, upload: str, number: int, data: bytes) -> str:
        """Upload part ``number`` (from 1); return its ETag."""

    @abc.abstractmethod
    def _mpu_complete(
        self, bucket: str, key: str, upload: str, parts: list[tuple[int, str]]
    ) -> None: ...

    @abc.abstractmethod
    def _mpu_abort(self, bucket: str, key: str, upload: str) -> None: ...

    @abc.abstractmethod
    def _transient(self, exc: BaseException) -> bool:
        """Whether retrying the request may succeed."""

    @abc.abstractmethod
    def _translate(self, exc: BaseException, what: str) -> BaseException:
        """The Trustflow error for an SDK error (other exceptions are returned unchanged)."""

    # ---- plumbing ----------------------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, retry: bool = True) -> T:
        """Run ``fn(*args)`` in a thread, retrying transient errors; translate SDK errors."""
        delay = self.config.retry_backoff
        attempts = self.config.retries if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                return await asyncio.to_thread(fn, *args)
            except TrustflowError:
                raise
            except Exception as exc:
                if attempt < attempts and self._transient(exc):
                    log.warning("%s: %s (attempt %d/%d), retrying", what, exc, attempt, attempts)
                    await asyncio.sleep(min(delay, MAX_BACKOFF) * random.uniform(0.5, 1.0))  # noqa: S311 (jitter)
                    delay *= 2
                    continue
                translated = self._translate(exc, what)
                if translated is exc:
                    raise
                raise translated from exc
        raise AssertionError("unreachable")

    def _object(self, uri: str) -> tuple[str, str]:
        bucket, key = self.config.locate(self.scheme, uri)
        if not key or key.endswith("/"):
            raise InvalidInput(f"{uri!r} names a bucket or directory, not an object")
        return bucket, key

    # ---- Storage -----------------------------------------------------------------------------

    async def read(self, uri: str, *, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        size = self.chunk_size if chunk_size is None else chunk_size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise InvalidInput(f"chunk_size must be a positive int, got {size!r}")
        bucket, key = self._object(uri)
        body = await self._call(f"read {uri}", self._open, bucket, key)
        try:
            while True:
                data = await self._call(f"read {uri}", body.read, size, retry=False)
                if not data:
                    break
                for start in range(0, len(data), size):
                    yield data[start : start + size]
        finally:
            await asyncio.to_thread(body.close)

    async def stat(self, uri: str) -> ObjectInfo:
        bucket, key = self._object(uri)
        try:
            size = await self._call(f"stat {uri}", self._head, bucket, key)
        except ObjectNotFound:
            await self._require_bucket(bucket)
            raise
        return ObjectInfo(uri, size)

    async def list(self, uri: str) -> list[ObjectInfo]:
        bucket, key = self.config.locate(self.scheme, uri)
        directory = not key or key.endswith("/")
        found = await self._call(f"list {uri}", _materialize, self._list, bucket, key)
        base = f"{self.scheme}://{bucket}/"
        infos = [
            ObjectInfo(base + k, size)
            for k, size in found
            if (directory or k == key or k.startswith(key + "/")) and not k.endswith("/")
        ]
        return sorted(infos, key=lambda info: info.uri)

    async def delete(self, uri: str) -> None:
        await self.stat(uri)  # object stores delete missing keys silently
        bucket, key = self._object(uri)
        await self._call(f"delete {uri}", self._delete, bucket, key)

    async def write(self, uri: str, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        bucket, key = self._object(uri)
        what = f"write {uri}"
        part_size = self.config.part_size
        buffer = bytearray()
        upload: str | None = None
        parts: list[tuple[int, str]] = []
        size = 0
        try:
            async for chunk in chunks:
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise InvalidInput(f"{what}: chunks must be bytes, got {chunk!r:.40}")
                buffer += chunk
                size += memoryview(chunk).nbytes
                while len(buffer) >= part_size:
                    if upload is None:
                        upload = await self._call(what, self._mpu_start, bucket, key)
                    data = bytes(buffer[:part_size])
                    del buffer[:part_size]
                    number = len(parts) + 1
                    etag = await self._call(what, self._mpu_part, bucket, key, upload, number, data)
                    parts.append((number, etag))
                    if number % PARTS_PER_SIZE_STEP == 0:
                        part_size *= 2
            if upload is None:
                await self._call(what, self._put, bucket, key, bytes(buffer))
            else:
                if buffer:
                    number = len(parts) + 1
                    data = bytes(buffer)
                    buffer.clear()
                    etag = await self._call(what, self._mpu_part, bucket, key, upload, number, data)
                    parts.append((number, etag))
                await self._call(what, self._mpu_complete, bucket, key, upload, parts)
                upload = None
        except BaseException:
            if upload is not None:
                await self._abort(bucket, key, upload)
            raise
        return ObjectInfo(uri, size)

    async def _abort(self, bucket: str, key: str, upload: str) -> None:
        """Abort a multipart upload, best effort, even while the caller is being cancelled."""
        try:
            await asyncio.shield(asyncio.to_thread(self._mpu_abort, bucket, key, upload))
        except Exception as exc:  # the store is failing; the parts stay invisible
            log.warning("could not abort multipart upload of %s/%s: %s", bucket, key, exc)

    async def _require_bucket(self, bucket: str) -> None:
        if not await self._call(f"check bucket {bucket}", self._bucket_exists, bucket):
            raise BackendUnavailable(
                f"{self.name} storage: bucket {bucket!r} does not exist at "
                f"{self.config.endpoint_url}"
            )


def _materialize(fn: Callable[..., Iterable[T]], *args: Any) -> list[T]:
    """Run a paginating generator to the end (in the worker thread)."""
    return [*fn(*args)]
