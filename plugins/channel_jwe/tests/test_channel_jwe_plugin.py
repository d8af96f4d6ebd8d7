"""Wiring and settings of the ``jwe`` channel backend."""

from __future__ import annotations

import pytest
from trustflow_core.errors import InvalidInput
from trustflow_core.manager import get_plugin_manager
from trustflow_core.registry import ENVELOPE_CHANNEL, backend_class, backends_of, list_plugins

from trustflow_channel_jwe.channel import JweChannel


def test_channel_jwe_plugin_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "channel_jwe")  # not affected by other plugins
    pm = get_plugin_manager()
    infos = {info.name: info for info in list_plugins(pm)}
    assert "channel_jwe" in infos, sorted(infos)
    info = infos["channel_jwe"]
    assert info.dist == "trustflow-channel-jwe"
    assert info.error is None
    assert "trustflow_register_channels" in info.hooks
    assert [(b.kind, b.name, b.viable) for b in info.backends] == [("channel", "jwe", True)]
    assert backends_of(pm, ENVELOPE_CHANNEL)["jwe"] is JweChannel
    assert backend_class(pm, ENVELOPE_CHANNEL, "jwe") is JweChannel


def test_default_profile_is_rfc() -> None:
    channel = JweChannel.from_settings(None)
    assert (channel.profile, channel.alg) == ("rfc", "RSA-OAEP-256")
    assert JweChannel.from_settings({}).profile == "rfc"


@pytest.mark.parametrize(
    ("settings", "profile", "alg"),
    [
        ({"profile": "upstream"}, "upstream", "RSA-OAEP"),
        ({"profile": "upstream", "alg": "RSA-OAEP-256"}, "upstream", "RSA-OAEP-256"),
        ({"profile": "rfc", "alg": "RSA-OAEP"}, "rfc", "RSA-OAEP"),
    ],
)
def test_settings_select_profile_and_alg(settings: dict[str, str], profile: str, alg: str) -> None:
    channel = JweChannel.from_settings(settings)
    assert (channel.profile, channel.alg) == (profile, alg)
    assert repr(channel) == f"JweChannel(profile={profile!r}, alg={alg!r})"


@pytest.mark.parametrize(
    ("settings", "mentions"),
    [
        ({"profile": "jose"}, "profile"),
        ({"profile": "upstream", "alg": "RSA1_5"}, "alg"),
        ({"alg": "dir"}, "alg"),
        ({"profile": "rfc", "enc": "A128GCM"}, "enc"),
        ({"profile": 1}, "profile"),
    ],
)
def test_bad_settings_raise_invalid_input(settings: dict[str, object], mentions: str) -> None:
    with pytest.raises(InvalidInput, match=mentions):
        JweChannel.from_settings(settings)
