"""The core's own plugin: the ``static`` and ``capsule_manager`` key exchanges, the core CLI
commands, the roles' commands (see :mod:`trustflow_core.roles`) and ``trustflow demo``."""

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
    """The core commands, every role's commands and ``trustflow demo``. The command modules
    import only click and the core; each role's commands refuse to run, in one line naming the
    ``pip install``, while the extra with its stack is missing."""
    from .cli import require_extra
    from .cli.attest import attest
    from .cli.doctor import doctor
    from .cli.util import util
    from .demo import commands as demo
    from .roles.capsule_manager import commands as capsule_manager
    from .roles.capsule_manager_client import commands as capsule_manager_client
    from .roles.client import commands as client
    from .roles.data_capsule_proxy import commands as data_capsule_proxy
    from .roles.gateway import commands as gateway
    from .roles.ra_proxy import commands as ra_proxy

    attest.add_command(doctor)
    cli.add_command(util)
    cli.add_command(attest)
    for module, extra in (
        (capsule_manager, "capsule-manager"),
        (capsule_manager_client, "capsule-manager"),
        (client, "proxy"),
        (data_capsule_proxy, "data-capsule-proxy"),
        (demo, "all"),
        (gateway, "proxy"),
        (ra_proxy, "proxy"),
    ):
        for command in module.COMMANDS:
            require_extra(command, extra)
            cli.add_command(command)
