"""Wiring: the entry point, the hook and backend selection."""

from __future__ import annotations

import pytest
from trustflow_core import get_plugin_manager
from trustflow_core.errors import BackendNotFound
from trustflow_core.manager import TrustflowPluginManager
from trustflow_core.registry import (
    STORAGE,
    backend_class,
    backends_of,
    list_plugins,
    storage_for_uri,
)

import trustflow_storage_local.plugin
from trustflow_storage_local.storage import LocalStorage


def test_storage_local_plugin_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("TRUSTFLOW_DISABLE_PLUGINS", "TRUSTFLOW_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "storage_local")  # isolate from other plugins
    pm = get_plugin_manager()
    info = {i.name: i for i in list_plugins(pm)}["storage_local"]
    assert info.dist == "trustflow-storage-local"
    assert info.module == "trustflow_storage_local.plugin"
    assert [(b.kind, b.name, b.viable, b.simulated) for b in info.backends] == [
        ("storage", "local", True, False)
    ]
    assert storage_for_uri(pm, "file:///srv/data.csv") is LocalStorage


def test_hook_registers_local_storage(pm: TrustflowPluginManager) -> None:
    with pytest.raises(BackendNotFound, match="trustflow-storage-local"):
        storage_for_uri(pm, "/srv/data.csv")
    pm.register(trustflow_storage_local.plugin, name="storage_local")
    assert backends_of(pm, STORAGE) == {"local": LocalStorage}
    assert storage_for_uri(pm, "/srv/data.csv") is LocalStorage
    assert storage_for_uri(pm, "file:///srv/data.csv") is LocalStorage
    assert backend_class(pm, STORAGE, "local") is LocalStorage
    with pytest.raises(BackendNotFound):
        storage_for_uri(pm, "s3://bucket/key")
