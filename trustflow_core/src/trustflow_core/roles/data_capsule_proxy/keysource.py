"""Where the proxy's data keys come from: a key given in the request (``data_key_b64``) or the
key exchange chosen at start-up (``cm_resource_config``), and where result keys go.

The key exchange is built once per Capsule Manager endpoint through the plugin registry. A
request's ``cm_resource_config.endpoint`` / ``cm_result_config.endpoint`` is honoured only by
a backend that takes an ``endpoint`` setting (the ``capsule_manager`` backend), and only if it
is the configured ``--cm-endpoint`` or listed with ``--allowed-cm-endpoint``: otherwise an app
could make the proxy send attested requests anywhere. Other backends (``static``) ignore it.
A ``--cm-endpoint`` listing several replicas (``h1:p1,h2:p2``) is one instance that fails over
between them (docs/failover.md); a request naming one of those replicas is served by it.
Every call has a deadline; a timeout becomes BackendUnavailable.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ...errors import AccessDenied, BackendUnavailable, InvalidInput, ObjectNotFound
from ...keyexchange import DataKey, KeyExchange, Resource, ResourceRequest, ResultKey, TlsAsset

if TYPE_CHECKING:
    from ...manager import TrustflowPluginManager

log = logging.getLogger("trustflow.data_capsule_proxy")
ENDPOINT_BACKENDS = frozenset({"capsule_manager"})


def decode_key(text: str, what: str) -> bytes:
    """A data key from standard base64 (16, 24 or 32 bytes); the message never shows it."""
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{what} is not standard base64") from None
    if len(key) not in (16, 24, 32):
        raise InvalidInput(f"{what} decodes to {len(key)} bytes; need 16, 24 or 32")
    return key


class KeySource:
    """Builds, caches and closes key-exchange instances; see the module docstring."""

    def __init__(
        self,
        cls: type[KeyExchange],
        settings: Mapping[str, Any],
        *,
        cm_endpoint: str,
        allowed_endpoints: tuple[str, ...] = (),
        party_id: str,
        pm: TrustflowPluginManager,
        timeout: float = 30.0,
    ) -> None:
        self.cls = cls
        self.pm = pm
        self.settings = dict(settings)
        self.cm_endpoint = cm_endpoint
        self.allowed = {cm_endpoint, *allowed_endpoints}
        self._replicas = frozenset(e.strip() for e in cm_endpoint.split(","))
        self.party_id = party_id
        self.timeout = timeout
        self._instances: dict[str, KeyExchange] = {}
        self._lock = asyncio.Lock()

    @property
    def uses_endpoint(self) -> bool:
        return self.cls.name in ENDPOINT_BACKENDS

    async def _instance(self, endpoint: str) -> KeyExchange:
        if endpoint.strip() in self._replicas:
            endpoint = ""  # one of the default replicas: the instance that fails over
        key = (endpoint or self.cm_endpoint) if self.uses_endpoint else ""
        if self.uses_endpoint and key not in self.allowed:
            raise AccessDenied(
                f"Capsule Manager endpoint {endpoint!r} is not allowed "
                "(configure it with --allowed-cm-endpoint)"
            )
        async with self._lock:
            if key not in self._instances:
                settings = dict(self.settings)
                if self.uses_endpoint:
                    settings["endpoint"] = key
                self._instances[key] = await self.cls.from_role(settings, pm=self.pm).__aenter__()
            return self._instances[key]

    async def open_default(self) -> None:
        """Build the instance for the default endpoint now, so that bad settings fail start-up
        instead of the first request."""
        await self._instance("")

    async def _deadline(self, what: str, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, self.timeout)
        except asyncio.TimeoutError:
            raise BackendUnavailable(f"{what}: no answer within {self.timeout:g} s") from None

    async def data_key(self, config: Any) -> bytes:
        """The key for a ``CmResourceConfig``: only the first key returned is used, as
        upstream does; an empty list is an error."""
        if not config.resource_uri:
            raise InvalidInput("cm_resource_config.resource_uri is empty")
        request = ResourceRequest(
            initiator_party_id=self.party_id,
            scope=config.scope,
            op_name=config.op_name,
            resources=(Resource(config.resource_uri, tuple(config.columns)),),
            global_attrs=config.global_attrs,
        )
        exchange = await self._instance(config.endpoint)
        keys: list[DataKey] = await self._deadline("GetDataKeys", exchange.get_data_keys(request))
        if not keys:
            raise ObjectNotFound(f"Data keys empty for {config.resource_uri!r}")
        return keys[0].key

    async def tls_asset(self, request: ResourceRequest) -> TlsAsset:
        """The communication-group TLS asset from the default endpoint (``--cm-init-config``)."""
        exchange = await self._instance("")
        asset: TlsAsset = await self._deadline("GetTlsAsset", exchange.get_tls_asset(request))
        return asset

    async def register(self, config: Any, key: bytes) -> None:
        """Register a result key (CreateResultDataKey) with its lineage."""
        result = ResultKey(
            resource_uri=config.resource_uri,
            scope=config.scope,
            key=key,
            ancestor_uuids=tuple(config.ancestor_uuids),
        )
        exchange = await self._instance(config.endpoint)
        await self._deadline("CreateResultDataKey", exchange.register_result_key(result))
        log.info(
            "registered result key of %r (ancestors %s)", result.resource_uri, result.ancestor_uuids
        )

    async def aclose(self) -> None:
        instances, self._instances = list(self._instances.values()), {}
        for instance in instances:
            with contextlib.suppress(Exception):
                await instance.__aexit__(None, None, None)
