"""The testing helpers import without pytest (issue 15): ``trustflow_core.testing`` and every
module of it that is not a pytest kit or fixture module (``support``, ``certs``,
``databases``, ...: what benchmarks and scripts use) work in an environment without pytest and
pytest-asyncio, as the quick start's is; the kits say plainly that they need pytest."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import trustflow_core.testing
from trustflow_core.testing.support import run_without

NO_PYTEST = ("pytest", "_pytest", "pytest_asyncio")
#: the conformance kits and fixture modules: pytest classes and fixtures by nature
PYTEST_MODULES = {
    "attestation",
    "channel",
    "keyexchange",
    "storage",
    "transport",
    "races",
    "fixtures",
    "cm_fixtures",
}
MODULES = sorted(m.name for m in pkgutil.iter_modules(trustflow_core.testing.__path__))


def test_the_module_lists_are_current() -> None:
    assert set(MODULES) > PYTEST_MODULES
    assert {"support", "certs", "databases"} <= set(MODULES) - PYTEST_MODULES


def test_testing_helpers_import_without_pytest(tmp_path: Path) -> None:
    helpers = [m for m in MODULES if m not in PYTEST_MODULES]
    script = tmp_path / "uses_helpers.py"
    script.write_text(
        "import importlib\n"
        "import trustflow_core.testing\n"
        f"for name in {helpers!r}:\n"
        "    importlib.import_module(f'trustflow_core.testing.{name}')\n"
        "from trustflow_core.testing.support import compat_vectors_dir, free_port\n"
        "assert 0 < free_port() < 65536\n"
        "print(compat_vectors_dir().name)\n"
        "try:\n"
        "    import pytest\n"
        "except ModuleNotFoundError:\n"
        "    print('no pytest')\n"
    )
    done = run_without(NO_PYTEST, script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["compat", "no pytest"]


def test_the_kits_say_they_need_pytest(tmp_path: Path) -> None:
    for name in sorted(PYTEST_MODULES):
        script = tmp_path / f"uses_{name}.py"
        script.write_text(f"import trustflow_core.testing.{name}\n")
        done = run_without(NO_PYTEST, script)
        assert done.returncode == 1, name
        assert "No module named 'pytest" in done.stderr, (name, done.stderr)
