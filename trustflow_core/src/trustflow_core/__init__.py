"""Trustflow core: hook specifications, backend contracts and the plugin manager."""

from __future__ import annotations

from .hookspecs import hookimpl, hookspec
from .manager import get_plugin_manager

__all__ = ["get_plugin_manager", "hookimpl", "hookspec"]
