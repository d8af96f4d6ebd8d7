"""Pytest fixtures for Capsule Manager tests. Opt in from a ``conftest.py`` with::

    pytest_plugins = ["trustflow_core.testing.cm_fixtures"]

* ``sim_env`` (module scope) — the plugins a sim CM needs (``channel_jwe``, ``tee_sim``) and a
  private ``TRUSTFLOW_SIM_DIR``, set in this process; yields the whole environment as a dict
  for subprocesses (``trustflow capsule-manager ...``).
* ``db_url`` (module scope) — a throw-away database URL, once per backend of
  :data:`~trustflow_core.testing.databases.BACKENDS` (SQLite file, the machine's
  PostgreSQL and MariaDB on 127.0.0.1).
* ``key`` — a fresh 32-byte sealing key for a CM store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from trustflow_core.testing.databases import BACKENDS, throwaway_database


@pytest.fixture(scope="module")
def sim_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    values = {
        "TRUSTFLOW_LOAD_PLUGINS": "channel_jwe,tee_sim",
        "TRUSTFLOW_SIM_DIR": str(tmp_path_factory.mktemp("sim-platform")),
    }
    mp = pytest.MonkeyPatch()
    for name, value in values.items():
        mp.setenv(name, value)
    yield {**os.environ, **values}
    mp.undo()


@pytest.fixture(scope="module", params=BACKENDS)
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with throwaway_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)
