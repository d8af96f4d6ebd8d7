"""`trustflow demo offline` through the real CLI group (the scenario itself is tested in
test_core_offline_demo.py)."""

from __future__ import annotations

from click.testing import CliRunner

from trustflow_core.cli import build_cli


def test_demo_offline_prints_where_the_result_went_and_the_joined_rows(monkeypatch, tmp_path):
    monkeypatch.setenv("TRUSTFLOW_SIM_DIR", str(tmp_path / "sim"))
    result = CliRunner().invoke(build_cli(), ["demo", "offline", "--quiet"])
    assert result.exit_code == 0, result.output
    first, *rows = result.output.splitlines()
    assert first.startswith("Result stored at ")
    count = int(first.rsplit("(", 1)[1].split()[0])
    assert count > 0
    assert rows[0].startswith("id,")
    assert len(rows) - 1 == count
