"""Running a sample compose file with podman-compose the way its depends_on says: one-shot jobs
(``restart: "no"``) run to completion (``run --rm``), long-running services start
(``up -d --no-deps``) and are waited for until the health check the file declares passes
(``podman healthcheck run``: podman 4.3 has no health timers without systemd, and podman-compose
then ignores ``service_healthy``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = os.environ.get(
    "TRUSTFLOW_CONTAINERS_CONF", "/var/cache/trustflow-deploy/containers.conf"
)


def podman_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, CONTAINERS_CONF=CONTAINERS_CONF)
    env.update(extra or {})
    return env


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", "--runtime", "runc", *args],
        env=podman_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def order(services: dict[str, Any], selected: set[str]) -> list[str]:
    """``selected`` services in an order where every one comes after what it depends on."""
    done: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in path:
            raise AssertionError(f"dependency cycle: {' -> '.join((*path, name))}")
        for dep in services[name].get("depends_on", {}):
            visit(dep, (*path, name))
        done.append(name)

    for name in services:
        if name in selected:
            visit(name, ())
    return done


class Stack:
    """One compose project of a sample (``examples/<sample>/docker-compose-<mode>.yml``)."""

    def __init__(
        self, sample: str, mode: str, project: str, env: dict[str, str], profiles: tuple[str, ...]
    ) -> None:
        self.file = ROOT / "examples" / sample / f"docker-compose-{mode}.yml"
        self.project = project
        self.env = podman_env(env)
        self.profiles = profiles
        self.services: dict[str, Any] = yaml.safe_load(self.file.read_text())["services"]
        compose = shutil.which("podman-compose")
        if compose is None:
            raise AssertionError("podman-compose is not installed in this env")
        self.compose_bin = compose

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = [self.compose_bin, "--podman-args=--runtime=runc", "--in-pod=false"]
        command += ["-p", self.project, "-f", str(self.file)]
        for profile in self.profiles:
            command += ["--profile", profile]
        return subprocess.run(
            [*command, *args],
            cwd=self.file.parent,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def run(self, service: str) -> str:
        """Run a one-shot service to completion; its output, or AssertionError with it."""
        done = self.compose("run", "--rm", "--no-deps", service)
        if done.returncode != 0:
            raise AssertionError(f"{service} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done.stdout

    def start(self, service: str, timeout: float = 120) -> None:
        """Start a long-running service and wait until its declared health check passes."""
        done = self.compose("up", "-d", "--no-deps", service)
        if done.returncode != 0:
            raise AssertionError(f"cannot start {service}:\n{done.stdout}{done.stderr}")
        name, deadline = self.container(service), time.monotonic() + timeout
        while True:
            check = podman("healthcheck", "run", name, check=False)
            if check.returncode == 0:
                return
            state = podman("inspect", "-f", "{{.State.Status}}", name, check=False).stdout.strip()
            if state != "running" or time.monotonic() > deadline:
                logs = podman("logs", name, check=False)
                raise AssertionError(
                    f"{service} never healthy (state {state}, check: {check.stdout.strip()}"
                    f"{check.stderr.strip()}):\n{logs.stdout}{logs.stderr}"
                )
            time.sleep(1)

    def up(self) -> dict[str, str]:
        """Bring up every service not behind an unselected profile, in dependency order;
        returns the one-shot services' outputs."""
        selected = {
            name
            for name, spec in self.services.items()
            if not spec.get("profiles") or set(spec["profiles"]) & set(self.profiles)
        }
        outputs = {}
        for name in order(self.services, selected):
            if self.services[name].get("restart") == "no":
                outputs[name] = self.run(name)
            else:
                self.start(name)
        return outputs

    def down(self) -> None:
        self.compose("down", "-v", "-t", "2")
