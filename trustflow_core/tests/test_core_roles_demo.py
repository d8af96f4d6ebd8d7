"""``trustflow demo online``: the whole scenario in one command, both profiles."""

from __future__ import annotations

import ast

import pytest
from click.testing import CliRunner

from trustflow_core.demo.commands import demo


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "tee_sim,channel_jwe")


@pytest.mark.parametrize(
    ("args", "header"),
    [
        ([], {"alg": "dir", "enc": "A256GCM"}),
        (["--compat"], {"alg": "RSA-OAEP-256", "enc": "A128GCM"}),
    ],
)
def test_demo_online_prints_the_sealed_reply_and_its_plaintext(args, header):
    import base64
    import json

    result = CliRunner().invoke(demo, ["online", "--quiet", *args])
    assert result.exit_code == 0, result.output
    first, second = result.output.splitlines()
    assert first.startswith("Response: {")
    envelope = ast.literal_eval(first.removeprefix("Response: "))
    protected = envelope["protected"]
    assert json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4))) == header
    if args:
        assert list(envelope) == ["protected", "encrypted_key", "iv", "ciphertext", "tag", "aad"]
    assert second == "Response Raw: I got your message: hello"


def test_demo_online_custom_message():
    result = CliRunner().invoke(demo, ["online", "--quiet", "--message", "hi there"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1] == "Response Raw: I got your message: hi there"
