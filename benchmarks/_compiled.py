"""The gateway's compiled build for the benchmarks: a wheel of trustflow_core built with
``TRUSTFLOW_COMPILE=1`` (its request path compiled by mypyc, as a compiling image build), unpacked
into a folder that goes first on a gateway process's ``PYTHONPATH``."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

#: the trustflow_core project of this checkout
CORE = Path(__file__).resolve().parents[1] / "trustflow_core"


def build_compiled(work: Path) -> Path:
    """Build the compiled wheel of this checkout's core and unpack its package (not its
    metadata: the venv's own install keeps providing the entry points) into ``work``; return
    the folder to put first on ``PYTHONPATH``. Exit naming the problem when the build fails or
    does not run compiled."""
    wheels, site = work / "wheel", work / "compiled"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(CORE)],
        env={**os.environ, "TRUSTFLOW_COMPILE": "1"},
        capture_output=True,
        text=True,
    )
    if build.returncode:
        tail = "\n".join(build.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"cannot build the compiled gateway (--build interpreted):\n{tail}")
    (wheel,) = wheels.glob("trustflow_core-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site, [n for n in archive.namelist() if ".dist-info/" not in n])
    probe = "from trustflow_core.roles.gateway import compiled; print(compiled.build())"
    check = subprocess.run(
        [sys.executable, "-c", probe],
        env=with_path(os.environ, site),
        capture_output=True,
        text=True,
    )
    if check.stdout.strip() != "compiled":
        raise SystemExit(f"the compiled wheel runs {check.stdout.strip()!r}: {check.stderr}")
    return site


def with_path(env: os._Environ[str] | dict[str, str], folder: Path) -> dict[str, str]:
    """``env`` with ``folder`` first on ``PYTHONPATH``."""
    rest = env.get("PYTHONPATH")
    return {**env, "PYTHONPATH": f"{folder}{os.pathsep}{rest}" if rest else str(folder)}
