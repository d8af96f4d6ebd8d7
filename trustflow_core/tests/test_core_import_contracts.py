"""The import contracts of the root pyproject.toml (`lint-imports`, run by `tox -e lint`) hold
on the tree, and each of them fails when one violating import is added to a copy of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

REPO = Path(__file__).resolve().parents[2]
#: the source roots the contracts cover (root_packages in the root pyproject.toml)
SOURCE_ROOTS = sorted(
    [REPO / "trustflow_core" / "src"]
    + [p for p in (REPO / "plugins").glob("*/src") if p.is_dir()]
    + [
        REPO / "examples" / "third_party_plugin" / "src",
        REPO / "examples" / "third_party_tee" / "src",
    ]
)


def _copy_tree(tmp_path: Path) -> tuple[Path, list[Path]]:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    roots = []
    for root in SOURCE_ROOTS:
        target = tmp_path / root.relative_to(REPO)
        shutil.copytree(root, target, ignore=shutil.ignore_patterns("__pycache__"))
        roots.append(target)
    return tmp_path, roots


def _lint_imports(
    repo: Path, roots: list[Path], *contracts: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(r) for r in roots), "NO_COLOR": "1"}
    selection = [arg for contract in contracts for arg in ("--contract", contract)]
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
            "--no-cache",
            *selection,
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    repo, roots = _copy_tree(tmp_path)
    result = _lint_imports(repo, roots)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 kept, 0 broken" in result.stdout


#: contract id -> (file under the copied trustflow_core/src or a plugin's src, line appended)
VIOLATIONS = {
    "machinery-no-roles": (
        "trustflow_core/src/trustflow_core/registry.py",
        "\n\ndef _violation() -> None:\n    from .roles.gateway import config  # noqa\n",
    ),
    "plugins-public-api": (
        "plugins/storage_local/src/trustflow_storage_local/__init__.py",
        "\nfrom trustflow_core.wire import to_json  # noqa\n",
    ),
    "roles-layers": (
        "trustflow_core/src/trustflow_core/roles/gateway/config.py",
        "\nfrom ..ra_proxy import settings as _ra_settings  # noqa\n",
    ),
    "demo-on-top": (
        "trustflow_core/src/trustflow_core/roles/gateway/config.py",
        "\n\ndef _violation() -> None:\n    from ...harness import data_capsule_proxy  # noqa\n",
    ),
    "cm-client-side": (
        "trustflow_core/src/trustflow_core/roles/capsule_manager_client/client.py",
        "\nimport sqlalchemy  # noqa\n",
    ),
    "no-cycles": (
        "trustflow_core/src/trustflow_core/errors.py",
        "\n\ndef _violation() -> None:\n    from . import registry  # noqa\n",
    ),
}


@pytest.mark.parametrize("contract", sorted(VIOLATIONS))
def test_one_violating_import_breaks_the_contract(tmp_path: Path, contract: str) -> None:
    repo, roots = _copy_tree(tmp_path)
    assert _lint_imports(repo, roots, contract).returncode == 0
    relative, line = VIOLATIONS[contract]
    with (repo / relative).open("a", encoding="utf-8") as f:
        f.write(line)
    result = _lint_imports(repo, roots, contract)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout


def test_a_new_role_package_must_be_placed_in_the_layers(tmp_path: Path) -> None:
    repo, roots = _copy_tree(tmp_path)
    new_role = repo / "trustflow_core/src/trustflow_core/roles/new_role"
    new_role.mkdir()
    (new_role / "__init__.py").write_text('"""A role no contract names yet."""\n')
    result = _lint_imports(repo, roots, "roles-layers")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "new_role" in result.stdout


def test_every_core_module_is_under_the_machinery_contract() -> None:
    """A new top-level module of trustflow_core is either role/CLI code or listed in the
    ``machinery-no-roles`` contract; it cannot slip past the contracts unlisted."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    (machinery,) = [
        c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "machinery-no-roles"
    ]
    listed = set(machinery["source_modules"])
    package = REPO / "trustflow_core" / "src" / "trustflow_core"
    outside = {"roles", "cli", "builtin", "demo", "harness", "proto", "__init__", "__main__"}
    found = {
        f"trustflow_core.{p.stem}"
        for p in package.iterdir()
        if p.stem not in outside
        and ((p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").is_file()))
    }
    assert found <= listed, f"not under any contract: {sorted(found - listed)}"
