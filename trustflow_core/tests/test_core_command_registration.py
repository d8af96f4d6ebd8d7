"""The ``trustflow`` commands come from the plugins' ``trustflow_add_commands`` hook only: the
core's own plugin names every role's command module; no folder under ``trustflow_core.roles``
adds commands by being there."""

from __future__ import annotations

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
