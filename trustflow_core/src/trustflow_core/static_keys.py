"""The ``static`` key exchange: data keys from a fixed table, result keys kept in it.

Settings: ``keys`` — a mapping ``resource_uri -> data_key_b64``; ``keys_file`` — a JSON
file with such a mapping, rewritten atomically (mode 0600) when a result key is registered.
It has no policy engine and no TLS assets: use it for tests and single-owner deployments.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from typing_extensions import Self

from .errors import InvalidInput, ObjectNotFound, UnsupportedOperation
from .fileio import atomic_write_bytes
from .keyexchange import DataKey, KeyExchange, ResourceRequest, ResultKey, TlsAsset
from .settings_schema import Node


def _decode_key(uri: str, value: Any) -> bytes:
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise InvalidInput(f"data key of {uri!r} is not standard base64") from exc
    if len(key) not in (16, 24, 32):
        raise InvalidInput(f"data key of {uri!r} is {len(key)} bytes; need 16, 24 or 32")
    return key


class StaticKeyExchange(KeyExchange):
    """Keys from configuration. See the module docstring for settings."""

    name: ClassVar[str] = "static"

    def __init__(self, keys: Mapping[str, bytes], keys_file: Path | None = None) -> None:
        self._keys = dict(keys)
        self._keys_file = keys_file
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        root = Node.settings(settings, "static key exchange settings").mapping(
            {"keys", "keys_file"}
        )
        table: dict[str, Any] = {}
        keys_file = root.get("keys_file").path(None)
        if keys_file is not None and keys_file.exists():
            try:
                loaded = json.loads(keys_file.read_text())
            except (OSError, ValueError) as exc:
                raise root.get("keys_file").error(f"cannot read {keys_file}: {exc}") from exc
            table.update(Node(loaded, str(keys_file)).mapping().value)
        table.update(root.get("keys").mapping().value)
        return cls({uri: _decode_key(uri, v) for uri, v in table.items()}, keys_file)

    async def get_data_keys(self, request: ResourceRequest) -> list[DataKey]:
        missing = [r.resource_uri for r in request.resources if r.resource_uri not in self._keys]
        if missing:
            raise ObjectNotFound(f"no data key for resource(s) {missing}")
        return [DataKey(r.resource_uri, self._keys[r.resource_uri]) for r in request.resources]

    async def get_tls_asset(self, request: ResourceRequest) -> TlsAsset:
        raise UnsupportedOperation("the static key exchange has no TLS assets")

    async def register_result_key(self, result: ResultKey) -> None:
        if len(result.key) not in (16, 24, 32):
            raise InvalidInput(
                f"result key of {result.resource_uri!r} is {len(result.key)} bytes; "
                "need 16, 24 or 32"
            )
        async with self._lock:
            if result.resource_uri in self._keys:
                raise InvalidInput(f"resource {result.resource_uri!r} already has a key")
            keys = {**self._keys, result.resource_uri: result.key}
            if self._keys_file is not None:
                table = {uri: base64.b64encode(k).decode() for uri, k in keys.items()}
                data = json.dumps(table, indent=2).encode()
                await asyncio.to_thread(atomic_write_bytes, self._keys_file, data, mode=0o600)
            self._keys = keys
