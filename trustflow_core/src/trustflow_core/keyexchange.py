"""Key-exchange contract: how a TEE app obtains data keys and group TLS assets and
registers the keys of the results it produces.

The Capsule Manager client is the production provider; :mod:`trustflow_core.static_keys`
is a trivial provider for tests and fixed deployments.
"""

from __future__ import annotations

import abc
import base64
from dataclasses import dataclass
from typing import ClassVar

from .backend import Backend


@dataclass(frozen=True)
class Resource:
    """One requested resource (``ResourceRequest.Resource``)."""

    resource_uri: str
    columns: tuple[str, ...] = ()
    attrs: str = ""


@dataclass(frozen=True)
class ResourceRequest:
    """What an app asks keys for (``secretflowapis.v2.sdc.ResourceRequest``)."""

    initiator_party_id: str
    scope: str
    op_name: str
    resources: tuple[Resource, ...]
    env: str = ""
    global_attrs: str = ""


@dataclass(frozen=True)
class DataKey:
    """A data key for one resource. ``key`` is the raw AES key."""

    resource_uri: str
    key: bytes

    @property
    def key_b64(self) -> str:
        """Standard base64 with padding, as ``DataKey.data_key_b64`` on the wire."""
        return base64.b64encode(self.key).decode()

    def __repr__(self) -> str:  # never print key material
        return f"DataKey(resource_uri={self.resource_uri!r}, key=<{len(self.key)} bytes>)"


@dataclass(frozen=True)
class TlsAsset:
    """A communication-group TLS asset: PEM certificate (chain) and PKCS#8 PEM private key."""

    cert_pem: bytes
    private_key_pem: bytes

    def __repr__(self) -> str:
        return f"TlsAsset(cert_pem=<{len(self.cert_pem)} bytes>, private_key_pem=<hidden>)"


@dataclass(frozen=True)
class ResultKey:
    """The key of a result an app produced, with its lineage
    (``CreateResultDataKeyRequest.Body``)."""

    resource_uri: str
    scope: str
    key: bytes
    ancestor_uuids: tuple[str, ...] = ()
    owner_id: str = ""

    def __repr__(self) -> str:
        return (
            f"ResultKey(resource_uri={self.resource_uri!r}, scope={self.scope!r}, "
            f"key=<{len(self.key)} bytes>, ancestor_uuids={self.ancestor_uuids!r})"
        )


class KeyExchange(Backend, abc.ABC):
    """Source of data keys and TLS assets for an app, and sink of its result keys."""

    kind: ClassVar[str] = "key_exchange"

    @abc.abstractmethod
    async def get_data_keys(self, request: ResourceRequest) -> list[DataKey]:
        """Return one key per requested resource, in request order.

        Raise :class:`~trustflow_core.errors.AccessDenied` when the policy refuses,
        :class:`~trustflow_core.errors.ObjectNotFound` for an unknown resource, and
        :class:`~trustflow_core.errors.BackendUnavailable` when the key service cannot be reached.
        Never return a partial list.
        """

    @abc.abstractmethod
    async def get_tls_asset(self, request: ResourceRequest) -> TlsAsset:
        """Return the communication-group TLS asset for the requested data, with the same
        errors as :meth:`get_data_keys`; a provider without TLS assets raises
        :class:`~trustflow_core.errors.UnsupportedOperation`."""

    @abc.abstractmethod
    async def register_result_key(self, result: ResultKey) -> None:
        """Register the key of a stored result. Call it only after the result is fully stored.
        Registering a ``resource_uri`` that already has a key raises
        :class:`~trustflow_core.errors.InvalidInput`."""
