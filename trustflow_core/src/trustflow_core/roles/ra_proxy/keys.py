"""Typed application keys of the RA Proxy app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ...manager import TrustflowPluginManager
    from .service import RaCertService

SERVICE: web.AppKey[RaCertService] = web.AppKey("service")
PLUGIN_MANAGER: web.AppKey[TrustflowPluginManager] = web.AppKey("plugin_manager")
