"""The generic storage kit, run against LocalStorage with file:// URIs and with plain paths."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from trustflow_core.testing.storage import StorageConformance

from trustflow_storage_local.paths import TEMP_SUFFIX
from trustflow_storage_local.storage import LocalStorage

CHUNK = 4096


class _LocalFixtures(StorageConformance):
    @pytest.fixture
    def chunk_size(self) -> int:
        return CHUNK

    @pytest_asyncio.fixture
    async def storage(self, tmp_path: Path) -> AsyncIterator[LocalStorage]:
        settings = {"roots": [str(tmp_path)], "chunk_size": CHUNK}
        async with LocalStorage.from_settings(settings) as storage:
            yield storage

    @pytest.fixture(autouse=True)
    def no_leftover_temp_files(self, tmp_path: Path) -> Iterator[None]:
        yield
        assert not list(tmp_path.rglob(f"*{TEMP_SUFFIX}"))


class TestLocalStorageConformance(_LocalFixtures):
    @pytest.fixture
    def base_uri(self, tmp_path: Path) -> str:
        return (tmp_path / "base").as_uri()


class TestLocalStoragePlainPathConformance(_LocalFixtures):
    @pytest.fixture
    def base_uri(self, tmp_path: Path) -> str:
        return str(tmp_path / "base")
