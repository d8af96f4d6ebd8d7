"""Wiring: the entry point, the registry and backend selection."""

from __future__ import annotations

import pytest
from trustflow_core.errors import BackendUnavailable
from trustflow_core.manager import get_plugin_manager
from trustflow_core.registry import (
    ATTESTER,
    VERIFIER,
    backend_class,
    list_plugins,
    verifier_for_platform,
)

from trustflow_tee_sim.attester import SimAttester
from trustflow_tee_sim.verifier import SimVerifier


def test_tee_sim_plugin_is_installed():
    infos = {i.name: i for i in list_plugins(get_plugin_manager())}
    info = infos["tee_sim"]
    assert info.dist == "trustflow-tee-sim"
    assert info.error is None
    assert info.module == "trustflow_tee_sim.plugin"
    found = {(b.kind, b.name): b for b in info.backends}
    assert set(found) == {("attester", "sim"), ("verifier", "sim")}
    for backend in found.values():
        assert backend.simulated
        assert backend.viable


def test_backends_are_found_by_name_and_platform():
    pm = get_plugin_manager()
    assert backend_class(pm, ATTESTER, "sim") is SimAttester
    assert backend_class(pm, VERIFIER, "sim") is SimVerifier
    assert verifier_for_platform(pm, "SIM") is SimVerifier


def test_sim_is_never_selected_automatically():
    with pytest.raises(BackendUnavailable, match="simulated backends must be named"):
        backend_class(get_plugin_manager(), ATTESTER)


def test_sim_is_selected_through_the_environment(monkeypatch):
    monkeypatch.setenv("TRUSTFLOW_TEE", "sim")
    assert backend_class(get_plugin_manager(), ATTESTER) is SimAttester


def test_class_contract():
    for cls in (SimAttester, SimVerifier):
        assert cls.name == "sim"
        assert cls.platform == "SIM"
        assert cls.simulated is True
