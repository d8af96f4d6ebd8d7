"""The sidecar roles (RA proxy, gateway, Capsule Manager, Data Capsule Proxy, ...), assembled
from plugins at runtime.

Each role is a package ``trustflow_core.roles.<role>``. A role that has command-line entry
points puts them in ``trustflow_core.roles.<role>.commands`` as ``COMMANDS: list[click.Command]``;
:func:`add_role_commands` adds them to the ``trustflow`` group. Command modules must import
cheaply and without the role's stack (click and the core only): heavy imports go inside the
command functions. A role's stack is an extra of trustflow-core
(:data:`trustflow_core.extras.ROLE_EXTRAS`); when it is missing, running any of the role's
commands prints one line naming the ``pip install`` to run and exits 1, while ``--help`` still
works.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

import click

from ..extras import ROLE_EXTRAS, missing_extra


def _require_extra(command: click.Command, extra: str, path: str = "trustflow") -> None:
    """Make ``command`` and every command below it refuse to run, with one line naming the
    ``pip install``, while ``extra`` is not installed. ``--help`` is answered before any
    callback runs, so it keeps working."""
    path = f"{path} {command.name}"
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _require_extra(sub, extra, path)
    callback = command.callback
    if callback is None:
        return
    what = f"'{path}'"

    @functools.wraps(callback)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        problem = missing_extra(extra, what)
        if problem:
            raise click.ClickException(problem)
        return callback(*args, **kwargs)

    command.callback = guarded


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
            if info.name in ROLE_EXTRAS:
                _require_extra(command, ROLE_EXTRAS[info.name])
            cli.add_command(command)
