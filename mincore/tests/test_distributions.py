"""Wheels build for every distribution of the repository (the core, each plugin, each example)
and each carries the Apache-2.0 LICENSE and its metadata (issue 15). Run by the ``mincore``
tox env, next to the minimal-core venvs built from the same kind of wheels."""

from __future__ import annotations

import email
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
    wheel = wheels[package]  # the import package is the wheel's name (STYLE.md §1)
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
