"""Every ``trustflow <role> ...`` command line of the sample compose files and of the rendered
kustomize overlays is accepted by its role: run with ``--check-config`` (validate the settings
and exit) where the role has it, else parsed by the role's own click command (every flag
exists, every value converts, every file named exists). Container paths (/shared/...,
/etc/trustflow/..., /var/lib/trustflow/...) are mapped into a temporary directory holding the
files the containers would have (keys, the mounted gateway config and cm_init.yaml)."""

from __future__ import annotations

import base64
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))
import compose  # noqa: E402 (deploy/compose.py)

OVERLAYS = ("sim", "tdx", "csv", "postgresql", "replicas")
IDENTITIES = ("carol", "bob", "app")
DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")
K8S_VAR = re.compile(r"\$\((\w+)\)")


def _compose_commands() -> Iterator[tuple[str, list[str], dict[str, Path]]]:
    """(origin, argv after 'trustflow', container file -> host file mounted there)."""
    for path in sorted(compose.compose_files()):
        services = yaml.safe_load(path.read_text())["services"]
        for name, spec in services.items():
            command = [DEFAULT.sub(r"\2", part) for part in spec["command"]]
            entrypoint = spec.get("entrypoint")
            if entrypoint == ["sh", "-c"]:
                script = command[0]
                if "trustflow " not in script:
                    continue
                argv = shlex.split(script.split("trustflow ", 1)[1])
            elif entrypoint is None:
                argv = command
            else:
                continue  # a Python sample app or script, not a role
            mounts = {}
            for volume in spec["volumes"]:
                source, target = volume.split(":")[:2]
                if source.startswith("./"):
                    mounts[target] = path.parent / source
            yield f"{path.relative_to(ROOT)}:{name}", argv, mounts


def _render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return []
    done = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _env_value(entry: dict[str, Any], docs: list[dict[str, Any]]) -> str:
    if "value" in entry:
        return str(entry["value"])
    source = entry["valueFrom"]
    kind, ref = next(
        (k, source[r]) for k, r in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef"))
        if r in source
    )  # fmt: skip
    doc = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == ref["name"])
    value = doc["data"][ref["key"]]
    return base64.b64decode(value).decode() if kind == "Secret" else str(value)


def _manifest_commands() -> Iterator[tuple[str, list[str], dict[str, Path]]]:
    mounts = {
        "/etc/trustflow/gateway.yml": ROOT / "deploy" / "k8s" / "base" / "gateway.yml",
        "/etc/trustflow/cm/cm.yaml": ROOT / "deploy" / "k8s" / "overlays" / "replicas" / "cm.yaml",
    }
    for overlay in OVERLAYS:
        docs = _render(overlay)
        for doc in docs:
            if doc["kind"] not in ("Deployment", "StatefulSet"):
                continue
            pod = doc["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                command = container.get("command", [])
                image = container["image"].rsplit(":", 1)[0]
                if not image.endswith("trustflow") or command[:1] not in ([], ["trustflow"]):
                    continue
                env = {e["name"]: _env_value(e, docs) for e in container.get("env", [])}
                argv = [
                    K8S_VAR.sub(lambda m, env=env: env[m.group(1)], part)
                    for part in command[1:] + container["args"]
                ]
                yield (
                    f"overlays/{overlay}:{doc['metadata']['name']}/{container['name']}",
                    argv,
                    mounts,
                )


COMMANDS = [*_compose_commands(), *_manifest_commands()]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The containers' file system as far as the commands need it."""
    from trustflow_core.cli.util import generate_self_signed

    base = tmp_path_factory.mktemp("container-fs")
    deploy = base / "shared" / "deploy"
    for directory in (deploy, base / "shared" / "data", base / "shared" / "log", base / "var"):
        directory.mkdir(parents=True)
    for name in IDENTITIES:
        key, cert, _ = generate_self_signed(days=1)
        (deploy / f"{name}.key").write_bytes(key)
        (deploy / f"{name}.key").chmod(0o600)
        (deploy / f"{name}.crt").write_bytes(cert)
    _group_asset(deploy)
    return base


def _group_asset(deploy: Path) -> None:
    """The group TLS asset an interact Data Capsule Proxy fetches from the CM before its
    gateway starts (``tls.crt`` / ``tls.key``)."""
    import datetime

    from cryptography.hazmat.primitives.asymmetric import ec
    from trustflow_core.tls_asset import issue_group_asset, write_tls_asset

    asset = issue_group_asset(
        os.urandom(32),
        scope="default",
        data_uuid="breast_cancer_alice",
        op_name="interact",
        member_public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        now=datetime.datetime.now(datetime.timezone.utc),
    )
    write_tls_asset(asset, deploy / "tls.crt", deploy / "tls.key")


def _not_here(args: list[str]) -> str | None:
    """The ``--plat`` of ``args`` when its attester cannot run on this host (tdx, csv)."""
    from trustflow_core.manager import get_plugin_manager
    from trustflow_core.registry import ATTESTER, backends_of

    attesters = backends_of(get_plugin_manager(), ATTESTER)
    for option, value in itertools.pairwise(args):
        if option == "--plat" and value in attesters and not attesters[value].viable():
            return value
    return None


def _host(text: str, root: Path) -> str:
    for prefix, where in (
        ("/shared/", "shared/"),
        ("/etc/trustflow/", "etc/trustflow/"),
        ("/var/lib/trustflow/", "var/"),
    ):
        text = text.replace(prefix, f"{root}/{where}")
    return text


def _leaf(cli: click.Group, argv: list[str]) -> tuple[click.Command, click.Context]:
    """Parse argv down to the leaf command (raises click's usage errors)."""
    ctx = cli.make_context("trustflow", list(argv))
    command: click.Command = cli
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return command, ctx


def test_commands_were_found() -> None:
    roles = {argv[0] for _, argv, _ in COMMANDS}
    assert {"ra-proxy", "gateway", "client", "capsule-manager", "data-capsule-proxy"} <= roles
    if shutil.which("kubectl"):
        assert any(origin.startswith("overlays/") for origin, _, _ in COMMANDS)


@pytest.mark.parametrize(("origin", "argv", "mounts"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_role_accepts_the_command_line(
    origin: str, argv: list[str], mounts: dict[str, Path], root: Path
) -> None:
    from trustflow_core.cli import build_cli
    from trustflow_core.roles.capsule_manager.settings import TOP_KEYS

    if origin.startswith("overlays/replicas:capsule-manager") and "replicas" not in TOP_KEYS:
        pytest.skip("this CM has no replica mode yet (replicas:, --join: the join protocol)")
    for target, source in mounts.items():
        host = Path(_host(target, root))
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(_host(source.read_text(), root))
    args = [_host(part, root) for part in argv]
    cli = build_cli()
    try:
        command, _ = _leaf(cli, args)
    except click.ClickException as exc:
        pytest.fail(f"{origin}: trustflow {shlex.join(argv)}: {exc.format_message()}")
    if not any("--check-config" in p.opts for p in command.params):
        return  # parsed above: every flag, value and file

    def check(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["trustflow", *argv, "--check-config"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=root,
            env={**os.environ, "TRUSTFLOW_SIM_DIR": str(root / "shared" / "deploy" / "sim")},
        )

    plat = _not_here(args)
    if plat is not None:  # what the container's check would say on this host, then as sim
        done = check(args)
        assert done.returncode == 1 and f"{plat!r} cannot run here" in done.stderr, origin
        previous = ["", *args[:-1]]
        args = [
            "sim" if (before, arg) == ("--plat", plat) else arg
            for before, arg in zip(previous, args, strict=True)
        ]
    done = check(args)
    assert done.returncode == 0, f"{origin}: {done.stdout}{done.stderr}"


def test_a_misspelt_flag_is_refused() -> None:
    from trustflow_core.cli import build_cli

    with pytest.raises(click.NoSuchOption):
        _leaf(build_cli(), ["ra-proxy", "--cert-pth", "app.crt"])
