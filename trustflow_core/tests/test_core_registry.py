"""Backend registration, selection and reporting through the registry facade."""

from __future__ import annotations

import types
from typing import ClassVar

import pytest

from trustflow_core import hookimpl
from trustflow_core.attestation import Attester, Evidence, Report, Verifier
from trustflow_core.errors import BackendNotFound, BackendUnavailable, PluginError
from trustflow_core.manager import get_plugin_manager
from trustflow_core.registry import (
    ATTESTER,
    ENVELOPE_CHANNEL,
    STORAGE,
    TRANSPORT_CHANNEL,
    VERIFIER,
    backend_class,
    backends_of,
    list_plugins,
    verifier_for_platform,
)


def _attester(name: str, *, priority: float = 0, simulated: bool = False, reason=None):
    class _A(Attester):
        platform: ClassVar[str] = name.upper()

        async def generate(self, user_data: bytes, *, report_type: str = "Passport") -> Report:
            raise NotImplementedError

        @classmethod
        def unviable_reason(cls) -> str | None:
            return reason

    _A.name = name
    _A.priority = priority
    _A.simulated = simulated
    _A.__qualname__ = f"Attester_{name}"
    return _A


def _verifier(name: str, platform: str):
    class _V(Verifier):
        async def check_evidence(self, report, *, now):
            return Evidence(attributes=None)  # pragma: no cover

    _V.name = name
    _V.platform = platform
    return _V


def _plugin(modname: str, *, attesters=(), verifiers=()):
    module = types.ModuleType(modname)

    @hookimpl
    def trustflow_register_attesters(register):
        for cls in attesters:
            register(cls)

    @hookimpl
    def trustflow_register_verifiers(register):
        for cls in verifiers:
            register(cls)

    module.trustflow_register_attesters = trustflow_register_attesters
    module.trustflow_register_verifiers = trustflow_register_verifiers
    return module


def test_backends_are_collected_from_every_plugin(pm):
    pm.register(_plugin("p1", attesters=[_attester("aaa")]), name="p1")
    pm.register(_plugin("p2", attesters=[_attester("bbb")]), name="p2")
    assert sorted(backends_of(pm, ATTESTER)) == ["aaa", "bbb"]


def test_duplicate_backend_name_is_rejected_naming_both_modules(pm):
    first, second = _attester("dup"), _attester("dup")
    first.__module__, second.__module__ = "pkg_one.backend", "pkg_two.backend"
    pm.register(_plugin("p1", attesters=[first]), name="p1")
    pm.register(_plugin("p2", attesters=[second]), name="p2")
    with pytest.raises(PluginError) as info:
        backends_of(pm, ATTESTER)
    assert "pkg_one.backend" in str(info.value)
    assert "pkg_two.backend" in str(info.value)


def test_registering_a_wrong_class_is_a_plugin_error(pm):
    bad = _plugin("bad", attesters=[dict])
    pm.register(bad, name="bad")
    with pytest.raises(PluginError, match="need a Attester"):
        backends_of(pm, ATTESTER)


def test_two_verifiers_for_one_platform_are_rejected(pm):
    pm.register(_plugin("p", verifiers=[_verifier("x", "TDX"), _verifier("y", "TDX")]), name="p")
    with pytest.raises(PluginError, match="both claim platform 'TDX'"):
        backends_of(pm, VERIFIER)


def test_unknown_backend_name_gives_an_install_hint(pm):
    pm.register(_plugin("p", attesters=[_attester("aaa")]), name="p")
    with pytest.raises(BackendNotFound) as info:
        backend_class(pm, ATTESTER, "tdx")
    message = str(info.value)
    assert "trustflow-tee-tdx" in message
    assert "['aaa']" in message
    assert "trustflow plugins" in message


def test_named_backend_that_cannot_run_here_is_unavailable(pm):
    pm.register(_plugin("p", attesters=[_attester("hw", reason="no /dev/hw")]), name="p")
    with pytest.raises(BackendUnavailable, match="no /dev/hw"):
        backend_class(pm, ATTESTER, "hw")


def test_automatic_selection_prefers_priority_and_skips_simulated_and_unviable(pm):
    sim = _attester("sim", priority=100, simulated=True)
    low, high = _attester("low", priority=1), _attester("high", priority=5)
    broken = _attester("broken", priority=50, reason="absent")
    pm.register(_plugin("p", attesters=[sim, low, high, broken]), name="p")
    assert backend_class(pm, ATTESTER) is high


def test_simulated_backend_is_never_auto_selected(pm, monkeypatch):
    monkeypatch.delenv("TRUSTFLOW_TEE", raising=False)
    pm.register(_plugin("p", attesters=[_attester("sim", simulated=True)]), name="p")
    with pytest.raises(BackendUnavailable, match="simulated backends must be named"):
        backend_class(pm, ATTESTER)


def test_environment_names_the_backend(pm, monkeypatch):
    sim = _attester("sim", simulated=True)
    pm.register(_plugin("p", attesters=[sim, _attester("real", priority=9)]), name="p")
    monkeypatch.setenv("TRUSTFLOW_TEE", "sim")
    assert backend_class(pm, ATTESTER) is sim


def test_verifier_lookup_by_platform(pm):
    tdx = _verifier("tdx", "TDX")
    pm.register(_plugin("p", verifiers=[tdx]), name="p")
    assert verifier_for_platform(pm, "TDX") is tdx
    with pytest.raises(BackendNotFound, match="'CSV'"):
        verifier_for_platform(pm, "CSV")


def test_list_plugins_reports_backends_with_viability(pm):
    pm.register(
        _plugin("p", attesters=[_attester("ok"), _attester("nope", reason="no device")]), name="p"
    )
    info = {i.name: i for i in list_plugins(pm)}
    assert "core" in info
    assert "trustflow_register_attesters" in info["p"].hooks
    by_name = {b.name: b for b in info["p"].backends}
    assert by_name["ok"].viable and by_name["ok"].reason is None
    assert not by_name["nope"].viable and by_name["nope"].reason == "no device"
    assert [b.name for b in info["core"].backends] == ["static", "capsule_manager"]


def test_a_backend_of_another_kind_is_refused_naming_the_kind_and_the_installed_names():
    installed = get_plugin_manager()  # the real channel and storage plugins
    with pytest.raises(BackendNotFound) as wrong_channel:
        backend_class(installed, ENVELOPE_CHANNEL, "mtls")
    assert str(wrong_channel.value).startswith(
        "no envelope channel backend 'mtls' ('mtls' is a transport channel, not an envelope "
        "channel); installed envelope channel backends: ['jwe']"
    )
    with pytest.raises(BackendNotFound, match=r"'jwe' is an envelope channel, not a storage\)"):
        backend_class(installed, STORAGE, "jwe")
    assert backend_class(installed, TRANSPORT_CHANNEL, "mtls").name == "mtls"
    assert "mtls" not in backends_of(installed, ENVELOPE_CHANNEL)
    assert "jwe" not in backends_of(installed, TRANSPORT_CHANNEL)
