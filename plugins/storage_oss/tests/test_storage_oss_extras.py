"""Each SDK is an extra (``trustflow-storage-oss[s3]`` / ``[oss]``): with one SDK missing, the
other backend still works, and the missing one is listed as not usable and refused in one line
naming the extra to install. The SDK is made unimportable in a child interpreter by an import
hook that refuses its name, as an environment without it would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: Makes the modules named in TRUSTFLOW_TEST_BLOCK unimportable, then runs the rest.
PRELUDE = """
import os, sys
BLOCKED = set(os.environ["TRUSTFLOW_TEST_BLOCK"].split(","))
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
"""


def _run(blocked: str, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRUSTFLOW_TEST_BLOCK": blocked, "TRUSTFLOW_LOAD_PLUGINS": "storage_oss"}
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("blocked", "missing", "present", "extra"),
    [("boto3,botocore", "s3", "oss", "s3"), ("oss2", "oss", "s3", "oss")],
)
def test_missing_sdk_names_its_extra(blocked: str, missing: str, present: str, extra: str) -> None:
    listed = _run(blocked, "from trustflow_core.cli import main; main(['plugins', '--json'])")
    assert listed.returncode == 0, listed.stderr
    (plugin,) = [p for p in json.loads(listed.stdout) if p["name"] == "storage_oss"]
    backends = {b["name"]: b for b in plugin["backends"]}
    assert backends[present]["viable"], backends[present]
    assert not backends[missing]["viable"]
    hint = f"pip install 'trustflow-storage-oss[{extra}]'"
    assert hint in backends[missing]["reason"]

    refused = _run(
        blocked,
        "from trustflow_core.manager import get_plugin_manager\n"
        "from trustflow_core.registry import STORAGE, backend_class\n"
        "from trustflow_core.errors import BackendUnavailable\n"
        "pm = get_plugin_manager()\n"
        f"backend_class(pm, STORAGE, {present!r})\n"
        "try:\n"
        f"    backend_class(pm, STORAGE, {missing!r})\n"
        "except BackendUnavailable as exc:\n"
        "    print(exc)\n",
    )
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.count("\n") == 1
    assert f"'{missing}'" in refused.stdout and hint in refused.stdout
