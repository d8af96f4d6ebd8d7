"""The testing helpers import without pytest (issue 15): ``trustflow_core.testing`` and the
modules benchmarks and scripts use (``support``, ``certs``, ``databases``) work in an
environment without pytest and pytest-asyncio, as the quick start's is."""

from __future__ import annotations

from pathlib import Path

from trustflow_core.testing.support import run_without

NO_PYTEST = ("pytest", "_pytest", "pytest_asyncio")


def test_testing_helpers_import_without_pytest(tmp_path: Path) -> None:
    script = tmp_path / "uses_helpers.py"
    script.write_text(
        "import trustflow_core.testing\n"
        "from trustflow_core.testing import certs, databases\n"
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


def test_the_kits_still_say_they_need_pytest(tmp_path: Path) -> None:
    script = tmp_path / "uses_kit.py"
    script.write_text("import trustflow_core.testing.storage\n")
    done = run_without(NO_PYTEST, script)
    assert done.returncode == 1
    assert "No module named 'pytest'" in done.stderr
