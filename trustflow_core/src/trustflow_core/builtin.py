"""The core's own plugin: the ``static`` and ``capsule_manager`` key exchanges, the core CLI
commands and the roles' commands (see :mod:`trustflow_core.roles`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .hookspecs import hookimpl

if TYPE_CHECKING:
    import click

    from .hookspecs import Register
    from .keyexchange import KeyExchange


@hookimpl
def trustflow_register_key_exchanges(register: Register[type[KeyExchange]]) -> None:
    from .roles.capsule_manager_client.keyexchange import CapsuleManagerKeyExchange
    from .static_keys import StaticKeyExchange

    register(StaticKeyExchange)
    register(CapsuleManagerKeyExchange)


@hookimpl
def trustflow_add_commands(cli: click.Group) -> None:
    from .cli.attest import attest
    from .cli.util import util
    from .roles import add_role_commands

    cli.add_command(util)
    cli.add_command(attest)
    add_role_commands(cli)
