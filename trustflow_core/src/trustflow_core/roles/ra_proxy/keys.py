"""Typed application keys of the RA Proxy app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .service import RaCertService

SERVICE: web.AppKey[RaCertService] = web.AppKey("service")
