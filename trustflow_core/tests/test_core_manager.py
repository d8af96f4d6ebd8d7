"""The plugin manager factory: entry points, environment switches, lenient loading."""

from __future__ import annotations

import textwrap
from importlib import metadata

import pytest

from trustflow_core import manager
from trustflow_core.errors import PluginError
from trustflow_core.manager import get_plugin_manager

PLUGIN_SOURCE = textwrap.dedent(
    """
    from trustflow_core import hookimpl

    @hookimpl
    def trustflow_register_storages(register):
        pass
    """
)


@pytest.fixture
def fake_entry_points(tmp_path, monkeypatch):
    """Install two importable plugin modules and one broken one as entry points."""
    (tmp_path / "tf_fake_good.py").write_text(PLUGIN_SOURCE)
    (tmp_path / "tf_fake_other.py").write_text(PLUGIN_SOURCE)
    (tmp_path / "tf_fake_broken.py").write_text("raise ImportError('missing SDK xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [
        metadata.EntryPoint("good", "tf_fake_good", "trustflow"),
        metadata.EntryPoint("other", "tf_fake_other", "trustflow"),
        metadata.EntryPoint("broken", "tf_fake_broken", "trustflow"),
    ]
    monkeypatch.setattr(manager, "_entry_points", lambda: eps)
    for var in (
        "TRUSTFLOW_DISABLE_PLUGINS",
        "TRUSTFLOW_LOAD_PLUGINS",
        "TRUSTFLOW_DISABLE_PLUGIN_AUTOLOAD",
    ):
        monkeypatch.delenv(var, raising=False)
    return eps


def test_each_call_builds_a_new_manager():
    assert get_plugin_manager(load_entrypoints=False) is not get_plugin_manager(
        load_entrypoints=False
    )


def test_core_plugin_is_always_registered():
    pm = get_plugin_manager(load_entrypoints=False)
    assert pm.get_plugin("core") is not None


def test_core_plugin_is_the_module_its_entry_point_names():
    """The manager loads the core's own plugin by name (so the plugin machinery imports no
    role): the name is the ``core`` entry point's, and the plugin is the ``builtin`` module."""
    from trustflow_core import builtin

    (entry_point,) = metadata.entry_points(group=manager.ENTRY_POINT_GROUP, name="core")
    assert entry_point.value == manager.CORE_PLUGIN_MODULE
    assert get_plugin_manager(load_entrypoints=False).get_plugin("core") is builtin


def test_a_broken_plugin_aborts_strict_loading(fake_entry_points):
    with pytest.raises(PluginError, match=r"plugin 'broken'.*missing SDK xyz"):
        get_plugin_manager()


def test_lenient_loading_records_the_failure_and_loads_the_rest(fake_entry_points):
    pm = get_plugin_manager(lenient=True)
    assert pm.get_plugin("good") is not None and pm.get_plugin("other") is not None
    assert [f.name for f in pm.load_failures] == ["broken"]
    assert "missing SDK xyz" in pm.load_failures[0].error


def test_disable_plugins_blocks_named_entry_points(fake_entry_points, monkeypatch):
    monkeypatch.setenv("TRUSTFLOW_DISABLE_PLUGINS", "broken, other")
    pm = get_plugin_manager()
    assert pm.get_plugin("good") is not None
    assert pm.is_blocked("other") and pm.is_blocked("broken")


def test_load_plugins_limits_loading(fake_entry_points, monkeypatch):
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "good")
    pm = get_plugin_manager()
    assert pm.get_plugin("good") is not None
    assert pm.get_plugin("other") is None
    assert pm.get_plugin("core") is not None


def test_load_plugins_naming_an_absent_plugin_fails(fake_entry_points, monkeypatch):
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "good,nonexistent")
    with pytest.raises(PluginError, match="nonexistent"):
        get_plugin_manager()


def test_autoload_can_be_disabled(fake_entry_points, monkeypatch):
    monkeypatch.setenv("TRUSTFLOW_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = get_plugin_manager()
    assert [name for name, _ in pm.list_name_plugin()] == ["core"]


def test_a_misspelled_hook_fails_validation(tmp_path, monkeypatch):
    (tmp_path / "tf_fake_typo.py").write_text(
        "from trustflow_core import hookimpl\n\n"
        "@hookimpl\ndef trustflow_register_storage(register):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [metadata.EntryPoint("typo", "tf_fake_typo", "trustflow")]
    monkeypatch.setattr(manager, "_entry_points", lambda: eps)
    monkeypatch.delenv("TRUSTFLOW_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("TRUSTFLOW_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    with pytest.raises(Exception, match="trustflow_register_storage"):
        get_plugin_manager()
