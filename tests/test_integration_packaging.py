"""Every distribution's metadata (issue 15, packaging): the Apache-2.0 LICENSE file shipped by
each, classifiers, project URLs, supported Python versions, one extras name (``test``), the
SDK extras of trustflow-storage-oss, and every third-party module a distribution imports
declared among its requirements (dependencies or an extra).

The wheels themselves are built and opened by ``mincore/tests/test_distributions.py``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the py310 env
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = sorted(
    p.parent.relative_to(REPO).as_posix()
    for p in [
        REPO / "trustflow_core" / "pyproject.toml",
        *REPO.glob("plugins/*/pyproject.toml"),
        *REPO.glob("examples/*/pyproject.toml"),
    ]
)
#: Supported Python versions (requires-python >=3.10; tox py310 and py313 envs).
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
#: Imports a distribution may make without declaring them, each with the reason.
UNDECLARED_OK = {
    # `trustflow demo offline --s3` only: it asks for `pip install 'moto[server]'` in one line
    ("trustflow_core", "moto"),
}


def _project(dist: str) -> dict:
    return tomllib.loads((REPO / dist / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def _name(requirement: str) -> str:
    """The normalized distribution name of a PEP 508 requirement."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def test_distributions_found() -> None:
    assert "trustflow_core" in DISTRIBUTIONS and len(DISTRIBUTIONS) == 10, DISTRIBUTIONS


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_license_file_is_the_apache_text(dist: str) -> None:
    project = _project(dist)
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (REPO / dist / "LICENSE").read_bytes()
    assert text == (REPO / "LICENSE").read_bytes()
    assert b"Apache License\n                           Version 2.0, January 2004" in text
    assert b"END OF TERMS AND CONDITIONS" in text


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_classifiers_urls_and_python_versions(dist: str) -> None:
    project = _project(dist)
    assert project["requires-python"] == ">=3.10"
    classifiers = project["classifiers"]
    for version in PYTHONS:
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")], "use the SPDX license"
    assert "Typing :: Typed" in classifiers
    assert project["urls"], "at least one project URL"
    for url in project["urls"].values():
        assert url.startswith("https://")


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_one_extras_name_for_tests(dist: str) -> None:
    project = _project(dist)
    extras = project.get("optional-dependencies", {})
    assert "testing" not in extras
    assert "test" in extras, "every distribution's test requirements are its `test` extra"
    every = [r for reqs in extras.values() for r in reqs] + project.get("dependencies", [])
    assert not [r for r in every if "[testing" in r or ",testing" in r]


def test_storage_oss_sdks_are_extras() -> None:
    project = _project("plugins/storage_oss")
    assert {_name(r) for r in project["dependencies"]} == {"trustflow-core", "typing-extensions"}
    extras = project["optional-dependencies"]
    assert {_name(r) for r in extras["s3"]} == {"boto3", "botocore"}
    assert {_name(r) for r in extras["oss"]} == {"oss2"}
    core_all = _project("trustflow_core")["optional-dependencies"]["all"]
    assert any(r.startswith("trustflow-storage-oss[s3,oss]") for r in core_all)


def test_core_extras_name_the_sql_drivers_and_the_cm_channel() -> None:
    extras = _project("trustflow_core")["optional-dependencies"]
    assert {_name(r) for r in extras["postgresql"]} == {"psycopg"}
    assert {_name(r) for r in extras["mysql"]} == {"pymysql"}
    # the CM opens requests and seals replies with the jwe channel at run time
    assert "trustflow-channel-jwe" in {_name(r) for r in extras["capsule-manager"]}


def _imports(src: Path) -> dict[str, str]:
    """Top-level module -> one file importing it, over every module under ``src``."""
    found: dict[str, str] = {}
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_every_direct_import_is_declared(dist: str) -> None:
    project = _project(dist)
    declared = {_name(r) for r in project.get("dependencies", [])}
    for reqs in project.get("optional-dependencies", {}).values():
        declared |= {_name(r) for r in reqs}
    own = {p.name for p in (REPO / dist / "src").iterdir() if p.is_dir()}
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, where in _imports(REPO / dist / "src").items():
        if module in sys.stdlib_module_names or module in own or module == "__future__":
            continue
        if (dist, module) in UNDECLARED_OK:
            continue
        dists = {_name(d) for d in providers.get(module, [])}
        if module.startswith("trustflow_"):
            dists.add(_name(module))
        assert dists, f"{module} (imported by {where}) is not installed here"
        if not dists & declared:
            missing.append(f"{module} ({where}) from {sorted(dists)}")
    assert not missing, f"{dist} imports undeclared modules: {missing}"


def test_quickstart_ends_with_a_one_line_summary() -> None:
    """Under ``set -e`` the summary is printed only when every step before it succeeded; it is
    the script's last output line, naming what ran and how long it took."""
    script = (REPO / "scripts" / "quickstart.sh").read_text()
    assert "set -euo pipefail" in script
    last = [line for line in script.splitlines() if line.strip() and not line.startswith("#")][-1]
    assert last.startswith('echo "Quick start OK in ${SECONDS}s: ')
    for step in ("demo online", "demo offline", "demo interact", "attest report + verify"):
        assert step in last


def test_doc_commands_that_run_pytest_install_it_first() -> None:
    """The quick start installs no pytest: a page whose commands run ``.venv/bin/pytest`` says
    how to install it first, in the same code block (a ``[test]`` extra)."""
    pages = [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("*/*/README.md")]
    unprepared = []
    for page in pages:
        block: list[str] = []
        for n, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("```"):
                block = []
                continue
            block.append(line)
            if line.startswith(".venv/bin/pytest") and not any(
                "pip install" in prior and "[test]" in prior for prior in block
            ):
                unprepared.append(f"{page.relative_to(REPO)}:{n}")
    assert not unprepared, unprepared
