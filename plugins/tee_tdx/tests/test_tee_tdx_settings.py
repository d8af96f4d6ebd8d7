"""The TDX attester's settings go through the core's one validator: a bad value is named by its
key path (and, read from a file, by the file), never a bare "must be" without a place."""

from __future__ import annotations

from pathlib import Path

import pytest
from trustflow_core.testing.settings import settings_error

from trustflow_tee_tdx.attester import TdxAttester


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("qgs_port: x\n", "attester.qgs_port", "expected an integer"),
        ("qgs_port: 0\n", "attester.qgs_port", "expected an integer"),
        ("interface: bogus\n", "attester.interface", "expected one of"),
        ("background_check_fallback: 'yes'\n", "attester.background_check_fallback", "expected"),
        ("device: 7\n", "attester.device", "expected"),
        ("bogus: 1\n", "attester", "unknown key(s) bogus"),
    ],
)
def test_a_bad_setting_is_named_by_file_and_key(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    message = settings_error(tmp_path, TdxAttester.from_settings, text)
    assert message.startswith(f"{tmp_path / 'role.yaml'}: {key}: "), message
    assert problem in message


def test_good_settings_build() -> None:
    attester = TdxAttester.from_settings({"interface": "vsock", "qgs_port": 4050})
    assert attester.source.port == 4050  # type: ignore[attr-defined]
