"""Resource URIs: ``{data_uuid}[/{partition_id}[/{segment_id}[/{shard_id}]]]``
(docs/compat.md#resource-uri). ``segment_id`` and ``shard_id`` are unsigned 32-bit decimals; an
empty ``data_uuid`` is refused; an empty later component ends parsing."""

from __future__ import annotations

from dataclasses import dataclass

from ..capsule_manager_protocol.errors import CMError, Kind

MAX_URI_CHARS = 512
MAX_UUID_CHARS = 255


@dataclass(frozen=True)
class ResourceUri:
    data_uuid: str
    partition_id: str = ""
    segment_id: int | None = None
    shard_id: int | None = None


def _u32(text: str, what: str) -> int:
    if not text.isdigit() or not text.isascii() or int(text) > 0xFFFFFFFF:
        raise CMError(Kind.INVALID_ARGUMENT, f"parse int failed, {what} {text!r} is not a u32")
    return int(text)


def parse_resource_uri(uri: str) -> ResourceUri:
    """Parse ``uri``; raise :class:`CMError` (InvalidArgument, code 3) when it is unusable."""
    if len(uri) > MAX_URI_CHARS:
        raise CMError(Kind.INVALID_ARGUMENT, f"resource_uri longer than {MAX_URI_CHARS} chars")
    parts = uri.split("/")
    data_uuid = parts[0]
    if not data_uuid:
        raise CMError(Kind.INVALID_ARGUMENT, "data uuid is empty")
    if len(data_uuid) > MAX_UUID_CHARS:
        raise CMError(Kind.INVALID_ARGUMENT, f"data uuid longer than {MAX_UUID_CHARS} chars")
    partition = parts[1] if len(parts) > 1 else ""
    segment = shard = None
    if partition and len(parts) > 2 and parts[2]:
        segment = _u32(parts[2], "segment_id")
        if len(parts) > 3 and parts[3]:
            shard = _u32(parts[3], "shard_id")
    return ResourceUri(data_uuid, partition, segment, shard)


def data_uuid_of(uri: str) -> str:
    return parse_resource_uri(uri).data_uuid
