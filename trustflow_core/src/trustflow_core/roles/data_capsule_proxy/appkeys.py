"""Typed application keys of the Data Capsule Proxy app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .cm_init import TlsAssetFetcher
    from .service import DataCapsuleProxy

SERVICE: web.AppKey[DataCapsuleProxy] = web.AppKey("dcp_service")
TLS_FETCHER: web.AppKey[TlsAssetFetcher] = web.AppKey("dcp_tls_fetcher")
"""Present when started with ``--cm-init-config``."""
