"""Helpers the benchmark scripts share: free loopback ports, waiting for a server process to
listen, the CPU time a server process (and its workers) used, a plain pass-through gateway
process and a Capsule Manager process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; exit (with the process's stderr,
    when it was captured) if ``proc`` ends first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            err = err.decode(errors="replace") if isinstance(err, bytes) else err
            raise SystemExit(f"{proc.args[:3]} exited with {proc.returncode}: {err}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its live descendants (Linux /proc); a
    process that ended meanwhile counts as 0."""
    return sum(cpu_split(pid))


def _stat_seconds(stat: Path) -> tuple[float, float]:
    """(user, system) CPU seconds of a ``/proc/.../stat`` file (a process's or a thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_split(pid: int) -> tuple[float, float]:
    """:func:`cpu_seconds` as (user, system): the process's own code and the kernel's work
    for it."""
    try:
        user, system = _stat_seconds(Path(f"/proc/{pid}/stat"))
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0, 0.0
    for child in children:
        child_user, child_system = cpu_split(int(child))
        user, system = user + child_user, system + child_system
    return user, system


def thread_cpu_seconds(pid: int) -> dict[tuple[int, str], float]:
    """User + system CPU time so far of each thread of a process, by (thread id, OS-level
    thread name) (Linux /proc; threads that ended are gone from it)."""
    threads: dict[tuple[int, str], float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds = sum(_stat_seconds(task / "stat"))
            name = (task / "comm").read_text().rstrip("\n")
        except OSError:
            continue
        threads[(int(task.name), name)] = seconds
    return threads


def plain_gateway(
    trustflow: str, folder: Path, name: str, app_port: int, workers: int, env: dict[str, str]
) -> tuple[subprocess.Popen, int]:
    """Start ``trustflow gateway`` (``workers`` processes, errors-only log) with one plain
    listener relaying ``/teeapp`` to the app on ``app_port``, its config written to
    ``folder/<name>.yml``, and wait until it listens; return the process and its port."""
    port = free_port()
    config = {
        "listeners": [
            {
                "name": "plain",
                "address": f"127.0.0.1:{port}",
                "routes": [{"prefix": "/teeapp", "cluster": "app"}],
            }
        ],
        "clusters": {"app": {"endpoints": [f"127.0.0.1:{app_port}"]}},
    }
    path = folder / f"{name}.yml"
    path.write_text(json.dumps(config))
    command = [trustflow, "gateway", "-c", str(path), "--log-level", "error"]
    process = subprocess.Popen(
        [*command, "--workers", str(workers)], env=env, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port, process)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, port


@contextlib.contextmanager
def capsule_manager_process(
    extra_args: list[str], env: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen[str], list[str]]]:
    """``trustflow capsule-manager --plat sim --port 0 <extra_args>`` (warnings only); yield its
    gRPC target, the process and the lines it logs (kept by a thread); stopped on exit."""
    trustflow = str(Path(sys.executable).parent / "trustflow")
    cmd = [trustflow, "capsule-manager", "--plat", "sim", "--port", "0", "--log-level", "warning"]
    proc = subprocess.Popen([*cmd, *extra_args], env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    port = None
    for line in proc.stderr:
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            port = int(found.group(1))
            break
    if port is None:
        raise SystemExit(f"capsule manager exited with {proc.wait()}")
    logged: list[str] = []
    drain = threading.Thread(target=lambda: logged.extend(proc.stderr or ()), daemon=True)
    drain.start()
    try:
        yield f"127.0.0.1:{port}", proc, logged
    finally:
        proc.terminate()
        proc.wait(30)
        drain.join(5)
