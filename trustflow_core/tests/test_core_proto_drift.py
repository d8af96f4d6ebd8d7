"""scripts/gen_proto.py reproduces the committed generated code and detects drift.

Needs the pinned generator (grpcio-tools, mypy-protobuf); skipped where it is not installed
(the tox ``proto`` env runs the same check on its own).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_proto.py"
COMMITTED = REPO / "trustflow_core" / "src" / "trustflow_core" / "proto"
CM_PB2 = "secretflowapis/v2/sdc/capsule_manager/capsule_manager_pb2.py"


def _generator_missing() -> str | None:
    for dist in ("grpcio-tools", "mypy-protobuf"):
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return f"{dist} not installed"
    return None


pytestmark = pytest.mark.skipif(_generator_missing() is not None, reason=str(_generator_missing()))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "proto"
    shutil.copytree(COMMITTED, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_committed_code_is_up_to_date() -> None:
    proc = _run("--check")
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout


def test_check_passes_on_an_exact_copy(copy: Path) -> None:
    proc = _run("--check", "--out", str(copy))
    assert proc.returncode == 0, proc.stderr


def test_check_fails_on_an_edited_file(copy: Path) -> None:
    target = copy / CM_PB2
    target.write_text(target.read_text(encoding="utf-8") + "# local edit\n", encoding="utf-8")
    proc = _run("--check", "--out", str(copy))
    assert proc.returncode == 1
    assert f"changed: {CM_PB2}" in proc.stderr
    assert "+# local edit" not in proc.stderr  # the diff runs committed -> generated
    assert "-# local edit" in proc.stderr


def test_check_fails_on_missing_and_stale_files(copy: Path) -> None:
    (copy / CM_PB2).unlink()
    (copy / "secretflowapis" / "v2" / "old_pb2.py").write_text("# stale\n", encoding="utf-8")
    proc = _run("--check", "--out", str(copy))
    assert proc.returncode == 1
    assert f"missing: {CM_PB2}" in proc.stderr
    assert "stale (not generated): secretflowapis/v2/old_pb2.py" in proc.stderr


def test_generation_repairs_a_drifted_tree(copy: Path) -> None:
    (copy / CM_PB2).write_text("broken\n", encoding="utf-8")
    (copy / "secretflowapis" / "v2" / "old_pb2.py").write_text("# stale\n", encoding="utf-8")
    assert _run("--out", str(copy)).returncode == 0
    assert not (copy / "secretflowapis" / "v2" / "old_pb2.py").exists()
    assert (copy / CM_PB2).read_bytes() == (COMMITTED / CM_PB2).read_bytes()
    assert _run("--check", "--out", str(copy)).returncode == 0


def test_generation_into_an_empty_dir_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert _run("--out", str(first)).returncode == 0
    assert _run("--out", str(second)).returncode == 0
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    assert Path("__init__.py") in files
