"""Hook implementations of the ``channel_mtls`` plugin (cheap to import)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trustflow_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from trustflow_core.channel import EnvelopeChannel, TransportChannel
    from trustflow_core.hookspecs import Register


@hookimpl
def trustflow_register_channels(
    register: Register[type[EnvelopeChannel] | type[TransportChannel]],
) -> None:
    from .channel import MtlsChannel

    register(MtlsChannel)
