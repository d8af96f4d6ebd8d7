"""The ``s3`` storage backend: Amazon S3 and S3-compatible services (MinIO, ...) via boto3.

URIs ``s3://bucket/key``; settings in :mod:`trustflow_storage_oss.config`. Requests use
path-style addressing (what MinIO and loopback endpoints need) and SigV4 in ``region``
(``us-east-1`` when empty). Without credentials requests are sent unsigned: the backend never
falls back to the environment or an instance-metadata service. botocore's own retries are off;
:class:`~trustflow_storage_oss.base.ObjectStorage` retries transient errors itself.

Errors: missing object → ObjectNotFound; missing bucket → BackendUnavailable; refused
credentials or permissions (403, ``InvalidAccessKeyId``, ``SignatureDoesNotMatch``, expired
token) → AccessDenied; unreachable endpoint, timeouts, 5xx and other refusals →
BackendUnavailable. Messages name the operation, the URI and the store's error code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO, ClassVar

from trustflow_core.errors import AccessDenied, BackendUnavailable, ObjectNotFound

from .base import ObjectStorage
from .config import ObjectStoreConfig

NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
DENIED = frozenset(
    {
        "AccessDenied",
        "403",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
    }
)
TRANSIENT = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestTimeTooSkewed",
        "500",
        "502",
        "503",
        "504",
    }
)


class S3Storage(ObjectStorage):
    """S3 and S3-compatible object stores. See the module docstring."""

    name: ClassVar[str] = "s3"
    scheme: ClassVar[str] = "s3"
    schemes: ClassVar[tuple[str, ...]] = ("s3",)
    sdk_module: ClassVar[str] = "boto3"
    sdk_extra: ClassVar[str] = "s3"

    def __init__(self, config: ObjectStoreConfig) -> None:
        super().__init__(config)
        self._client_obj: Any = None

    @property
    def _client(self) -> Any:
        if self._client_obj is None:
            self._client_obj = _make_client(self.config)
        return self._client_obj

    async def aclose(self) -> None:
        client, self._client_obj = self._client_obj, None
        if client is not None:
            client.close()

    # ---- primitives --------------------------------------------------------------------------

    def _put(self, bucket: str, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=bucket, Key=key, Body=data)

    def _open(self, bucket: str, key: str) -> BinaryIO:
        body: BinaryIO = self._client.get_object(Bucket=bucket, Key=key)["Body"]
        return body

    def _head(self, bucket: str, key: str) -> int:
        return int(self._client.head_object(Bucket=bucket, Key=key)["ContentLength"])

    def _list(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", ()):
                yield item["Key"], int(item["Size"])

    def _delete(self, bucket: str, key: str) -> None:
        self._client.delete_object(Bucket=bucket, Key=key)

    def _bucket_exists(self, bucket: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if _code(exc) in NOT_FOUND | {"NoSuchBucket"}:
                return False
            raise
        return True

    def _mpu_start(self, bucket: str, key: str) -> str:
        upload: str = self._client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        return upload

    def _mpu_part(self, bucket: str, key: str, upload: str, number: int, data: bytes) -> str:
        reply = self._client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data
        )
        etag: str = reply["ETag"]
        return etag

    def _mpu_complete(
        self, bucket: str, key: str, upload: str, parts: list[tuple[int, str]]
    ) -> None:
        self._client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
        )

    def _mpu_abort(self, bucket: str, key: str, upload: str) -> None:
        self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)

    # ---- errors ------------------------------------------------------------------------------

    def _transient(self, exc: BaseException) -> bool:
        from botocore import exceptions as e

        if isinstance(exc, e.ClientError):
            return _code(exc) in TRANSIENT or _status(exc) >= 500
        network = (
            e.EndpointConnectionError,
            e.ConnectTimeoutError,
            e.HTTPClientError,
            e.ResponseStreamingError,
            e.IncompleteReadError,
        )
        return isinstance(exc, network)

    def _translate(self, exc: BaseException, what: str) -> BaseException:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3 storage at {self.config.endpoint_url}: {what}"
        if isinstance(exc, ClientError):
            code, message = _code(exc), exc.response.get("Error", {}).get("Message", "")
            detail = f"{code}{': ' + message if message else ''}"
            if code in NOT_FOUND:
                return ObjectNotFound(f"{where}: no such object ({detail})")
            if code == "NoSuchBucket":
                return BackendUnavailable(f"{where}: the bucket does not exist ({detail})")
            if code in DENIED or _status(exc) == 403:
                return AccessDenied(f"{where}: access denied ({detail})")
            return BackendUnavailable(f"{where}: the store refused the request ({detail})")
        if isinstance(exc, BotoCoreError):
            return BackendUnavailable(f"{where}: {exc}")
        return exc


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _make_client(config: ObjectStoreConfig) -> Any:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    signed = bool(config.access_key_id)
    options = Config(
        region_name=config.region or "us-east-1",
        signature_version="s3v4" if signed else UNSIGNED,
        retries={"total_max_attempts": 1},
        connect_timeout=config.timeout,
        read_timeout=config.timeout,
        max_pool_connections=16,
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=config.endpoint_url,
        aws_access_key_id=config.access_key_id or None,
        aws_secret_access_key=config.access_key_secret or None,
        aws_session_token=config.sts_token or None,
        verify=config.cert_check,
        config=options,
    )
