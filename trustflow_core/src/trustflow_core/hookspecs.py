"""The Trustflow hook specifications: the contract between the core and its plugins.

Hooks are synchronous and register *classes*; asynchronous work lives on the registered
backends. Each registration hook receives ``register``, a callable taking one backend
class; call it once per class. Do not open connections, read configuration or probe
hardware here: the core calls ``cls.viable()`` and ``cls.from_settings(...)`` when needed.

Evolve a spec only by adding arguments; never rename a hook or an argument within a
major version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

import pluggy

if TYPE_CHECKING:
    import click

    from .attestation import Attester, Verifier
    from .channel import EnvelopeChannel, TransportChannel
    from .keyexchange import KeyExchange
    from .storage import Storage

PROJECT_NAME = "trustflow"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

T_contra = TypeVar("T_contra", contravariant=True)


class Register(Protocol[T_contra]):
    """The ``register`` callback handed to registration hooks."""

    def __call__(self, cls: T_contra, /) -> None: ...


# ---- attestation: report generators and verifiers per TEE platform ---------------------------


@hookspec
def trustflow_register_attesters(register: Register[type[Attester]]) -> None:
    """Register :class:`~trustflow_core.attestation.Attester` subclasses, one ``register(cls)``
    call each.

    ``cls.name`` (``sim``, ``tdx``, ``csv``, ...) must be unique across installed plugins;
    a duplicate aborts start-up with :class:`~trustflow_core.errors.PluginError`. An attester
    that needs hardware reports it through ``viable()``; importing the plugin must still work
    on any host."""


@hookspec
def trustflow_register_verifiers(register: Register[type[Verifier]]) -> None:
    """Register :class:`~trustflow_core.attestation.Verifier` subclasses, one ``register(cls)``
    call each.

    ``cls.name`` must be unique and ``cls.platform`` (the exact ``str_tee_platform`` it
    verifies) must be unique too. A simulated verifier sets ``simulated = True``; the core
    then rejects its reports unless the policy sets ``allow_simulation``."""


# ---- key exchange: data keys, group TLS assets, result keys ----------------------------------


@hookspec
def trustflow_register_key_exchanges(register: Register[type[KeyExchange]]) -> None:
    """Register :class:`~trustflow_core.keyexchange.KeyExchange` subclasses, one
    ``register(cls)`` call each. ``cls.name`` must be unique across installed plugins."""


# ---- storage: objects by URI -----------------------------------------------------------------


@hookspec
def trustflow_register_storages(register: Register[type[Storage]]) -> None:
    """Register :class:`~trustflow_core.storage.Storage` subclasses, one ``register(cls)``
    call each.

    ``cls.name`` must be unique; ``cls.schemes`` lists the URI schemes served (a scheme
    served by two backends is resolved by explicit configuration, then ``priority``)."""


# ---- channels: message envelopes and transport security --------------------------------------


@hookspec
def trustflow_register_channels(
    register: Register[type[EnvelopeChannel] | type[TransportChannel]],
) -> None:
    """Register :class:`~trustflow_core.channel.EnvelopeChannel` (per message, e.g. ``jwe``)
    and :class:`~trustflow_core.channel.TransportChannel` (per connection, e.g. ``mtls``)
    subclasses, one ``register(cls)`` call each. ``cls.name`` must be unique among channels."""


# ---- command line ----------------------------------------------------------------------------


@hookspec
def trustflow_add_commands(cli: click.Group) -> None:
    """Add subcommands to the ``trustflow`` command group with ``cli.add_command(cmd)``.

    Called once when the CLI starts. Import heavy dependencies inside the commands, not at
    module level, so ``trustflow --help`` stays fast. Adding a name that already exists is an
    error (:class:`~trustflow_core.errors.PluginError`)."""
