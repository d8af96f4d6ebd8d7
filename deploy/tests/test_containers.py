"""The ``containers`` tox env: build deploy/Dockerfile with podman and run the online and the
offline PSI samples from their compose files (docs/deploy.md). Skips, with the reason, only
where containers cannot run on the machine; deploy/podman-base.sh (run by .ci/run) makes them
runnable here."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from _stack import ROOT, Stack, podman, podman_env

IMAGE = "localhost/trustflow:test"
BASE = os.environ.get("TRUSTFLOW_IMAGE_BASE", "localhost/trustflow-base")


def _why_not() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (deploy/podman-base.sh installs it)"
    if shutil.which("runc") is None:
        return "runc is not installed (deploy/podman-base.sh installs it)"
    if podman("image", "exists", BASE, check=False).returncode != 0:
        return f"no base image {BASE} (deploy/podman-base.sh builds it)"
    probe = podman("run", "--rm", "--network", "none", BASE, "true", check=False)
    if probe.returncode != 0:
        return f"podman cannot run a container here: {probe.stderr.strip()[-300:]}"
    return None


REASON = _why_not()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture(scope="session")
def image() -> str:
    """The image, built from this tree (layers cached by podman between runs)."""
    env = podman_env({"BASE": BASE, "EXTRA_REQUIREMENTS": "moto[server]>=5,<6", "ENGINE": "podman"})
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(ROOT / "deploy" / "build-image.sh"), IMAGE],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, f"image build failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}"
    print(f"\nimage build: {time.monotonic() - started:.1f} s")
    # untagged images of builds older than three days (the newer ones are the build cache:
    # pruning them all would rebuild the venv stage every time)
    podman("image", "prune", "-f", "--filter", "until=72h", check=False)
    return IMAGE


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env(image: str) -> dict[str, str]:
    names = ["TF_GATEWAY_PORT", "TF_RA_PROXY_PORT", "TF_DATA_CAPSULE_PROXY_PORT"]
    names += ["TF_CM_PORT", "TF_APP_PORT", "TF_S3_PORT"]
    names += [
        f"TF_{p}_{w}_PORT" for p in ("BOB", "CAROL") for w in ("INGRESS", "EGRESS", "APP", "DCP")
    ]
    env = dict(zip(names, map(str, _free_ports(len(names))), strict=True))
    env["TRUSTFLOW_IMAGE"] = image
    env["TF_HELLO_INTERVAL"] = "1"
    return env


@pytest.fixture
def stack(request: pytest.FixtureRequest, image: str) -> Iterator[Stack]:
    sample, profiles = request.param
    env = _env(image)
    if "s3" in profiles:
        config = {
            "endpoint": f"127.0.0.1:{env['TF_S3_PORT']}",
            "bucket": "trustflow-compose",
            "access_key_id": "ak",
            "access_key_secret": "sk",
            "type": "S3_STORAGE_TYPE_MINIO",
        }
        env["TF_S3_CONFIG"] = json.dumps(config)
    running = Stack(sample, "sim", f"tftest{sample}{os.getpid()}", env, profiles)
    try:
        yield running
    finally:
        running.down()


def test_image_runs_every_role_as_a_non_root_user(image: str) -> None:
    user = podman("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u")
    assert user.stdout.strip() == "10001"
    listed = podman("run", "--rm", "--network", "none", image, "--help").stdout
    for role in ("capsule-manager", "ra-proxy", "data-capsule-proxy", "gateway", "client"):
        assert role in listed
    # the build secrets (pip configuration, CA bundle) are in no layer
    leftovers = podman(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
        "ls /run/secrets /opt/trustflow/bin/pip 2>/dev/null; true",
    )  # fmt: skip
    assert leftovers.stdout == ""


@pytest.mark.parametrize("stack", [("online", ("client",))], indirect=True)
def test_online_sample_client_gets_the_sealed_reply(stack: Stack) -> None:
    started = time.monotonic()
    outputs = stack.up()
    print(f"\nonline scenario: {time.monotonic() - started:.1f} s")
    lines = outputs["client"].splitlines()
    sealed = next(line for line in lines if line.startswith("Response: "))
    envelope = sealed.removeprefix("Response: ")
    assert "'ciphertext'" in envelope and "'tag'" in envelope and "hello" not in envelope
    assert "Response Raw: I got your message: hello" in lines
    assert any(line.startswith("Attested: SIM report verified") for line in lines)


@pytest.mark.parametrize(
    "stack",
    [
        pytest.param(("offline", ("result",)), id="local-files"),
        pytest.param(("offline", ("result", "s3")), id="s3"),
    ],
    indirect=True,
)
def test_offline_psi_sample_registers_the_result(stack: Stack) -> None:
    from trustflow_core.demo.offline import sample_tables

    alice, bob = (table.decode().splitlines()[1:] for table in sample_tables())
    expected = len({r.split(",")[0] for r in alice} & {r.split(",")[0] for r in bob})
    started = time.monotonic()
    outputs = stack.up()
    print(f"\noffline scenario ({'+'.join(stack.profiles)}): {time.monotonic() - started:.1f} s")
    assert f"psi: joined {expected} rows; result registered as join_uuid" in outputs["teeapp"]
    assert f"result join_uuid registered; {expected} joined rows" in outputs["result"]


@pytest.mark.parametrize("stack", [("interact", ())], indirect=True)
def test_interact_sample_apps_talk_over_group_mtls(stack: Stack) -> None:
    started = time.monotonic()
    stack.up()
    wanted = {"bob-app": "Hi, I'm Carol. I got your message: ", "carol-app": "Hi, I'm Bob. "}
    deadline = time.monotonic() + 60
    logs = {}
    while wanted and time.monotonic() < deadline:
        for service, text in list(wanted.items()):
            logs[service] = podman("logs", stack.container(service), check=False).stdout
            if any(
                line.startswith("response: ") and text in line
                for line in logs[service].splitlines()
            ):
                del wanted[service]
        time.sleep(1)
    print(f"\ninteract scenario: {time.monotonic() - started:.1f} s")
    assert not wanted, f"no hello through mTLS: {logs}"
