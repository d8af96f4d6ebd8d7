"""The offline demo (CM + Data Capsule Proxy + PSI app process, local disk and S3 variants)."""

from __future__ import annotations

import csv
import io

import pytest
from test_core_offline_psi import expected_join

from trustflow_core.demo.offline import run_offline

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.plugins("channel_jwe", "tee_sim", "storage_local", "storage_oss"),
    pytest.mark.usefixtures("plugin_env"),
]


@pytest.mark.parametrize("s3", [False, True], ids=["local", "s3"])
async def test_offline_demo(tmp_path, s3):
    steps: list[str] = []
    result = await run_offline(s3=s3, work=tmp_path / "work", say=steps.append)
    assert result.joined_csv == expected_join("demo_sample")
    rows = list(csv.reader(io.StringIO(result.joined_csv.decode())))
    assert result.rows == len(rows) - 1 > 0
    assert result.result_location.startswith("s3://" if s3 else str(tmp_path))
    assert any("carol" in step for step in steps)
    assert "joined" in result.app_output
