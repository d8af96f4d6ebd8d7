"""What ``trustflow gateway`` checks before serving, and all ``--check-config`` does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import InvalidInput
from .config import GatewayConfig
from .jwe_filter import PROFILES, JweFilter
from .mtls import check_assets

if TYPE_CHECKING:
    from ...manager import TrustflowPluginManager


def check(config: GatewayConfig, pm: TrustflowPluginManager) -> None:
    """What is checked before serving (and all ``--check-config`` does) beyond parsing: every
    JWE filter's certificate and key load and belong together, the envelope channel builds for
    both profiles, every TLS asset loads and validates (:func:`.mtls.check_assets`). Nothing
    listens, no upstream is contacted."""
    from ...registry import ENVELOPE_CHANNEL, backend_class

    filtered = [listener for listener in config.listeners if listener.jwe is not None]
    if filtered:
        envelope = backend_class(pm, ENVELOPE_CHANNEL, config.envelope_channel)
        channels = {p: envelope.from_role({"profile": p}, pm=pm) for p in PROFILES}
    for listener in filtered:
        if listener.jwe is not None:
            try:
                JweFilter.load(listener.jwe, channels)
            except InvalidInput as exc:
                raise InvalidInput(f"{config.source}: listener {listener.name!r}: {exc}") from None
    check_assets(config, pm)
