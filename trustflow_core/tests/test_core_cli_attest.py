"""`trustflow attest verify` argument rules (backend behaviour is tested with each plugin)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from trustflow_core.cli import build_cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of --report and --quote"),
        (["--report", "r.json", "--quote", "q.bin"], "exactly one of --report and --quote"),
        (["--quote", "q.bin"], "--quote needs --plat"),
    ],
)
def test_verify_argument_errors_are_usage_errors(args, message):
    result = CliRunner().invoke(build_cli(), ["attest", "verify", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_verify_with_an_unknown_platform_backend_names_the_fix(tmp_path):
    quote = tmp_path / "q.bin"
    quote.write_bytes(b"\0" * 64)
    result = CliRunner().invoke(
        build_cli(), ["attest", "verify", "--quote", str(quote), "--plat", "nosuch"]
    )
    assert result.exit_code == 1
    assert "no verifier backend 'nosuch'" in result.output
    assert "Traceback" not in result.output
