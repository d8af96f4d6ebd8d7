"""Shared pytest fixtures. Opt in from a ``tests/conftest.py`` with::

    pytest_plugins = ["trustflow_core.testing.fixtures"]

* ``pm`` — a fresh plugin manager: only the core plugin (no entry points), unless the test
  (or its module, through ``pytestmark``) carries ``@pytest.mark.plugins(*names)``: then the
  installed entry points (only ``names`` when given, through ``TRUSTFLOW_LOAD_PLUGINS``) with
  a private ``TRUSTFLOW_SIM_DIR``.
* ``plugin_env`` — sets that environment for a ``plugins`` marker without building a manager
  (for code under test that builds its own, e.g. a demo or a subprocess).
* :func:`free_port` — a free TCP port on 127.0.0.1 (for a server started in another process).
* ``compat_dir`` — the upstream compatibility vectors directory (:func:`compat_vectors_dir`).
  The vectors are required: when they cannot be found, tests using them fail, never skip.
* ``compat_manifest`` — its parsed ``manifest.json`` (a fresh copy per test).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from trustflow_core.manager import TrustflowPluginManager, get_plugin_manager
from trustflow_core.testing.support import (
    COMPAT_ENV,
    COMPAT_RELATIVE,
    compat_vectors_dir,
    find_compat_dir,
    free_port,
)

__all__ = [
    "COMPAT_ENV",
    "COMPAT_RELATIVE",
    "compat_vectors_dir",
    "find_compat_dir",
    "free_port",
]

PLUGINS_MARKER = "plugins"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{PLUGINS_MARKER}(*names): the ``pm`` and ``plugin_env`` fixtures load the installed "
        "plugins (only these names when given) with a private TRUSTFLOW_SIM_DIR",
    )


@pytest.fixture
def plugin_env(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> bool:
    """Apply the test's ``plugins`` marker to the environment; whether it has one."""
    marker = request.node.get_closest_marker(PLUGINS_MARKER)
    if marker is None:
        return False
    if marker.args:
        monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", ",".join(marker.args))
    monkeypatch.setenv("TRUSTFLOW_SIM_DIR", str(tmp_path / "simulated-platform"))
    return True


@pytest.fixture
def pm(plugin_env: bool) -> TrustflowPluginManager:
    return get_plugin_manager(load_entrypoints=plugin_env)


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    try:
        return compat_vectors_dir()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def _compat_manifest_cached(compat_dir: Path) -> dict[str, Any]:
    return json.loads((compat_dir / "manifest.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture
def compat_manifest(_compat_manifest_cached: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(_compat_manifest_cached)
