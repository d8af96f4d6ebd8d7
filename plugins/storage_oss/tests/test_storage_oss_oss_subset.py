"""OssStorage (oss2, OSS signatures and x-oss headers) against the loopback moto server.

No loopback server that speaks the OSS protocol was found in the package registries, and moto
speaks S3. The operations whose S3 and OSS wire forms coincide closely enough are exercised
here for real: single-request PUT, GET, HEAD, DELETE, and the NoSuchKey / NoSuchBucket errors.
NOT exercised (moto's replies differ from OSS): listing (moto rejects oss2's empty
``continuation-token``; its XML carries the S3 namespace, which oss2's parser does not expect)
and multipart uploads (same XML namespace problem).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from trustflow_core.errors import BackendUnavailable, ObjectNotFound
from trustflow_core.storage import ObjectInfo
from trustflow_core.testing.storage import Boom, chunks_of, failing

from trustflow_storage_oss.oss import OssStorage

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def oss(s3_settings: dict) -> AsyncIterator[OssStorage]:
    settings = {k: v for k, v in s3_settings.items() if k != "region"}
    async with OssStorage.from_settings({**settings, "chunk_size": 1000}) as storage:
        yield storage


async def test_put_get_head_delete(oss, bucket):
    uri = f"oss://{bucket}/dir/object.bin"
    data = os.urandom(5000)
    assert await oss.write(uri, chunks_of(data, 700)) == ObjectInfo(uri, len(data))
    assert await oss.stat(uri) == ObjectInfo(uri, len(data))
    chunks = [chunk async for chunk in oss.read(uri)]
    assert b"".join(chunks) == data
    assert all(0 < len(c) <= 1000 for c in chunks)
    await oss.delete(uri)
    with pytest.raises(ObjectNotFound):
        await oss.stat(uri)
    with pytest.raises(ObjectNotFound):
        await oss.delete(uri)


async def test_missing_object_and_bucket(oss, bucket):
    with pytest.raises(ObjectNotFound, match="no such object"):
        await oss.read_bytes(f"oss://{bucket}/absent.bin")
    with pytest.raises(ObjectNotFound):
        await oss.stat(f"oss://{bucket}/absent.bin")
    with pytest.raises(BackendUnavailable, match="bucket"):
        await oss.read_bytes("oss://no-such-bucket-oss/absent.bin")
    with pytest.raises(BackendUnavailable, match="bucket"):
        await oss.stat("oss://no-such-bucket-oss/absent.bin")


async def test_failed_small_write_sends_nothing(oss, bucket):
    uri = f"oss://{bucket}/failed.bin"
    with pytest.raises(Boom):
        await oss.write(uri, failing(os.urandom(3000), 1000))
    with pytest.raises(ObjectNotFound):
        await oss.stat(uri)


@pytest.mark.parametrize("signature", ["abcd/efgh/ijkl/mnop/qrs=", "plainsignatureAAAAAAAAAAAA="])
async def test_the_test_server_serves_every_oss_signature_as_s3(moto_endpoint, bucket, signature):
    """An OSS signature with four '/' once made moto route a request to no backend (500)."""
    import urllib.request

    request = urllib.request.Request(
        f"{moto_endpoint}/{bucket}",
        method="HEAD",
        headers={"Authorization": f"OSS test-access-key:{signature}"},
    )
    reply = await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
    with reply:
        assert reply.status == 200
