"""A ``trustflow`` server command in a subprocess, for tests on 127.0.0.1.

``with RoleProcess(env, log, "gateway", "-c", cfg).wait_listening() as gw: ... gw.port ...``
starts the command of the ``trustflow`` next to this Python, sends its stderr to ``log`` (a file
never blocks a server, whatever it logs), finds the port in its one "listening" line and stops
it with SIGTERM on exit.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

#: The ``trustflow`` console script of the running interpreter's environment.
TRUSTFLOW = str(Path(sys.executable).parent / "trustflow")


class RoleProcess:
    """``trustflow <role> <args>`` in a subprocess, its stderr in ``log``."""

    def __init__(self, env: dict[str, str], log: Path, role: str, *args: str) -> None:
        self.role, self.log = role, log
        self.port = 0
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [TRUSTFLOW, role, *args], env=env, stderr=err, stdout=subprocess.DEVNULL
            )

    def output(self) -> str:
        """What the command wrote to stderr so far."""
        return self.log.read_text(errors="replace")

    def wait_listening(self, timeout: float = 90) -> RoleProcess:
        """Wait for the role's "listening" line and take the port from it; fail the test
        with the output when the command exits or does not listen in ``timeout`` seconds."""
        pattern = re.compile(rf"{re.escape(self.role)} listening on (?:http://)?127\.0\.0\.1:(\d+)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pattern.search(self.output())
            if found:
                self.port = int(found.group(1))
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}: {self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"not listening after {timeout} s: {self.output()}")

    def exit_code(self, timeout: float = 60) -> int:
        """Wait for the command to end by itself (one that keeps running fails the test)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"still running after {timeout} s: {self.output()}") from None

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 30 s; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    @property
    def target(self) -> str:
        """``127.0.0.1:<port>`` once listening."""
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> RoleProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
