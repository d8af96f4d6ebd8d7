"""The Capsule Manager and its owner client take their envelope channel from configuration
(``envelope_channel``): a third-party channel registered in the plugin manager both were given
seals and opens every envelope of a real owner request over gRPC."""

from __future__ import annotations

import types
from collections import Counter
from pathlib import Path

import pytest
from trustflow_channel_jwe.channel import JweChannel

from trustflow_core import hookimpl
from trustflow_core.errors import BackendNotFound
from trustflow_core.harness.cm_world import running_cm
from trustflow_core.manager import get_plugin_manager
from trustflow_core.roles.capsule_manager.server import CapsuleManager
from trustflow_core.roles.capsule_manager.settings import CMSettings, load_settings

pytestmark = pytest.mark.asyncio


def counting_plugin(calls: Counter[str]) -> types.ModuleType:
    class CountingChannel(JweChannel):
        name = "counting"

        def seal(self, plaintext, recipient):
            calls["seal"] += 1
            return super().seal(plaintext, recipient)

        def open(self, jwe, private_key):
            calls["open"] += 1
            return super().open(jwe, private_key)

    module = types.ModuleType("counting_channel")

    @hookimpl
    def trustflow_register_channels(register):
        register(CountingChannel)

    module.trustflow_register_channels = trustflow_register_channels
    return module


async def test_cm_and_owner_client_use_the_configured_envelope_channel(tmp_path: Path) -> None:
    calls: Counter[str] = Counter()
    pm = get_plugin_manager()
    pm.register(counting_plugin(calls))
    config = tmp_path / "cm.yaml"
    config.write_text("plat: sim\nenvelope_channel: counting\n")
    settings = load_settings(config, port=0, data_dir=tmp_path / "cm")
    assert settings.envelope_channel == "counting"
    async with running_cm(settings, pm=pm, envelope_channel="counting") as world:
        await world.client.register_cert(world.alice)
    # the client sealed the request with the counting channel, the CM opened it with its own
    assert calls == Counter({"seal": 1, "open": 1})


async def test_an_unknown_envelope_channel_fails_cm_start_up(tmp_path: Path) -> None:
    settings = CMSettings(port=0, plat="sim", data_dir=tmp_path, envelope_channel="mtls")
    cm = CapsuleManager(settings, pm=get_plugin_manager())
    with pytest.raises(BackendNotFound, match=r"'mtls' is a transport channel, not an envelope"):
        await cm.start()
    await cm.stop()
