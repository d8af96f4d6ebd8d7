"""Settings of the object-store backends and the URIs they serve.

Settings are the ``S3Config`` fields of the wire protocol (Data Capsule Proxy proto) plus tuning:

======================  ==========  =========================================================
setting                 default     meaning
======================  ==========  =========================================================
``endpoint``            required    ``host[:port]`` or ``http(s)://host[:port]``
``bucket``              ``""``      if set, URIs must name this bucket
``path``                ``""``      if set, URIs must name this key or keys below ``path/``
``access_key_id``       ``""``      credentials (both or neither)
``access_key_secret``   ``""``
``sts_token``           ``""``      temporary-credential session token
``region``              ``""``      signing region (S3; ``us-east-1`` when empty)
``type``                ``""``      ``""``/``unspecified``/``oss``/``minio``/``s3``; must fit
                                    the backend (``oss`` backend: not ``minio``/``s3``)
``secure``              ``True``    https when ``endpoint`` has no scheme (a scheme wins)
``cert_check``          ``True``    verify the server's TLS certificate
``chunk_size``          1 MiB       default read chunk size
``part_size``           8 MiB       multipart part size (>= 5 MiB, the S3/OSS minimum)
``retries``             4           attempts per request on transient errors (>= 1)
``retry_backoff``       0.2         first backoff in seconds, doubled per attempt (max 5 s)
``timeout``             30          connect and read timeout of each request, seconds
======================  ==========  =========================================================

URIs are ``<scheme>://<bucket>/<key>``; the key may be empty (the whole bucket) and may end in
``/`` (a "directory" prefix). Keys with ``.`` or ``..`` segments, empty segments or NUL
characters are refused, so a URI cannot alias another key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from trustflow_core.errors import AccessDenied, InvalidInput
from trustflow_core.settings_schema import Node

MIN_PART_SIZE = 5 * 1024 * 1024
STRINGS = (
    "endpoint",
    "bucket",
    "path",
    "access_key_id",
    "access_key_secret",
    "sts_token",
    "region",
    "type",
)
BOOLS = ("secure", "cert_check")
NUMBERS = ("chunk_size", "part_size", "retries", "retry_backoff", "timeout")
SETTINGS = STRINGS + BOOLS + NUMBERS
TYPES = ("", "unspecified", "oss", "minio", "s3")


@dataclass(frozen=True)
class ObjectStoreConfig:
    """Validated settings; see the module docstring."""

    endpoint_url: str
    bucket: str = ""
    path: str = ""
    access_key_id: str = ""
    access_key_secret: str = ""
    sts_token: str = ""
    region: str = ""
    type: str = ""
    cert_check: bool = True
    chunk_size: int = 1 << 20
    part_size: int = 8 << 20
    retries: int = 4
    retry_backoff: float = 0.2
    timeout: float = 30.0

    def __repr__(self) -> str:  # never print credentials
        return (
            f"ObjectStoreConfig(endpoint_url={self.endpoint_url!r}, bucket={self.bucket!r}, "
            f"path={self.path!r}, type={self.type!r}, credentials="
            f"{'<set>' if self.access_key_id else '<none>'})"
        )

    @classmethod
    def from_settings(cls, backend: str, settings: Mapping[str, Any] | None) -> ObjectStoreConfig:
        """Validate ``settings`` for the backend named ``backend``; raise
        :class:`~trustflow_core.settings_schema.ConfigError` naming the bad setting (a secret's
        value is never shown)."""
        root = Node.settings(settings, f"{backend} storage settings").mapping(SETTINGS)
        s = {name: root.get(name).string("", empty=True) for name in STRINGS}
        kind = root.get("type").choice(TYPES, "")
        if backend == "oss" and kind in ("minio", "s3"):
            raise root.get("type").error(f"type {kind!r} needs the s3 backend")
        if backend == "s3" and kind == "oss":
            raise root.get("type").error("type 'oss' needs the oss backend")
        if bool(s["access_key_id"]) != bool(s["access_key_secret"]):
            raise root.error("set both access_key_id and access_key_secret or neither")
        if s["sts_token"] and not s["access_key_id"]:
            raise root.get("sts_token").error("sts_token needs access_key_id")
        if s["bucket"]:
            root.get("bucket").build(check_bucket)
        path = s["path"].strip("/")
        if path:
            root.get("path").build(lambda _: check_key(path, "path"))
        return cls(
            endpoint_url=root.get("endpoint").build(
                lambda _: endpoint_url(backend, s["endpoint"], root.get("secure").boolean(True))
            ),
            bucket=s["bucket"],
            path=path,
            access_key_id=s["access_key_id"],
            access_key_secret=s["access_key_secret"],
            sts_token=s["sts_token"],
            region=s["region"],
            type=kind,
            cert_check=root.get("cert_check").boolean(True),
            chunk_size=root.get("chunk_size").integer(1 << 20, minimum=1),
            part_size=root.get("part_size").integer(8 << 20, minimum=MIN_PART_SIZE),
            retries=root.get("retries").integer(4, minimum=1),
            retry_backoff=root.get("retry_backoff").number(0.2),
            timeout=root.get("timeout").number(30.0, minimum=0.001),
        )

    def locate(self, scheme: str, uri: str) -> tuple[str, str]:
        """``(bucket, key)`` of ``uri``; the key keeps a trailing ``/``. Raises InvalidInput for
        a malformed URI and AccessDenied for one outside the configured bucket/path."""
        if not isinstance(uri, str) or not uri.startswith(f"{scheme}://"):
            raise InvalidInput(f"{scheme} storage serves {scheme}://bucket/key URIs, not {uri!r}")
        rest = uri[len(scheme) + 3 :]
        bucket, _, key = rest.partition("/")
        check_bucket(bucket)
        if key:
            check_key(key[:-1] if key.endswith("/") else key, uri)
        if self.bucket and bucket != self.bucket:
            raise AccessDenied(f"{uri!r} is outside the configured bucket {self.bucket!r}")
        bare = key.rstrip("/")
        if self.path and bare != self.path and not key.startswith(self.path + "/"):
            raise AccessDenied(
                f"{uri!r} is outside the configured path {self.bucket or bucket}/{self.path}"
            )
        return bucket, key


def endpoint_url(backend: str, endpoint: str, secure: bool) -> str:
    """``scheme://host[:port]`` for an endpoint given with or without a scheme."""
    if not endpoint:
        raise InvalidInput(f"{backend} storage: setting 'endpoint' is required")
    url = endpoint if "://" in endpoint else f"{'https' if secure else 'http'}://{endpoint}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{backend} storage: endpoint {endpoint!r} is not host[:port] or a URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise InvalidInput(f"{backend} storage: endpoint {endpoint!r} must be only host and port")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise InvalidInput(f"{backend} storage: endpoint {endpoint!r}: {exc}") from None
    return f"{parts.scheme}://{parts.netloc}"


def check_bucket(bucket: str) -> None:
    """Bucket names: 3-63 of ``a-z0-9.-`` (S3 and OSS rules, simplified)."""
    ok = 3 <= len(bucket) <= 63 and all(c.islower() or c.isdigit() or c in ".-" for c in bucket)
    if not ok or not bucket.isascii():
        raise InvalidInput(f"bucket name {bucket!r} is not 3-63 characters of a-z, 0-9, '.', '-'")


def check_key(key: str, what: str) -> None:
    """Refuse keys that could alias another key: empty, ``.``/``..`` segments, ``//``, NUL."""
    if "\x00" in key:
        raise InvalidInput(f"{what}: object key contains a NUL character")
    if len(key.encode()) > 1024:
        raise InvalidInput(f"{what}: object key is longer than 1024 bytes")
    segments = key.split("/")
    if any(seg in (".", "..") for seg in segments):
        raise AccessDenied(f"{what}: object key has a '.' or '..' segment")
    if any(seg == "" for seg in segments):
        raise InvalidInput(f"{what}: object key has an empty segment ('//' or a leading '/')")
