"""Shared pytest fixtures. Opt in from a ``tests/conftest.py`` with::

    pytest_plugins = ["trustflow_core.testing.fixtures"]

* ``pm`` — a fresh plugin manager with only the core plugin (no entry points).
* ``compat_dir`` — the upstream compatibility vectors directory (:func:`compat_vectors_dir`).
  The vectors are required: when they cannot be found, tests using them fail, never skip.
* ``compat_manifest`` — its parsed ``manifest.json`` (a fresh copy per test).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from trustflow_core.manager import TrustflowPluginManager, get_plugin_manager

COMPAT_ENV = "TRUSTFLOW_COMPAT_DIR"
COMPAT_RELATIVE = Path("shared", "testdata", "compat")


@pytest.fixture
def pm() -> TrustflowPluginManager:
    return get_plugin_manager(load_entrypoints=False)


def find_compat_dir(*starts: Path) -> Path | None:
    """The first ``<ancestor>/shared/testdata/compat`` holding a ``manifest.json`` above any
    of ``starts``, or None."""
    for start in starts:
        for ancestor in (start, *start.parents):
            candidate = ancestor / COMPAT_RELATIVE
            if (candidate / "manifest.json").is_file():
                return candidate
    return None


def compat_vectors_dir() -> Path:
    """The compat vectors: ``$TRUSTFLOW_COMPAT_DIR``, else the first
    ``<ancestor>/shared/testdata/compat`` above the working directory or this package.
    Raises :class:`FileNotFoundError` saying how to provide them. Usable at import time
    (for parametrization)."""
    configured = os.environ.get(COMPAT_ENV)
    if configured:
        path = Path(configured).resolve()
        if not (path / "manifest.json").is_file():
            raise FileNotFoundError(f"{COMPAT_ENV}={configured!r} has no manifest.json")
        return path
    found = find_compat_dir(Path.cwd().resolve(), Path(__file__).resolve().parent)
    if found is None:
        raise FileNotFoundError(
            f"compat vectors not found: set {COMPAT_ENV} or place them at "
            f"../{COMPAT_RELATIVE.as_posix()} next to the repository"
        )
    return found


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
