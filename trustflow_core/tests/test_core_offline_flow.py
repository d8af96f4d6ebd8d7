"""static key exchange + storage_local + the data-capsule format, assembled through the
registry: the offline task's data path without the Capsule Manager.

An owner's encrypted input is read from storage, decrypted with the key the key exchange
releases, a result is computed, encrypted under a fresh key, written atomically, and only
then its key is registered; a failed upload registers nothing.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator

import pytest

from trustflow_core.capsule import encrypt_file, open_reader, open_writer
from trustflow_core.errors import ObjectNotFound
from trustflow_core.keyexchange import Resource, ResourceRequest, ResultKey
from trustflow_core.manager import get_plugin_manager
from trustflow_core.registry import KEY_EXCHANGE, backend_class, storage_for_uri

pytestmark = pytest.mark.asyncio


async def decrypt_object(storage, uri: str, key: bytes) -> bytes:
    size = (await storage.stat(uri)).size
    decryptor = open_reader(key, size, "v1")
    out = bytearray()
    async for chunk in storage.read(uri, chunk_size=10_000):
        out += decryptor.update(chunk)
    decryptor.finalize()
    return bytes(out)


async def encrypted_chunks(data: bytes, key: bytes) -> AsyncIterator[bytes]:
    encryptor = open_writer("v1", key, len(data))
    yield encryptor.header
    for start in range(0, len(data), 5000):
        yield encryptor.update(data[start : start + 5000])
    yield encryptor.finalize()


@pytest.fixture
def workspace(tmp_path):
    owner_key = os.urandom(16)
    plain = tmp_path / "owner.csv"
    plain.write_bytes(b"".join(b"id%d,%d\n" % (i, i * i) for i in range(20_000)))
    encrypt_file(plain, tmp_path / "input.csv.enc", owner_key)
    return tmp_path, owner_key, plain.read_bytes()


async def test_input_is_decrypted_result_stored_then_key_registered(workspace):
    root, owner_key, plaintext = workspace
    pm = get_plugin_manager()
    keys_file = root / "keys.json"
    exchange = backend_class(pm, KEY_EXCHANGE, "static").from_settings(
        {"keys": {"input-uuid": base64.b64encode(owner_key).decode()}, "keys_file": str(keys_file)}
    )
    storage = storage_for_uri(pm, f"file://{root}/input.csv.enc").from_settings(
        {"roots": [str(root)]}
    )
    request = ResourceRequest("party", "default", "OP_PSI", (Resource("input-uuid"),))
    async with exchange, storage:
        [data_key] = await exchange.get_data_keys(request)
        rows = await decrypt_object(storage, f"file://{root}/input.csv.enc", data_key.key)
        assert rows == plaintext
        result = b"count,%d\n" % rows.count(b"\n")

        result_key = os.urandom(32)
        uri = f"file://{root}/out/result.csv.enc"
        await storage.write(uri, encrypted_chunks(result, result_key))
        await exchange.register_result_key(
            ResultKey("result-uuid", "default", result_key, ("input-uuid",))
        )
        assert await decrypt_object(storage, uri, result_key) == result

    reloaded = backend_class(pm, KEY_EXCHANGE, "static").from_settings(
        {"keys_file": str(keys_file)}
    )
    [again] = await reloaded.get_data_keys(
        ResourceRequest("party", "default", "OP", (Resource("result-uuid"),))
    )
    assert again.key == result_key
    assert keys_file.stat().st_mode & 0o777 == 0o600


async def test_failed_upload_leaves_no_result_and_registers_no_key(workspace):
    root, _, _ = workspace
    pm = get_plugin_manager()
    exchange = backend_class(pm, KEY_EXCHANGE, "static").from_settings({})
    storage = storage_for_uri(pm, str(root)).from_settings({"roots": [str(root)]})

    async def dying_source() -> AsyncIterator[bytes]:
        encryptor = open_writer("v1", os.urandom(16), 1_000_000)
        yield encryptor.update(b"x" * 100_000)
        raise ConnectionError("app crashed mid-result")

    uri = f"file://{root}/out/result.csv.enc"
    with pytest.raises(ConnectionError):
        await storage.write(uri, dying_source())
        await exchange.register_result_key(ResultKey("result-uuid", "default", os.urandom(16)))
    assert await storage.list(f"file://{root}/out") == []
    with pytest.raises(ObjectNotFound):
        await exchange.get_data_keys(
            ResourceRequest("p", "default", "OP", (Resource("result-uuid"),))
        )
