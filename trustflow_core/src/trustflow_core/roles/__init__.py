"""The sidecar roles (RA proxy, gateway, Capsule Manager, Data Capsule Proxy, ...), assembled
from plugins at runtime.

Each role is a package ``trustflow_core.roles.<role>``. A role that has command-line entry
points puts them in ``trustflow_core.roles.<role>.commands`` as ``COMMANDS: list[click.Command]``;
the core's own plugin (:mod:`trustflow_core.builtin`) adds them to the ``trustflow`` group
through the ``trustflow_add_commands`` hook, each with the extra its role needs. Command modules
must import cheaply and without the role's stack (click and the core only): heavy imports go
inside the command functions.
"""
