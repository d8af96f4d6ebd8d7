"""``--json`` on the commands that lacked it (issue 15): ``util encrypt-file/decrypt-file``
(and their in-place forms), ``attest report``, ``demo online/offline/interact``: one JSON
object on stdout, nothing else there; through the real CLI group."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from trustflow_core.cli import build_cli

pytestmark = pytest.mark.plugins("tee_sim", "channel_jwe", "channel_mtls", "storage_local")


def _run(*args: str) -> dict:
    result = CliRunner().invoke(build_cli(), list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_encrypt_and_decrypt_file_json(plugin_env: bool, tmp_path: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_bytes(b"id,age\n" + b"".join(b"%d,%d\n" % (i, i % 90) for i in range(5000)))
    key = tmp_path / "data.key"
    key.write_text(base64.b64encode(os.urandom(16)).decode())
    sealed = _run("util", "encrypt-file", "--source-file", str(source), "--data-key-file",
                  str(key), "--json")  # fmt: skip
    enc = tmp_path / "data.csv.enc"
    assert sealed == {
        "action": "encrypt",
        "source_file": str(source),
        "dest_file": str(enc),
        "source_bytes": source.stat().st_size,
        "dest_bytes": enc.stat().st_size,
        "format": "v1",
    }
    dec = tmp_path / "out.csv"
    opened = _run("util", "decrypt-file", "--source-file", str(enc), "--dest-file", str(dec),
                  "--data-key-file", str(key), "--json")  # fmt: skip
    assert opened["dest_bytes"] == source.stat().st_size == dec.stat().st_size
    assert opened["source_bytes"] == enc.stat().st_size and opened["action"] == "decrypt"
    assert dec.read_bytes() == source.read_bytes()
    inplace = _run("util", "encrypt-file-inplace", "--file", str(dec), "--data-key-file",
                   str(key), "--format", "v2", "--json")  # fmt: skip
    assert inplace["format"] == "v2" and inplace["dest_bytes"] == dec.stat().st_size
    back = _run("util", "decrypt-file-inplace", "--file", str(dec), "--data-key-file", str(key),
                "--json")  # fmt: skip
    assert back["dest_bytes"] == source.stat().st_size
    assert dec.read_bytes() == source.read_bytes()


def test_attest_report_json(plugin_env: bool, tmp_path: Path) -> None:
    user_data = "ab" * 32
    made = _run("attest", "report", "--plat", "sim", "--user-data", user_data, "--json")
    assert made["backend"] == "sim" and made["out"] is None
    assert made["report_type"] == "Passport"
    assert made["report"]["str_tee_platform"] == made["platform"]
    out = tmp_path / "report.json"
    written = _run("attest", "report", "--plat", "sim", "--user-data", user_data, "--out",
                   str(out), "--json")  # fmt: skip
    assert written["out"] == str(out)
    assert json.loads(out.read_text()) == written["report"]
    verdict = _run("attest", "verify", "--report", str(out), "--allow-simulation",
                   "--user-data", user_data, "--json")  # fmt: skip
    assert verdict["verdict"] == "accepted"


def test_demo_online_json(plugin_env: bool) -> None:
    reply = _run("demo", "online", "--message", "json please", "--json")
    assert reply["status"] == 200
    assert reply["plaintext"] == "I got your message: json please\n"
    assert set(reply["envelope"]) >= {"protected", "ciphertext"}


def test_demo_offline_json(plugin_env: bool) -> None:
    outcome = _run("demo", "offline", "--json")
    lines = outcome["csv"].splitlines()
    assert outcome["rows"] == len(lines) - 1 > 0
    assert lines[0].startswith("id,")
    assert outcome["result_location"]


def test_demo_interact_json(plugin_env: bool) -> None:
    outcome = _run("demo", "interact", "--json")
    assert set(outcome["lines"]) == {"bob", "carol"}
    assert outcome["group_ca"] and outcome["outsider_refusal"]
