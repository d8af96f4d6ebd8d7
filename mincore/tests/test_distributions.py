"""Wheels build for every distribution of the repository (the core, each plugin, each example)
and each carries the Apache-2.0 LICENSE and its metadata (issue 15). Run by the ``mincore``
tox env, next to the minimal-core venvs built from the same kind of wheels."""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = sorted(
    p.parent
    for p in [
        REPO / "trustflow_core" / "pyproject.toml",
        *REPO.glob("plugins/*/pyproject.toml"),
        *REPO.glob("examples/*/pyproject.toml"),
    ]
)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Distribution name (as in the wheel file name) -> its freshly built wheel."""
    out = tmp_path_factory.mktemp("wheels")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out)]
        + [str(d) for d in DISTRIBUTIONS],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return {w.name.split("-")[0]: w for w in out.glob("*.whl")}


def test_a_wheel_per_distribution(wheels: dict[str, Path]) -> None:
    assert len(DISTRIBUTIONS) == 10
    assert len(wheels) == len(DISTRIBUTIONS), sorted(wheels)


@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda d: d.name)
def test_wheel_carries_license_and_metadata(dist: Path, wheels: dict[str, Path]) -> None:
    (package,) = [p.name for p in (dist / "src").glob("trustflow_*") if "." not in p.name]
    wheel = wheels[package]  # the import package is the wheel's name
    with zipfile.ZipFile(wheel) as zf:
        info = next(n.split("/")[0] for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        license_text = zf.read(f"{info}/licenses/LICENSE")
        metadata = email.message_from_bytes(zf.read(f"{info}/METADATA"))
    assert license_text == (REPO / "LICENSE").read_bytes()
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["License-File"] == "LICENSE"
    assert metadata["Requires-Python"] == ">=3.10"
    classifiers = metadata.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.10" in classifiers
    assert "Programming Language :: Python :: 3.13" in classifiers
    assert metadata.get_all("Project-URL")
    assert "test" in (metadata.get_all("Provides-Extra") or [])
    assert "testing" not in (metadata.get_all("Provides-Extra") or [])


def test_all_in_one_install_has_every_plugin(
    wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``pip install 'trustflow-core[all]'`` (the one command that installs the whole system)
    into a fresh venv: every first-party plugin loads and every backend of theirs that needs no
    TEE hardware is usable (both object-store SDKs included)."""
    venv = tmp_path_factory.mktemp("all-in-one")
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    assert made.returncode == 0
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env = {k: v for k, v in env.items() if not k.startswith("TRUSTFLOW_")}
    wheel_dir = next(iter(wheels.values())).parent
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
         "--find-links", str(wheel_dir), "trustflow-core[all]"],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = subprocess.run(
        [str(venv / "bin" / "trustflow"), "plugins", "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    first_party = {"core", "tee_sim", "tee_tdx", "tee_csv", "storage_local", "storage_oss"}
    first_party |= {"channel_jwe", "channel_mtls"}
    assert first_party <= set(plugins), sorted(plugins)
    assert not [name for name in first_party if plugins[name]["error"]]
    usable = {b["name"] for p in plugins.values() for b in p["backends"] if b["viable"]}
    assert {"sim", "local", "s3", "oss", "jwe", "mtls", "capsule_manager"} <= usable, usable
