"""Shared fixtures: every test gets its own sim directory and sees only the tee_sim plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustflow_tee_sim.attester import SimAttester
from trustflow_tee_sim.verifier import SimVerifier


@pytest.fixture(autouse=True)
def sim_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$TRUSTFLOW_SIM_DIR`` under tmp_path, so no test touches the real home directory."""
    path = tmp_path / "sim"
    monkeypatch.setenv("TRUSTFLOW_SIM_DIR", str(path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "tee_sim")
    for name in ("TRUSTFLOW_TEE", "TRUSTFLOW_VERIFIER", "TRUSTFLOW_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture
def attester() -> SimAttester:
    return SimAttester.from_settings({})


@pytest.fixture
def verifier() -> SimVerifier:
    return SimVerifier.from_settings({})
