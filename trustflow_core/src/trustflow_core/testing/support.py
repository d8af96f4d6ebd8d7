"""Helpers for tests and benchmarks that need no pytest: a free loopback port, the shared
upstream compatibility vectors, and running a script as if some packages were not installed.
:mod:`trustflow_core.testing.fixtures` wraps the first two as pytest fixtures; a benchmark or a
script imports them from here (``trustflow-core`` alone, no ``[test]`` extra)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

COMPAT_ENV = "TRUSTFLOW_COMPAT_DIR"
COMPAT_RELATIVE = Path("shared", "testdata", "compat")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller binds it in another
    process or server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_compat_dir(*starts: Path) -> Path | None:
    """The first ``<ancestor>/shared/testdata/compat`` holding a ``manifest.json`` above any
    of ``starts``, or None."""
    for start in starts:
        for ancestor in (start, *start.parents):
            candidate = ancestor / COMPAT_RELATIVE
            if (candidate / "manifest.json").is_file():
                return candidate
    return None


def compat_vectors_dir() -> Path:
    """The compat vectors: ``$TRUSTFLOW_COMPAT_DIR``, else the first
    ``<ancestor>/shared/testdata/compat`` above the working directory or this package.
    Raises :class:`FileNotFoundError` saying how to provide them. Usable at import time
    (for parametrization)."""
    configured = os.environ.get(COMPAT_ENV)
    if configured:
        path = Path(configured).resolve()
        if not (path / "manifest.json").is_file():
            raise FileNotFoundError(f"{COMPAT_ENV}={configured!r} has no manifest.json")
        return path
    found = find_compat_dir(Path.cwd().resolve(), Path(__file__).resolve().parent)
    if found is None:
        raise FileNotFoundError(
            f"compat vectors not found: set {COMPAT_ENV} or place them at "
            f"../{COMPAT_RELATIVE.as_posix()} next to the repository"
        )
    return found


#: Run in a child interpreter: refuse to import the modules named in $TRUSTFLOW_TEST_BLOCK (as
#: in an environment without them: ``import`` and ``importlib.util.find_spec`` raise
#: ModuleNotFoundError), then run the script ``sys.argv[1]`` with its folder first on sys.path.
_WITHOUT_PRELUDE = """
import os, runpy, sys
BLOCKED = set(os.environ.pop("TRUSTFLOW_TEST_BLOCK").split(","))
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_without(
    modules: Iterable[str],
    script: str | os.PathLike[str],
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the Python ``script`` with ``args`` in a child of this interpreter in which the
    top-level ``modules`` cannot be imported, as if they were not installed (everything else
    is this environment). Returns the finished process (text output captured)."""
    child_env = {**(os.environ if env is None else env), "TRUSTFLOW_TEST_BLOCK": ",".join(modules)}
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_PRELUDE, str(script), *args],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=timeout,
    )
