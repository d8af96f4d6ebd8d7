"""The benchmarks run from the quick-start environment (issue 15): no pytest (the testing
helpers they use import without it), and ``benchmarks/capsule_manager.py`` skips a database
whose driver is missing with one line naming the extra, instead of crashing. Each runs briefly
(few rounds) for real."""

from __future__ import annotations

import os
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


def test_gateway_growth_runs_and_exits_1_on_a_missed_target(tmp_path: Path) -> None:
    """A tiny run (40 connections) with a target no run can meet, where no nginx can be
    found: nginx is skipped with the reason, the gateway's table is printed and the exit
    status says the target was missed."""
    done = run_without(
        NO_PYTEST,
        BENCHMARKS / "gateway_growth.py",
        *("--connections", "40", "--base", "4", "--seconds", "0.3", "--rounds", "1"),
        *("--target", "0.001"),
        env={**os.environ, "TRUSTFLOW_BENCH_PEERS_PATH": str(tmp_path)},
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert "skipping nginx: no nginx binary (Debian: apt-get install nginx-light)" in lines
    assert not any(line.startswith("nginx /") for line in lines)
    assert any(line.startswith("gateway / 40 conns, 40 in flight") for line in lines)
    assert lines[-1].startswith("growth targets missed: gateway idle-many p50")


def test_cm_growth_seeds_measures_and_exits_1_on_a_missed_target() -> None:
    """Two tiny SQLite sizes: the seeded items read back through the CM's Database (else the
    script exits with the reason), GetDataKeys is measured on each, and a target no run can
    meet gives exit status 1 with the misses named."""
    done = run_without(
        NO_PYTEST,
        BENCHMARKS / "cm_growth.py",
        *("--sizes", "2,30", "--backends", "sqlite", "--seconds", "0.3", "--rounds", "1"),
        *("--clients", "2", "--target", "0.001"),
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "sqlite: seeded 29 items" in done.stderr
    lines = done.stdout.splitlines()
    assert any(line.split()[:2] == ["sqlite", "30"] for line in lines)
    assert lines[-1].startswith("growth targets missed: sqlite 2 items p50")


def test_capsule_manager_replicas_mode_prints_baseline_ratios_and_estimate() -> None:
    import pytest
    from trustflow_core.harness.replicas import unreachable

    reason = unreachable("postgresql")
    if reason is not None:
        pytest.skip(reason)
    done = run_without(
        NO_PYTEST,
        BENCHMARKS / "capsule_manager.py",
        *("--replicas", "1,2", "--seconds", "0.6", "--rounds", "1", "--clients", "2"),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rows = [line.split() for line in lines if line.split()[:1] in (["1"], ["2"])]
    assert [r[0] for r in rows] == ["1", "2"] and rows[0][2] == "1.00"  # the baseline
    assert all(float(r[1]) > 0 and float(r[3]) > 0 for r in rows)  # req/s, CM CPU ms/req
    sql = next(line for line in lines if line.startswith("SQL per GetDataKeys"))
    assert "statements" in sql and "round trips" in sql
    assert lines[-1].startswith("estimate: a replica sustains")


def test_audit_heads_runs_without_pytest() -> None:
    done = run_without(
        NO_PYTEST, BENCHMARKS / "audit_heads.py", "--entries", "300", "--repeat", "2"
    )
    assert done.returncode == 0, done.stderr
    assert "300 entries on sqlite" in done.stdout
    assert "prefix kept" in done.stdout and "full check every call" in done.stdout


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


def test_cm_stages_prints_the_stages_and_exits_1_on_a_missed_target() -> None:
    """A short run with a target no run meets: the stage table, the gRPC floor, the total
    and the RSA share of each audit mode are printed and the exit status is 1."""
    done = run_without(
        NO_PYTEST,
        BENCHMARKS / "cm_stages.py",
        *("--seconds", "0.4", "--rounds", "1", "--clients", "2", "--iterations", "5"),
        *("--target", "0.99"),
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("RSA-OAEP decryption of the content key") for line in lines)
    assert any(line.startswith("gRPC unary call (no-op server") for line in lines)
    assert any(line.startswith("total (CM process, audit on, /proc)") for line in lines)
    by_thread = [line.strip() for line in lines if line.startswith("  ")]
    groups = ["event loop:", "worker threads:", "audit writer thread", "gRPC's own threads"]
    assert [line[: len(group)] for line, group in zip(by_thread, groups, strict=True)] == groups
    assert sum(line.startswith("audit o") and "% of it" in line for line in lines) == 2
    assert lines[-1] == "FAIL: RSA share with the audit log on is below the target 99%"


def test_jwe_open_prints_the_filter_against_its_primitives() -> None:
    """A tiny run: for ECDH (fresh and reused epk) and RSA envelopes, the filter's cost, the
    bare primitives' (the baseline) and the overhead with the primitives' share;
    informational, exit 0."""
    done = run_without(
        NO_PYTEST,
        BENCHMARKS / "jwe_open.py",
        *("--envelopes", "20", "--rounds", "1", "--key-bits", "2048"),
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split(maxsplit=1) for line in done.stdout.splitlines() if line.strip()]
    for kind in ("ecdh", "ecdh-reused", "rsa"):
        mine = [row[1] for row in rows if row[0] == kind and len(row) == 2]
        assert any(row.startswith("classify + open + seal_reply") for row in mine), kind
        assert any(row.startswith("primitives only (baseline)") for row in mine), kind
        assert any(
            row.startswith("overhead beyond the primitives") and "primitives / filter = " in row
            for row in mine
        ), kind
