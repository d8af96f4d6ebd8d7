"""Every test gets its own Mirage directory and home, and sees only the plugins it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustflow_tee_mirage.keys import DIR_ENV


@pytest.fixture(autouse=True)
def mirage_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$TRUSTFLOW_MIRAGE_DIR`` under tmp_path; only Mirage and the plugins every role needs
    (no tee_sim: Mirage works without it)."""
    path = tmp_path / "mirage"
    monkeypatch.setenv(DIR_ENV, str(path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "tee_mirage,channel_jwe,storage_local")
    for name in ("TRUSTFLOW_TEE", "TRUSTFLOW_VERIFIER", "TRUSTFLOW_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(name, raising=False)
    return path
