"""The gateway's compiled build for the benchmarks: wheels of trustflow_core and of the jwe
channel built with ``TRUSTFLOW_COMPILE=1`` (the gateway's request path and the channel's RFC
path compiled by mypyc, as a compiling image build), unpacked into a folder that goes first on a
gateway process's ``PYTHONPATH``."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the projects of this checkout compiled for the gateway, and where each reports its build
COMPILED = {
    ROOT / "trustflow_core": "trustflow_core.roles.gateway.compiled",
    ROOT / "plugins" / "channel_jwe": "trustflow_channel_jwe.compiled",
}


def build_compiled(work: Path) -> Path:
    """Build the compiled wheels of this checkout's core and jwe channel and unpack their
    packages (not their metadata: the venv's own installs keep providing the entry points) into
    ``work``; return the folder to put first on ``PYTHONPATH``. Exit naming the problem when a
    build fails or does not run compiled."""
    wheels, site = work / "wheel", work / "compiled"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels)]
        + [str(project) for project in COMPILED],
        env={**os.environ, "TRUSTFLOW_COMPILE": "1"},
        capture_output=True,
        text=True,
    )
    if build.returncode:
        tail = "\n".join(build.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"cannot build the compiled gateway (--build interpreted):\n{tail}")
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site, [n for n in archive.namelist() if ".dist-info/" not in n])
    probe = "import importlib, sys; print(importlib.import_module(sys.argv[1]).build())"
    for listing in COMPILED.values():
        check = subprocess.run(
            [sys.executable, "-c", probe, listing],
            env=with_path(os.environ, site),
            capture_output=True,
            text=True,
        )
        if check.stdout.strip() != "compiled":
            raise SystemExit(f"{listing} runs {check.stdout.strip()!r}: {check.stderr}")
    return site


def with_path(env: os._Environ[str] | dict[str, str], folder: Path) -> dict[str, str]:
    """``env`` with ``folder`` first on ``PYTHONPATH``."""
    rest = env.get("PYTHONPATH")
    return {**env, "PYTHONPATH": f"{folder}{os.pathsep}{rest}" if rest else str(folder)}
