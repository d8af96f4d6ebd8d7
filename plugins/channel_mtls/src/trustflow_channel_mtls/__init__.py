"""Trustflow ``mtls`` transport channel: mutual TLS inside a communication group.

The backend class is :class:`trustflow_channel_mtls.channel.MtlsChannel`; it is imported lazily
so that loading the plugin entry point stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MtlsChannel"]


def __getattr__(name: str) -> Any:
    if name == "MtlsChannel":
        from .channel import MtlsChannel

        return MtlsChannel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
