"""The ``trustflow`` commands come from the plugins' ``trustflow_add_commands`` hook only: the
core's own plugin names every role's command module; no folder under ``trustflow_core.roles``
adds commands by being there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import trustflow_core.roles
from trustflow_core.cli import build_cli

ROLE_COMMANDS = {
    "capsule-manager",
    "cms",
    "client",
    "data-capsule-proxy",
    "demo",
    "gateway",
    "ra-proxy",
}


def test_the_core_plugin_adds_every_role_command_and_the_demo() -> None:
    commands = set(build_cli().commands)
    assert commands >= ROLE_COMMANDS
    assert {"version", "plugins", "util", "attest"} <= commands


def test_a_folder_under_roles_adds_no_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package dropped next to the roles (a leftover, a stray checkout) is not a plugin: it
    gets no ``trustflow`` command unless a plugin registers it through the hook."""
    stray = tmp_path / "stray_role"
    stray.mkdir()
    (stray / "__init__.py").write_text("")
    (stray / "commands.py").write_text(
        "import click\n\n\n@click.command('stray-role')\ndef stray() -> None:\n    pass\n\n\n"
        "COMMANDS = [stray]\n"
    )
    monkeypatch.setattr(
        trustflow_core.roles, "__path__", [*trustflow_core.roles.__path__, str(tmp_path)]
    )
    monkeypatch.delitem(sys.modules, "trustflow_core.roles.stray_role", raising=False)
    monkeypatch.delitem(sys.modules, "trustflow_core.roles.stray_role.commands", raising=False)

    assert "stray-role" not in build_cli().commands
    assert "trustflow_core.roles.stray_role.commands" not in sys.modules


def _renamed_sim_attester_plugin(name: str) -> object:
    """A plugin registering the sim attester again under ``name``: a backend only the plugin
    manager it is registered with knows."""
    import types

    from trustflow_tee_sim.attester import SimAttester

    from trustflow_core import hookimpl

    renamed = type(
        "RenamedSimAttester", (SimAttester,), {"name": name, "development_default": False}
    )
    module = types.ModuleType("renamed_sim_attester")

    @hookimpl
    def trustflow_register_attesters(register):  # type: ignore[no-untyped-def]
        register(renamed)

    module.trustflow_register_attesters = trustflow_register_attesters  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize(
    "args",
    [
        ["attest", "report", "--plat", "only-here", "--user-data", "00" * 32],
        ["attest", "doctor", "--plat", "only-here", "--json"],
    ],
)
def test_commands_use_the_plugin_manager_they_were_found_through(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One plugin manager per ``trustflow`` invocation: a backend registered with the manager
    that assembled the command line is the one the command finds (before, every command loaded
    the plugins again and did not know it)."""
    from click.testing import CliRunner

    monkeypatch.setenv("TRUSTFLOW_SIM_DIR", str(tmp_path / "sim"))
    group = build_cli()
    group.context_settings["obj"].register(_renamed_sim_attester_plugin("only-here"))
    result = CliRunner().invoke(group, args)
    assert result.exit_code == 0, result.output
    if args[1] == "report":
        assert '"str_tee_platform": "SIM"' in result.output
    else:
        assert json.loads(result.output)["verdict"]
