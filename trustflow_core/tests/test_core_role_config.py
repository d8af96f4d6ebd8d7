"""Role configuration through the real ``trustflow`` command (issue 13 step 4, issue 14 item 6):
every role reads ``-c/--config FILE``; a bad value anywhere in it, an unknown key or a YAML
syntax error is one ``config error: FILE: KEY.PATH: problem`` line and exit status 1; every
option also comes from ``TRUSTFLOW_<ROLE>_<OPTION>`` (shown in ``--help``); ``--check-config``
validates everything without binding a port or contacting anyone; the default ports differ;
``--log-level`` is a fixed choice."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from trustflow_core.identity import self_signed_cert
from trustflow_core.roles._options import CONFIG_OK, DEFAULT_PORTS

TRUSTFLOW = shutil.which("trustflow", path=str(Path(sys.executable).parent)) or "trustflow"
ROLES = ("ra-proxy", "data-capsule-proxy", "capsule-manager", "gateway")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An RSA app identity (app.crt / app.key), a data directory and a CM data dir."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "app.crt").write_bytes(
        self_signed_cert(key, "carol").public_bytes(serialization.Encoding.PEM)
    )
    (tmp_path / "app.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "app.key").chmod(0o600)
    (tmp_path / "data").mkdir()
    (tmp_path / "cm").mkdir()
    return tmp_path


def good_config(role: str, home: Path, port: int = 0) -> dict[str, Any]:
    """A valid config file of ``role`` in ``home`` (relative paths: relative to the file)."""
    if role == "ra-proxy":
        return {"cert_path": "app.crt", "port": port, "attester": {"debug": False}}
    if role == "data-capsule-proxy":
        return {
            "cert_path": "app.crt",
            "private_key_path": "app.key",
            "allowed_roots": ["data"],
            "port": port,
            "cm_endpoint": "127.0.0.1:1",  # nothing listens there: --check-config contacts nothing
            "key_exchange_settings": {"timeout": 5},
        }
    if role == "capsule-manager":
        return {
            "port": port,
            "data_dir": str(home / "cm"),
            "requests": {"max_age_seconds": 60},
            "verifiers": {"sim": {"max_age_seconds": 600}},
        }
    return {
        "listeners": [
            {
                "name": "public",
                "address": f"127.0.0.1:{port}",
                "routes": [{"prefix": "/", "cluster": "app"}],
                "jwe": {"cert_path": "app.crt", "private_key_path": "app.key"},
            }
        ],
        "clusters": {"app": {"endpoints": ["127.0.0.1:1"]}},
    }


#: A bad value at a nested key of each role's file: (change, key path, problem).
BAD_VALUES: Mapping[str, tuple[dict[str, Any], str, str]] = {
    "ra-proxy": ({"attester": {"debug": 3}}, "attester.debug", "expected true or false, got 3"),
    "data-capsule-proxy": (
        {"key_exchange_settings": {"timeout": "soon"}},
        "key_exchange_settings.timeout",
        "expected a positive number, got 'soon'",
    ),
    "capsule-manager": (
        {"verifiers": {"sim": {"max_age_seconds": -5}}},
        "verifiers.sim.max_age_seconds",
        "expected a positive number, got -5",
    ),
    "gateway": (
        {
            "listeners": [
                {
                    "address": "127.0.0.1:0",
                    "routes": [{"prefix": "/", "cluster": "app"}],
                    "jwe": {
                        "cert_path": "app.crt",
                        "private_key_path": "app.key",
                        "freshness": {"window": "abc"},
                    },
                }
            ]
        },
        "listeners[0].jwe.freshness.window",
        "expected a duration ('0.25s', '250ms' or seconds) > 0, got 'abc'",
    ),
}

#: An unknown key somewhere in each role's file: (change, where, the unknown key).
UNKNOWN_KEYS: Mapping[str, tuple[dict[str, Any], str, str]] = {
    "ra-proxy": ({"attester": {"colour": "blue"}}, "attester", "colour"),
    "data-capsule-proxy": ({"object_stores": {"gcs": "s3"}}, "object_stores", "gcs"),
    "capsule-manager": ({"storage": {"uri": "sqlite://"}}, "storage", "uri"),
    "gateway": ({"clusters": {"app": {"endpoint": ["x:1"]}}}, "clusters.app", "endpoint"),
}


def trustflow(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "TRUSTFLOW_SIM_DIR": str(Path(cwd or ".") / "sim")}
    for name in list(environment):
        if name.startswith(("TRUSTFLOW_RA_PROXY_", "TRUSTFLOW_DATA_CAPSULE_PROXY_")) or (
            name.startswith(("TRUSTFLOW_CAPSULE_MANAGER_", "TRUSTFLOW_GATEWAY_"))
        ):
            del environment[name]
    environment.update(env or {})
    return subprocess.run(
        [TRUSTFLOW, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        cwd=cwd,
        check=False,
    )


def write(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def listening() -> Iterator[int]:
    """A port some other process (this test) is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("role", ROLES)
def test_check_config_accepts_a_good_file_without_binding_or_contacting(
    role: str, home: Path, listening: int
) -> None:
    # The port is taken: a command that bound it would fail; the CM endpoint and the cluster
    # are closed ports: a command that contacted them would fail.
    config = write(home / f"{role}.yaml", good_config(role, home, listening))
    done = trustflow(role, "-c", str(config), "--check-config", cwd=home)
    assert (done.returncode, done.stdout.strip()) == (0, CONFIG_OK), done.stderr


@pytest.mark.parametrize("role", ROLES)
def test_a_bad_nested_value_names_file_and_key_path(role: str, home: Path) -> None:
    change, key, problem = BAD_VALUES[role]
    config = write(home / "bad.yaml", {**good_config(role, home), **change})
    for check in ((), ("--check-config",)):
        done = trustflow(role, "-c", str(config), *check, cwd=home)
        assert done.returncode == 1
        assert one_line(done) == f"config error: {config}: {key}: {problem}"


@pytest.mark.parametrize("role", ROLES)
def test_unknown_keys_are_named(role: str, home: Path) -> None:
    change, where, unknown = UNKNOWN_KEYS[role]
    config = write(home / "bad.yaml", {**good_config(role, home), **change})
    done = trustflow(role, "-c", str(config), "--check-config", cwd=home)
    assert done.returncode == 1
    assert one_line(done).startswith(f"config error: {config}: {where}: unknown key(s) {unknown};")
    top = write(home / "top.yaml", {**good_config(role, home), "prot": 1})
    done = trustflow(role, "-c", str(top), "--check-config", cwd=home)
    assert done.returncode == 1
    assert one_line(done).startswith(f"config error: {top}: unknown key(s) prot; known: ")


@pytest.mark.parametrize("role", ROLES)
def test_yaml_syntax_errors_name_the_file_and_line(role: str, home: Path) -> None:
    config = home / "broken.yaml"
    config.write_text("port: 1\nstorage: {url: [unclosed}\n")
    done = trustflow(role, "-c", str(config), cwd=home)
    assert done.returncode == 1
    line = one_line(done)
    assert line.startswith(f"config error: {config}: not valid YAML: line 2, column ")
    assert "<unicode string>" not in line


def test_an_unreadable_config_file_is_one_line(home: Path) -> None:
    for role in ROLES:
        done = trustflow(role, "-c", str(home / "missing.yaml"), "--check-config", cwd=home)
        assert done.returncode == 1
        assert one_line(done) == (
            f"config error: {home / 'missing.yaml'}: cannot read: No such file or directory"
        )


def test_environment_variables_sit_between_flags_and_the_file(home: Path) -> None:
    config = write(home / "ra.yaml", {"cert_path": "missing-in-file.crt", "port": 0})
    done = trustflow("ra-proxy", "-c", str(config), "--check-config", cwd=home)
    assert done.returncode == 1 and "missing-in-file.crt" in one_line(done)
    env = {"TRUSTFLOW_RA_PROXY_CERT_PATH": str(home / "app.crt")}
    done = trustflow("ra-proxy", "-c", str(config), "--check-config", env=env, cwd=home)
    assert (done.returncode, done.stdout.strip()) == (0, CONFIG_OK), done.stderr
    done = trustflow(
        "ra-proxy",
        "-c",
        str(config),
        "--cert-path",
        "flag.crt",
        "--check-config",
        env=env,
        cwd=home,
    )
    assert done.returncode == 1 and "flag.crt" in one_line(done)
    # the config file itself, and a bad value, from the environment
    env = {"TRUSTFLOW_RA_PROXY_CONFIG": str(config), "TRUSTFLOW_RA_PROXY_PORT": "99999"}
    done = trustflow("ra-proxy", "--check-config", env=env, cwd=home)
    assert done.returncode == 2
    assert "Invalid value for '--port' (env var: 'TRUSTFLOW_RA_PROXY_PORT')" in done.stderr


@pytest.mark.parametrize("role", ROLES)
def test_help_names_the_environment_variable_of_every_option(role: str) -> None:
    import click

    from trustflow_core.cli import build_cli

    done = trustflow(role, "--help")
    assert done.returncode == 0
    text = "".join(done.stdout.split())
    command = build_cli().commands[role]
    prefix = "TRUSTFLOW_" + role.upper().replace("-", "_")
    options = [p for p in command.params if isinstance(p, click.Option)]
    assert any(o.name == "config_file" and "-c" in o.opts for o in options)
    for option in options:
        if option.name == "check_config":
            continue
        long = next(o for o in option.opts if o.startswith("--"))
        assert f"envvar:{prefix}_{long[2:].upper().replace('-', '_')}" in text, long
    assert "--check-config" in text


@pytest.mark.parametrize("role", ROLES)
def test_log_level_is_a_fixed_choice(role: str, home: Path) -> None:
    config = write(home / f"{role}.yaml", good_config(role, home))
    done = trustflow(role, "-c", str(config), "--log-level", "chatty", "--check-config", cwd=home)
    assert done.returncode == 2
    assert "Invalid value for '--log-level'" in done.stderr and "'debug'" in done.stderr
    done = trustflow(role, "-c", str(config), "--log-level", "WARNING", "--check-config", cwd=home)
    assert done.returncode == 0, done.stderr


def test_default_ports_differ_and_are_what_help_shows() -> None:
    ports = [DEFAULT_PORTS[role] for role in ("ra-proxy", "data-capsule-proxy", "capsule-manager")]
    assert len(set(ports)) == 3
    assert DEFAULT_PORTS["ra-proxy"] == 8010 and DEFAULT_PORTS["capsule-manager"] == 8888
    for role, port in DEFAULT_PORTS.items():
        text = " ".join(trustflow(role, "--help").stdout.split())
        assert f"default: {port}" in text or f"default {port}" in text, role
