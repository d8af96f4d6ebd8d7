"""Run a how-to page of the documentation (docs/howto/*.md) as a shell script.

A page marks what a reader types with an HTML comment, invisible on the site, right before a
fenced code block:

* ``<!-- run -->`` before a ``bash`` block: the block's commands, run in page order in ONE
  bash session (``set -euo pipefail``; variables and ``cd`` carry over, background servers
  started with ``&`` stay up until the page stops them or the script ends);
* ``<!-- expect -->`` before a ``text`` block: every non-empty line must appear in what the
  commands printed on stdout.

The script starts in the root of the repository (where the pages tell the reader to start)
with ``HOME`` set to a fresh temporary directory, so ``~/...`` working directories, the
Capsule Manager's default data directory and the simulated TEE's platform key all land there.
Every loopback port the page names (``127.0.0.1:PORT``, ``--port PORT``)
is replaced by a free one, so the page can show the usual ports while tests run in parallel.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOWTO_DIR = REPO / "docs" / "howto"

_BLOCK = re.compile(
    r"<!--\s*(run|expect)\s*-->\s*\n```(\w*)[^\n]*\n(.*?)\n```", re.DOTALL | re.MULTILINE
)
_PORT = re.compile(r"(?:127\.0\.0\.1:|--port[ =])(\d{4,5})\b")
_PRELUDE = """set -euo pipefail
trap 'jobs -p | xargs -r kill 2>/dev/null || true; wait 2>/dev/null || true' EXIT
"""


@dataclass(frozen=True)
class HowTo:
    """The executable part of one page: its commands and the output lines it promises."""

    path: Path
    script: str
    expected: tuple[str, ...]


def parse(path: Path) -> HowTo:
    """Extract the marked blocks of ``path``; a marked block of the wrong language (a
    ``run`` block that is not ``bash``, an ``expect`` block that is not ``text``) is an
    error, so a marker cannot silently stop covering its block."""
    text = path.read_text()
    commands: list[str] = []
    expected: list[str] = []
    for kind, lang, body in _BLOCK.findall(text):
        want = "bash" if kind == "run" else "text"
        if lang != want:
            raise ValueError(f"{path.name}: a '{kind}' block must be ```{want}, not ```{lang}")
        if kind == "run":
            commands.append(body)
        else:
            expected.extend(line.strip() for line in body.splitlines() if line.strip())
    markers = len(re.findall(r"<!--\s*(?:run|expect)\s*-->", text))
    if markers != len(_BLOCK.findall(text)):
        raise ValueError(f"{path.name}: a run/expect marker is not followed by a code block")
    return HowTo(path, "\n".join(commands), tuple(expected))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def remap_ports(script: str) -> tuple[str, dict[int, int]]:
    """Replace every port the script names by a free loopback port (same number → same
    replacement everywhere in the script, heredoc'd config files included)."""
    ports = sorted({int(p) for p in _PORT.findall(script)})
    mapping = {port: _free_port() for port in ports}
    for old, new in mapping.items():
        script = re.sub(rf"(?<![\d.]){old}(?!\d)", str(new), script)
    return script, mapping


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run(howto: HowTo, home: Path, timeout: float = 180.0) -> Outcome:
    """Run the page's commands in a new process group (killed afterwards, whatever
    happened) and return what they did."""
    script, _ = remap_ports(howto.script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "TRUSTFLOW_SIM"))}
    env["HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", _PRELUDE + script],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n[timed out after {timeout:.0f} s]"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    return Outcome(proc.returncode, out, err, time.monotonic() - started)
