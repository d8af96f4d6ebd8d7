"""The benchmarks run from the quick-start environment (issue 15): no pytest (the testing
helpers they use import without it), and ``benchmarks/capsule_manager.py`` skips a database
whose driver is missing with one line naming the extra, instead of crashing. Each runs briefly
(few rounds) for real."""

from __future__ import annotations

from pathlib import Path

from trustflow_core.testing.support import run_without

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NO_PYTEST = ("pytest", "_pytest", "pytest_asyncio")


def test_tdx_verify_runs_without_pytest() -> None:
    done = run_without(NO_PYTEST, BENCHMARKS / "tdx_verify.py", "--rounds", "2")
    assert done.returncode == 0, done.stderr
    assert "verify_quote, cold caches" in done.stdout


def test_csv_verify_runs_without_pytest() -> None:
    done = run_without(NO_PYTEST, BENCHMARKS / "csv_verify.py", "--rounds", "1")
    assert done.returncode == 0, done.stderr
    assert "full chain, cold" in done.stdout


def test_capsule_manager_skips_a_backend_without_its_driver() -> None:
    done = run_without(
        (*NO_PYTEST, "psycopg"),
        BENCHMARKS / "capsule_manager.py",
        *("--backends", "sqlite,postgresql", "--seconds", "0.3", "--rounds", "1"),
        *("--workers", "1", "--clients", "2", "--create-requests", "20"),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("skipping postgresql: its driver psycopg cannot be imported")
    assert lines[0].endswith("pip install 'trustflow-core[postgresql]'")
    assert any(line.startswith("sqlite x1      GetDataKeys") for line in lines)
    assert not any(line.startswith("postgresql") for line in lines)


def test_data_capsule_proxy_prints_baseline_ratios_and_growth(tmp_path: Path) -> None:
    """Tiny sizes (the targets may be missed on them: exit 0 or 1, never a crash): the
    baseline copies, the ratios of one round, the growth table and its RSS ratio."""
    done = run_without(
        NO_PYTEST,
        BENCHMARKS / "data_capsule_proxy.py",
        *("--size-mib", "4", "--rounds", "1", "--formats", "v2", "--growth-mib", "1,2"),
        *("--dir", str(tmp_path)),
    )
    assert done.returncode in (0, 1), done.stderr
    out = done.stdout
    assert "baseline = the faster user-space copy" in out
    assert "target v2 encrypt and decrypt >= 90% of the plain copy (median): " in out
    assert "target peak RSS 2 MiB / 1 MiB <= 1.5x: " in out
    assert list(tmp_path.iterdir()) == []  # the work directory is removed
