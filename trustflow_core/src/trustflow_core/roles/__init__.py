"""The sidecar roles (RA proxy, gateway, Capsule Manager, Data Capsule Proxy, ...), assembled
from plugins at runtime.

Each role is a package ``trustflow_core.roles.<role>``. A role that has command-line entry
points puts them in ``trustflow_core.roles.<role>.commands`` as ``COMMANDS: list[click.Command]``;
:func:`add_role_commands` adds them to the ``trustflow`` group. Command modules must import
cheaply: heavy imports go inside the command functions.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click


def add_role_commands(cli: click.Group) -> None:
    """Add the ``COMMANDS`` of every role package that has a ``commands`` module."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.ispkg or info.name.startswith("_"):
            continue
        name = f"{__name__}.{info.name}.commands"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        for command in module.COMMANDS:
            cli.add_command(command)
