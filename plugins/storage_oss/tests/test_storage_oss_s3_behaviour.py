"""S3Storage against a real moto server: multipart uploads, failure atomicity, error
translation (missing bucket/object, refused credentials, server down), confinement."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import boto3
import pytest
from conftest import ACCESS_KEY, SECRET_KEY, free_port
from trustflow_core.errors import AccessDenied, BackendUnavailable, InvalidInput, ObjectNotFound
from trustflow_core.storage import ObjectInfo
from trustflow_core.testing.storage import Boom, chunks_of, failing

from trustflow_storage_oss.config import MIN_PART_SIZE
from trustflow_storage_oss.s3 import S3Storage

pytestmark = pytest.mark.asyncio
MiB = 1 << 20


def boto(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )


def pending_uploads(endpoint: str, bucket: str) -> list:
    client = boto(endpoint)
    try:
        return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    finally:
        client.close()


class Counting:
    """A chunk source that counts the bytes the backend pulled from it."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size, self.pulled = data, size, 0

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in chunks_of(self.data, self.size):
            self.pulled += len(chunk)
            yield chunk


async def test_large_object_is_uploaded_in_parts(s3_settings, bucket):
    data = os.urandom(2 * MIN_PART_SIZE + 123)
    uri = f"s3://{bucket}/big/object.bin"
    async with S3Storage.from_settings({**s3_settings, "part_size": MIN_PART_SIZE}) as storage:
        assert await storage.write(uri, chunks_of(data, MiB)) == ObjectInfo(uri, len(data))
        assert await storage.read_bytes(uri) == data
    head = boto(s3_settings["endpoint"]).head_object(Bucket=bucket, Key="big/object.bin")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag: three parts
    assert pending_uploads(s3_settings["endpoint"], bucket) == []


async def test_failure_mid_multipart_leaves_nothing_and_aborts(s3_settings, bucket):
    uri = f"s3://{bucket}/big/failed.bin"
    async with S3Storage.from_settings({**s3_settings, "part_size": MIN_PART_SIZE}) as storage:
        with pytest.raises(Boom):
            await storage.write(uri, failing(os.urandom(2 * MIN_PART_SIZE + 5), MiB))
        with pytest.raises(ObjectNotFound):
            await storage.stat(uri)
        assert await storage.list(f"s3://{bucket}/") == []
    assert pending_uploads(s3_settings["endpoint"], bucket) == []


async def test_failed_multipart_overwrite_keeps_old_object(s3_settings, bucket):
    uri = f"s3://{bucket}/big/old.bin"
    async with S3Storage.from_settings({**s3_settings, "part_size": MIN_PART_SIZE}) as storage:
        await storage.write_bytes(uri, b"old content")
        with pytest.raises(Boom):
            await storage.write(uri, failing(os.urandom(MIN_PART_SIZE + 5), MiB))
        assert await storage.read_bytes(uri) == b"old content"


async def test_write_buffers_at_most_one_part(s3_settings, bucket):
    """Memory bound: the first part is sent before the source is drained."""
    data = os.urandom(3 * MIN_PART_SIZE)
    source = Counting(data, MiB)
    uri = f"s3://{bucket}/big/bounded.bin"
    async with S3Storage.from_settings({**s3_settings, "part_size": MIN_PART_SIZE}) as storage:

        async def watched() -> AsyncIterator[bytes]:
            async for chunk in source.chunks():
                if source.pulled > MIN_PART_SIZE + MiB:
                    assert pending_uploads(s3_settings["endpoint"], bucket)  # parts sent already
                yield chunk

        await storage.write(uri, watched())
        assert await storage.read_bytes(uri) == data


async def test_missing_bucket_is_backend_unavailable(s3_settings):
    async with S3Storage.from_settings(s3_settings) as storage:
        uri = "s3://no-such-bucket-here/x.bin"
        for attempt in (storage.stat, storage.read_bytes, storage.list):
            with pytest.raises(BackendUnavailable, match=r"bucket .*does not exist"):
                await attempt(uri)
        with pytest.raises(BackendUnavailable, match="bucket"):
            await storage.write_bytes(uri, b"x")


async def test_missing_object_message_names_the_uri(s3_settings, bucket):
    async with S3Storage.from_settings(s3_settings) as storage:
        with pytest.raises(ObjectNotFound, match=f"s3://{bucket}/nope.bin"):
            await storage.read_bytes(f"s3://{bucket}/nope.bin")


async def test_server_down_is_backend_unavailable_after_retries(s3_settings):
    port = free_port()  # nothing listens there
    settings = {**s3_settings, "endpoint": f"127.0.0.1:{port}", "secure": False, "timeout": 2}
    settings["retries"], settings["retry_backoff"] = 3, 0.05
    started = time.monotonic()
    async with S3Storage.from_settings(settings) as storage:
        with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{port}"):
            await storage.write_bytes("s3://bucket-x/a.bin", b"data")
    assert time.monotonic() - started < 10


@pytest.fixture(scope="module")
def auth_endpoint() -> Iterator[str]:
    """A second moto server, in its own process, that enforces IAM authentication."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        import socket

        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto server with authentication did not start")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_unknown_credentials_are_access_denied(auth_endpoint, s3_settings):
    settings = {**s3_settings, "endpoint": auth_endpoint}
    async with S3Storage.from_settings(settings) as storage:
        with pytest.raises(AccessDenied, match="InvalidAccessKeyId"):
            await storage.write_bytes("s3://some-bucket/a.bin", b"x")
        with pytest.raises(AccessDenied):
            await storage.list("s3://some-bucket/")


async def test_confinement_to_bucket_and_path(s3_settings, bucket):
    settings = {**s3_settings, "bucket": bucket, "path": "jail/"}
    async with S3Storage.from_settings(settings) as storage:
        await storage.write_bytes(f"s3://{bucket}/jail/in.txt", b"in")
        for outside in (
            f"s3://{bucket}/jailbreak.txt",
            f"s3://{bucket}/other/x.txt",
            "s3://another-bucket/jail/x.txt",
            f"s3://{bucket}/jail/../x.txt",
            f"s3://{bucket}/jail/./x.txt",
        ):
            with pytest.raises(AccessDenied):
                await storage.write_bytes(outside, b"x")
        with pytest.raises(AccessDenied):
            await storage.list(f"s3://{bucket}/")
        with pytest.raises(InvalidInput):
            await storage.write_bytes(f"s3://{bucket}/jail//x.txt", b"x")
        with pytest.raises(InvalidInput, match="directory"):
            await storage.write_bytes(f"s3://{bucket}/jail/dir/", b"x")
        assert await storage.list(f"s3://{bucket}/jail") == [
            ObjectInfo(f"s3://{bucket}/jail/in.txt", 2)
        ]


async def test_folder_markers_are_not_listed(s3_settings, bucket):
    client = boto(s3_settings["endpoint"])
    client.put_object(Bucket=bucket, Key="dir/", Body=b"")
    client.put_object(Bucket=bucket, Key="dir/file.txt", Body=b"abc")
    client.close()
    async with S3Storage.from_settings(s3_settings) as storage:
        assert await storage.list(f"s3://{bucket}/dir") == [
            ObjectInfo(f"s3://{bucket}/dir/file.txt", 3)
        ]


class FlakyRelay:
    """A loopback TCP relay to the moto server that drops its first ``failures`` connections
    (the client sees a reset: a transient network error), then relays faithfully."""

    def __init__(self, target: str, failures: int) -> None:
        self.host, port = target.removeprefix("http://").split(":")
        self.target_port = int(port)
        self.failures = failures
        self.accepted = 0

    async def __aenter__(self) -> FlakyRelay:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _handle(self, reader, writer) -> None:
        self.accepted += 1
        if self.accepted <= self.failures:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)

        async def pipe(src, dst) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_transient_errors_are_retried_with_backoff(s3_settings, bucket):
    async with FlakyRelay(s3_settings["endpoint"], failures=2) as relay:
        settings = {**s3_settings, "endpoint": f"http://127.0.0.1:{relay.port}"}
        settings.update(retries=4, retry_backoff=0.05)
        async with S3Storage.from_settings(settings) as storage:
            uri = f"s3://{bucket}/flaky.bin"
            await storage.write_bytes(uri, b"made it")
            assert await storage.read_bytes(uri) == b"made it"
        assert relay.accepted >= 3
    async with FlakyRelay(s3_settings["endpoint"], failures=10) as relay:
        settings = {**s3_settings, "endpoint": f"http://127.0.0.1:{relay.port}"}
        settings.update(retries=3, retry_backoff=0.01)
        async with S3Storage.from_settings(settings) as storage:
            with pytest.raises(BackendUnavailable):
                await storage.write_bytes(f"s3://{bucket}/never.bin", b"x")
        assert relay.accepted == 3  # exactly the configured attempts
