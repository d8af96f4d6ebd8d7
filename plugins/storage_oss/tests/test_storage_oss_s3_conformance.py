"""The generic storage kit against S3Storage talking to a real moto S3 server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from trustflow_core.testing.storage import StorageConformance

from trustflow_storage_oss.s3 import S3Storage

CHUNK = 4096


class TestS3StorageConformance(StorageConformance):
    @pytest.fixture
    def chunk_size(self) -> int:
        return CHUNK

    @pytest_asyncio.fixture
    async def storage(self, s3_settings: dict) -> AsyncIterator[S3Storage]:
        async with S3Storage.from_settings({**s3_settings, "chunk_size": CHUNK}) as storage:
            yield storage

    @pytest.fixture
    def base_uri(self, bucket: str) -> str:
        return f"s3://{bucket}/base"


class TestS3StorageConfinedConformance(StorageConformance):
    """The same with the storage confined to the bucket and path it is given."""

    @pytest.fixture
    def chunk_size(self) -> int:
        return CHUNK

    @pytest_asyncio.fixture
    async def storage(self, s3_settings: dict, bucket: str) -> AsyncIterator[S3Storage]:
        settings = {**s3_settings, "chunk_size": CHUNK, "bucket": bucket, "path": "jail"}
        async with S3Storage.from_settings(settings) as storage:
            yield storage

    @pytest.fixture
    def base_uri(self, bucket: str) -> str:
        return f"s3://{bucket}/jail/base"
