"""Trustflow ``jwe`` envelope channel: JWE/JWS per message, upstream dialect or RFC 7516/7515.

The backend class is :class:`trustflow_channel_jwe.channel.JweChannel`; it is imported lazily so
that loading the plugin entry point stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["JweChannel"]


def __getattr__(name: str) -> Any:
    if name == "JweChannel":
        from .channel import JweChannel

        return JweChannel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
