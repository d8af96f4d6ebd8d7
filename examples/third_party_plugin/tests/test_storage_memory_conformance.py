"""The example plugin installs like any plugin and passes the storage conformance kit."""

from __future__ import annotations

import pytest
import pytest_asyncio
from trustflow_core.manager import get_plugin_manager
from trustflow_core.registry import list_plugins, storage_for_uri
from trustflow_core.testing.storage import StorageConformance

from trustflow_storage_memory.backend import MemoryStorage


def test_storage_memory_plugin_is_installed():
    infos = {i.name: i for i in list_plugins(get_plugin_manager())}
    info = infos["storage_memory"]
    assert info.dist == "trustflow-storage-memory"
    assert [(b.kind, b.name, b.viable) for b in info.backends] == [("storage", "memory", True)]
    assert storage_for_uri(get_plugin_manager(), "mem://x") is MemoryStorage


class TestMemoryStorageConformance(StorageConformance):
    @pytest_asyncio.fixture
    async def storage(self):
        async with MemoryStorage.from_settings({}) as backend:
            yield backend

    @pytest.fixture
    def base_uri(self, request):
        return f"mem://bucket/{request.node.name}/"
