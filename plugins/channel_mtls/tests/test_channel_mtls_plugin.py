"""Wiring and settings of the ``mtls`` transport-channel backend."""

from __future__ import annotations

import os
import ssl
import tempfile

import pytest
from trustflow_core.errors import InvalidInput
from trustflow_core.manager import get_plugin_manager
from trustflow_core.registry import TRANSPORT_CHANNEL, backend_class, backends_of, list_plugins
from trustflow_core.testing.transport import group_asset

from trustflow_channel_mtls import channel as module
from trustflow_channel_mtls.channel import MtlsChannel


def test_channel_mtls_plugin_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "channel_mtls")
    pm = get_plugin_manager()
    infos = {info.name: info for info in list_plugins(pm)}
    assert "channel_mtls" in infos, sorted(infos)
    info = infos["channel_mtls"]
    assert info.dist == "trustflow-channel-mtls"
    assert info.error is None
    assert "trustflow_register_channels" in info.hooks
    assert [(b.kind, b.name, b.viable) for b in info.backends] == [("channel", "mtls", True)]
    assert backends_of(pm, TRANSPORT_CHANNEL)["mtls"] is MtlsChannel
    assert backend_class(pm, TRANSPORT_CHANNEL, "mtls") is MtlsChannel


def test_default_and_explicit_settings() -> None:
    assert MtlsChannel.from_settings(None).min_version == "TLSv1.2"
    assert MtlsChannel.from_settings({"min_version": "TLSv1.3"}).min_version == "TLSv1.3"
    assert repr(MtlsChannel()) == "MtlsChannel(min_version='TLSv1.2')"


@pytest.mark.parametrize(
    ("settings", "mentions"),
    [
        ({"min_version": "TLSv1.1"}, "min_version"),
        ({"min_version": 1.2}, "min_version"),
        ({"verify": False}, "verify"),
    ],
)
def test_bad_settings_raise_invalid_input(settings: dict[str, object], mentions: str) -> None:
    with pytest.raises(InvalidInput, match=mentions):
        MtlsChannel.from_settings(settings)


def test_temporary_directory_fallback_builds_working_contexts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where memory files are unavailable the chain goes through a private temporary
    directory, removed right after loading."""
    made: list[str] = []
    real = tempfile.TemporaryDirectory

    class Recording(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self.name)

    monkeypatch.setattr(module, "_load_chain_from_memory", lambda ctx, asset: False)
    monkeypatch.setattr(module.tempfile, "TemporaryDirectory", Recording)
    ctx = MtlsChannel().server_ssl_context(group_asset("bob"))
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    assert len(made) == 1
    assert not os.path.exists(made[0])
