"""The minimal core (issue 19): trustflow-core installs without any role's stack, alone or with
one plugin, into fresh virtual environments, and still works for what it is installed for.

Each environment is a real ``python -m venv`` with wheels built from this repository (pip's
configured index and cache provide the third-party packages). Run by the ``mincore`` tox env.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: the role stacks that must not come with the core or a plugin that does not need them
FORBIDDEN = {"grpcio", "aiohttp", "sqlalchemy", "cel-python"}


def _env() -> dict[str, str]:
    """This environment without what would let a venv see other packages or plugin choices."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("TRUSTFLOW_")
    }


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=_env(), cwd=cwd, timeout=600
    )


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of trustflow-core and the plugins the environments below install."""
    out = tmp_path_factory.mktemp("wheels")
    done = _run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out,
        REPO / "trustflow_core", REPO / "plugins" / "tee_tdx", REPO / "plugins" / "storage_local",
        REPO / "plugins" / "channel_jwe",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


class Venv:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.bin = path / "bin"

    def packages(self) -> set[str]:
        code = (
            "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'])"
        )
        done = _run(self.bin / "python", "-c", code)
        assert done.returncode == 0, done.stderr
        return {line.strip().lower().replace("_", "-") for line in done.stdout.split()}

    def trustflow(self, *args: str | Path) -> subprocess.CompletedProcess:
        return _run(self.bin / "trustflow", *args)


@pytest.fixture(scope="session")
def make_venv(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Venv]:
    def make(*requirements: str) -> Venv:
        path = tmp_path_factory.mktemp("venv")
        done = _run(sys.executable, "-m", "venv", "--without-pip", path)
        assert done.returncode == 0, done.stderr
        done = _run(
            sys.executable, "-m", "pip", "--python", path / "bin" / "python", "install", "-q",
            "--find-links", wheels, *requirements,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return Venv(path)

    return make


@pytest.fixture(scope="session")
def core_alone(make_venv: Callable[..., Venv]) -> Venv:
    return make_venv("trustflow-core")


def _attestation_dir() -> Path:
    """The shared attestation vectors, found as the tee_tdx tests find them."""
    configured = os.environ.get("TRUSTFLOW_ATTESTATION_DIR")
    if configured:
        return Path(configured)
    compat = os.environ.get("TRUSTFLOW_COMPAT_DIR")
    base = Path(compat) if compat else REPO.parent / "shared" / "testdata" / "compat"
    return base.parent / "attestation"


def test_core_alone_has_no_role_stack(core_alone: Venv) -> None:
    installed = core_alone.packages()
    assert "trustflow-core" in installed
    assert not installed & FORBIDDEN, sorted(installed & FORBIDDEN)
    assert "protobuf" not in installed


def test_core_alone_cli_starts_and_lists_plugins(core_alone: Venv) -> None:
    helped = core_alone.trustflow("--help")
    assert helped.returncode == 0, helped.stderr
    assert "capsule-manager" in helped.stdout and "attest" in helped.stdout
    role_help = core_alone.trustflow("capsule-manager", "--help")
    assert role_help.returncode == 0, role_help.stderr
    assert "--config-file" in role_help.stdout
    listed = core_alone.trustflow("plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    core = next(p for p in json.loads(listed.stdout) if p["name"] == "core")
    cm = next(b for b in core["backends"] if b["name"] == "capsule_manager")
    assert not cm["viable"]
    assert "pip install 'trustflow-core[data-capsule-proxy]'" in cm["reason"]


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        (["capsule-manager"], "capsule-manager"),
        (["cms", "--config-file", "owner.yaml", "get-public-key"], "capsule-manager"),
        (["ra-proxy"], "proxy"),
        (["gateway", "-c", "/dev/null"], "proxy"),
        (["client"], "proxy"),
        (["data-capsule-proxy", "--allowed-root", "/"], "data-capsule-proxy"),
        (["demo", "online"], "all"),
    ],
)
def test_core_alone_role_command_names_the_install(
    core_alone: Venv, command: list[str], extra: str
) -> None:
    done = core_alone.trustflow(*command)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ")
    assert lines[0].endswith(f"pip install 'trustflow-core[{extra}]'"), lines[0]
    assert "Traceback" not in done.stderr + done.stdout


@pytest.fixture(scope="session")
def core_tdx(make_venv: Callable[..., Venv]) -> Venv:
    return make_venv("trustflow-core", "trustflow-tee-tdx")


def test_core_with_tee_tdx_verifies_the_shared_quote(core_tdx: Venv) -> None:
    venv = core_tdx
    installed = venv.packages()
    assert "trustflow-tee-tdx" in installed
    assert not installed & FORBIDDEN, sorted(installed & FORBIDDEN)

    vectors = _attestation_dir()
    expected = json.loads((vectors / "expected.json").read_text())["tdx"]
    quote, evaluation = next(
        (name, ev)
        for name, entry in expected.items()
        for ev in entry.get("evaluations", [])
        if ev["expected_status"] == "UpToDate" and len(ev["collateral"]["files"]) == 1
    )
    done = venv.trustflow(
        "attest", "verify", "--plat", "tdx", "--quote", vectors / quote,
        "--collateral", vectors / evaluation["collateral"]["files"][0],
        "--time", evaluation["verify_time"], "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["verdict"] == "accepted"
    assert verdict["details"]["tcb_status"] == "UpToDate"
    assert verdict["attributes"]["str_tee_platform"] == "TDX"


def test_core_with_tee_tdx_names_the_pccs_extra(core_tdx: Venv, tmp_path: Path) -> None:
    """Fetching collateral from a PCCS is the ``pccs`` extra: without it, one line naming it
    (nothing is contacted)."""
    vectors = _attestation_dir()
    settings = tmp_path / "tdx.yaml"
    settings.write_text("pccs_url: http://127.0.0.1:9\n")
    quote = next(n for n, v in json.loads((vectors / "expected.json").read_text())["tdx"].items()
                 if "quote_len" in v)  # fmt: skip
    done = core_tdx.trustflow(
        "attest", "verify", "--plat", "tdx", "--quote", vectors / quote, "--settings", settings
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].endswith("pip install 'trustflow-tee-tdx[pccs]'"), lines[0]


def test_core_with_storage_local_passes_the_conformance_kit(
    make_venv: Callable[..., Venv],
) -> None:
    venv = make_venv("trustflow-core[test]", "trustflow-storage-local")
    installed = venv.packages()
    assert {"trustflow-storage-local", "pytest"} <= installed
    assert not installed & FORBIDDEN, sorted(installed & FORBIDDEN)

    kit = REPO / "plugins" / "storage_local" / "tests" / "test_storage_local_conformance.py"
    done = _run(venv.bin / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", kit, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_data_capsule_proxy_extra_is_the_client_stack_only(
    make_venv: Callable[..., Venv], tmp_path: Path
) -> None:
    """The Data Capsule Proxy talks to a Capsule Manager as a client: its extra brings gRPC and
    the JWE channel but not the CM server's SQLAlchemy and CEL, and the ``capsule_manager`` key
    exchange is usable there."""
    venv = make_venv("trustflow-core[data-capsule-proxy]")
    installed = venv.packages()
    assert {"grpcio", "aiohttp", "protobuf", "trustflow-channel-jwe"} <= installed
    assert not installed & {"sqlalchemy", "cel-python"}, sorted(installed)
    listed = venv.trustflow("plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    core = next(p for p in json.loads(listed.stdout) if p["name"] == "core")
    cm = next(b for b in core["backends"] if b["name"] == "capsule_manager")
    assert cm["viable"], cm
    # the server's modules import; it stops at the missing certificate, not at a missing package
    done = venv.trustflow(
        "data-capsule-proxy", "--allowed-root", tmp_path, "--port", "0",
        "--cert-path", tmp_path / "missing.crt", "--private-key-path", tmp_path / "missing.key",
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: data-capsule-proxy"), done.stderr
    assert "missing.crt" in lines[0] and "pip install" not in lines[0], lines[0]
