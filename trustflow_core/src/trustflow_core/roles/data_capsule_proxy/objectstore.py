"""The object store a request names in its ``s3_config``: allowed endpoints only, and errors
that carry no connection details.

A request may name any ``endpoint``, so without a check the proxy would connect wherever an
app asks and report what it found (a port scanner behind the proxy). Deny by default: only the
endpoints configured with ``--allowed-object-store-endpoint`` (setting
``allowed_object_store_endpoints``) are contacted; any other is refused (403) before a backend
is even built. Errors of the store itself reach the client as a short reason naming the
operation and the object URI; the endpoint, addresses and OS errors behind them go to the
proxy's log only.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, ClassVar

from ...errors import AccessDenied, BackendUnavailable, InvalidInput, ObjectNotFound
from ...manager import TrustflowPluginManager
from ...registry import STORAGE, backend_class
from ...storage import DEFAULT_CHUNK_SIZE, ObjectInfo, Storage
from .settings import DataCapsuleProxySettings

log = logging.getLogger("trustflow.data_capsule_proxy")
MINIO = 2  # S3StorageType.S3_STORAGE_TYPE_MINIO
SETTING = "--allowed-object-store-endpoint (allowed_object_store_endpoints)"
BACKEND_SETTING = "--object-store-backend (object_stores)"


@contextlib.asynccontextmanager
async def open_object_store(
    settings: DataCapsuleProxySettings,
    pm: TrustflowPluginManager,
    config: Any,
    present: Any,
) -> AsyncIterator[tuple[Storage, str]]:
    """The object-store backend for an ``S3Config`` (wrapped in :class:`QuietObjectStore`) and
    the URI of its ``path``. ``type`` MINIO selects the ``minio`` entry of the settings'
    ``object_stores`` (``s3`` by default), OSS/unspecified the ``oss`` one (``oss``); a type
    switched off is refused (403). ``cert_check`` is true unless ``present`` shows it was sent
    as false."""
    if not config.endpoint or not config.bucket:
        raise InvalidInput("s3_config.endpoint and s3_config.bucket are required")
    if not settings.object_store_allowed(config.endpoint):
        raise AccessDenied(
            f"object-store endpoint {config.endpoint!r} is not allowed: the proxy contacts only "
            f"the endpoints configured with {SETTING}"
        )
    kind = "minio" if config.type == MINIO else "oss"
    name = settings.object_store_backend(kind)
    if name is None:
        raise AccessDenied(
            f"object-store type {kind!r} is not enabled: the proxy serves only the types "
            f"configured with {BACKEND_SETTING}"
        )
    cls = backend_class(pm, STORAGE, name)
    backend_settings = {
        "endpoint": config.endpoint,
        "bucket": config.bucket,
        "access_key_id": config.access_key_id,
        "access_key_secret": config.access_key_secret,
        "sts_token": config.sts_token,
        "region": config.region,
        "secure": config.secure,
        "cert_check": config.cert_check if "cert_check" in present else True,
        "chunk_size": settings.chunk_size,
    }
    path = config.path.strip("/")
    async with cls.from_role(backend_settings, pm=pm) as storage:
        yield (
            QuietObjectStore(storage, config.endpoint),
            f"{cls.schemes[0]}://{config.bucket}/{path}",
        )


class QuietObjectStore(Storage):
    """A storage backend whose failures are re-raised without connection details: not-found
    and access-denied keep their class (404/403) with a message naming only the URI, anything
    else becomes :class:`BackendUnavailable` (500); the original is logged with the endpoint.
    Errors of a write's own chunk source pass through unchanged."""

    name: ClassVar[str] = "object-store"
    schemes: ClassVar[tuple[str, ...]] = ("s3", "oss")

    def __init__(self, inner: Storage, endpoint: str) -> None:
        self.inner = inner
        self.endpoint = endpoint

    def _quiet(self, exc: Exception, op: str, uri: str) -> Exception:
        log.warning("object store %s: %s %r failed: %s", self.endpoint, op, uri, exc)
        if isinstance(exc, ObjectNotFound):
            return ObjectNotFound(f"object store: no object at {uri!r}")
        if isinstance(exc, AccessDenied):
            return AccessDenied(f"object store: access to {uri!r} denied")
        if isinstance(exc, InvalidInput):
            return exc  # about the request's own names, not the connection
        return BackendUnavailable(
            f"object store: {op} {uri!r} failed (the cause is in the proxy's log)"
        )

    async def read(self, uri: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.inner.read(uri, chunk_size=chunk_size):
                yield chunk
        except Exception as exc:
            raise self._quiet(exc, "read", uri) from None

    async def write(self, uri: str, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        failed: list[BaseException] = []

        async def watched() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    yield chunk
            except BaseException as exc:
                failed.append(exc)
                raise

        try:
            return await self.inner.write(uri, watched())
        except Exception as exc:
            if exc in failed:
                raise
            raise self._quiet(exc, "write", uri) from None

    async def stat(self, uri: str) -> ObjectInfo:
        try:
            return await self.inner.stat(uri)
        except Exception as exc:
            raise self._quiet(exc, "stat", uri) from None

    async def list(self, uri: str) -> builtins.list[ObjectInfo]:
        try:
            return await self.inner.list(uri)
        except Exception as exc:
            raise self._quiet(exc, "list", uri) from None

    async def delete(self, uri: str) -> None:
        try:
            await self.inner.delete(uri)
        except Exception as exc:
            raise self._quiet(exc, "delete", uri) from None
