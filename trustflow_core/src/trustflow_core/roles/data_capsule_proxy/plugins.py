"""The plugin manager of the proxy: every installed plugin, plus the Capsule Manager client
(``capsule_manager`` key exchange) for as long as the core plugin does not register it itself."""

from __future__ import annotations

from typing import Any

from ...hookspecs import hookimpl
from ...manager import TrustflowPluginManager, get_plugin_manager
from ...registry import backends


class _CapsuleManagerKeyExchangePlugin:
    @hookimpl
    def trustflow_register_key_exchanges(self, register: Any) -> None:
        from ..capsule_manager.keyexchange import CapsuleManagerKeyExchange

        register(CapsuleManagerKeyExchange)


def plugin_manager() -> TrustflowPluginManager:
    """:func:`~trustflow_core.manager.get_plugin_manager` with ``capsule_manager`` ensured."""
    pm = get_plugin_manager()
    if "capsule_manager" not in backends(pm, "key_exchange"):
        pm.register(_CapsuleManagerKeyExchangePlugin(), name="data_capsule_proxy_cm_client")
    return pm
