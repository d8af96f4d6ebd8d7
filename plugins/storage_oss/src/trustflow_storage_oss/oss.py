"""The ``oss`` storage backend: Alibaba Cloud OSS via oss2.

URIs ``oss://bucket/key``; settings in :mod:`trustflow_storage_oss.config`. Credentials:
``access_key_id``/``access_key_secret`` (OSS signature v1), plus ``sts_token`` for temporary
credentials; none → anonymous requests. ``region`` is not used (v1 signatures carry none).
IP-address and ``localhost`` endpoints are addressed path-style (oss2's rule), others as
``bucket.endpoint``. ``timeout`` applies to each request; oss2 itself does not retry, so
:class:`~trustflow_storage_oss.base.ObjectStorage` retries transient errors.

Errors: ``NoSuchKey``/404 → ObjectNotFound; ``NoSuchBucket`` → BackendUnavailable; 403
(``AccessDenied``, ``InvalidAccessKeyId``, ``SignatureDoesNotMatch``, expired STS token) →
AccessDenied; network errors, timeouts, 5xx and other refusals → BackendUnavailable.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, BinaryIO, ClassVar

from trustflow_core.errors import AccessDenied, BackendUnavailable, ObjectNotFound

from .base import ObjectStorage
from .config import ObjectStoreConfig

#: A key only read (never written) to tell a missing bucket from a missing object.
PROBE_KEY = ".trustflow-bucket-probe"


class OssStorage(ObjectStorage):
    """Alibaba Cloud OSS. See the module docstring."""

    name: ClassVar[str] = "oss"
    scheme: ClassVar[str] = "oss"
    schemes: ClassVar[tuple[str, ...]] = ("oss",)
    sdk_module: ClassVar[str] = "oss2"
    sdk_extra: ClassVar[str] = "oss"

    def __init__(self, config: ObjectStoreConfig) -> None:
        super().__init__(config)
        self._buckets: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._session: Any = None

    def _bucket(self, name: str) -> Any:
        import oss2

        with self._lock:
            if name not in self._buckets:
                if self._session is None:
                    self._session = oss2.Session()
                    self._session.session.verify = self.config.cert_check
                self._buckets[name] = oss2.Bucket(
                    _auth(self.config),
                    self.config.endpoint_url,
                    name,
                    session=self._session,
                    connect_timeout=self.config.timeout,
                )
            return self._buckets[name]

    async def aclose(self) -> None:
        session, self._session = self._session, None
        self._buckets.clear()
        if session is not None:
            session.session.close()

    # ---- primitives --------------------------------------------------------------------------

    def _put(self, bucket: str, key: str, data: bytes) -> None:
        self._bucket(bucket).put_object(key, data)

    def _open(self, bucket: str, key: str) -> BinaryIO:
        body: BinaryIO = self._bucket(bucket).get_object(key)
        return body

    def _head(self, bucket: str, key: str) -> int:
        return int(self._bucket(bucket).head_object(key).content_length)

    def _list(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        import oss2

        for item in oss2.ObjectIteratorV2(self._bucket(bucket), prefix=prefix):
            yield item.key, int(item.size)

    def _delete(self, bucket: str, key: str) -> None:
        self._bucket(bucket).delete_object(key)

    def _bucket_exists(self, bucket: str) -> bool:
        import oss2

        # A GET of a key that does not exist says NoSuchBucket or NoSuchKey; unlike the bucket
        # APIs it needs only read permission on objects.
        try:
            self._bucket(bucket).get_object(PROBE_KEY).close()
        except oss2.exceptions.NoSuchBucket:
            return False
        except oss2.exceptions.NoSuchKey:
            return True
        return True

    def _mpu_start(self, bucket: str, key: str) -> str:
        upload: str = self._bucket(bucket).init_multipart_upload(key).upload_id
        return upload

    def _mpu_part(self, bucket: str, key: str, upload: str, number: int, data: bytes) -> str:
        etag: str = self._bucket(bucket).upload_part(key, upload, number, data).etag
        return etag

    def _mpu_complete(
        self, bucket: str, key: str, upload: str, parts: list[tuple[int, str]]
    ) -> None:
        import oss2

        infos = [oss2.models.PartInfo(n, etag) for n, etag in parts]
        self._bucket(bucket).complete_multipart_upload(key, upload, infos)

    def _mpu_abort(self, bucket: str, key: str, upload: str) -> None:
        self._bucket(bucket).abort_multipart_upload(key, upload)

    # ---- errors ------------------------------------------------------------------------------

    def _transient(self, exc: BaseException) -> bool:
        import oss2

        if isinstance(exc, oss2.exceptions.RequestError):
            return True
        return isinstance(exc, oss2.exceptions.ServerError) and (exc.status >= 500)

    def _translate(self, exc: BaseException, what: str) -> BaseException:
        import oss2

        where = f"oss storage at {self.config.endpoint_url}: {what}"
        if isinstance(exc, oss2.exceptions.NoSuchBucket):
            return BackendUnavailable(f"{where}: the bucket does not exist")
        if isinstance(exc, oss2.exceptions.OssError):
            detail = f"{exc.code or exc.status}{': ' + exc.message if exc.message else ''}"
            if isinstance(exc, oss2.exceptions.NotFound) and exc.code != "NoSuchUpload":
                return ObjectNotFound(f"{where}: no such object ({detail})")
            if exc.status == 403:
                return AccessDenied(f"{where}: access denied ({detail})")
            return BackendUnavailable(f"{where}: {detail}")
        return exc


def _auth(config: ObjectStoreConfig) -> Any:
    import oss2

    if config.sts_token:
        return oss2.StsAuth(config.access_key_id, config.access_key_secret, config.sts_token)
    if config.access_key_id:
        return oss2.Auth(config.access_key_id, config.access_key_secret)
    return oss2.AnonymousAuth()
