"""Fixtures of the core's tests: the shared ones from ``trustflow_core.testing`` and
``cm_world``, a sim Capsule Manager per module and database backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from trustflow_core.harness.cm_world import CMWorld, running_cm

pytest_plugins = ["trustflow_core.testing.fixtures", "trustflow_core.testing.cm_fixtures"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cm_world(
    sim_env: dict[str, str], db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[CMWorld]:
    """A sim CM on ``db_url``, a client that verifies its sim reports, four parties."""
    from trustflow_core.roles.capsule_manager.settings import CMSettings

    settings = CMSettings(
        port=0, plat="sim", data_dir=tmp_path_factory.mktemp("cm"), storage_url=db_url
    )
    async with running_cm(settings, verify_sim=True) as world:
        yield world
