"""The CSV attester's settings go through the core's one validator: a bad value is named by its
key path (and, read from a file, by the file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from trustflow_core.testing.settings import settings_error

from trustflow_tee_csv.attester import CsvAttester


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("background_check_fallback: 'yes'\n", "attester.background_check_fallback", "expected"),
        ("device: [1]\n", "attester.device", "expected"),
        ("kds_url: ftp://kds\n", "attester.kds_url", "expected an http(s) URL"),
        ("kds_timeout_seconds: 0\n", "attester.kds_timeout_seconds", "positive number"),
        ("bogus: 1\n", "attester", "unknown key(s) bogus"),
    ],
)
def test_a_bad_setting_is_named_by_file_and_key(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    message = settings_error(tmp_path, CsvAttester.from_settings, text)
    assert message.startswith(f"{tmp_path / 'role.yaml'}: {key}: "), message
    assert problem in message


def test_good_settings_build(tmp_path: Path) -> None:
    attester = CsvAttester.from_settings({"device": str(tmp_path / "csv-guest")})
    assert attester.device.path == tmp_path / "csv-guest"  # type: ignore[union-attr]
