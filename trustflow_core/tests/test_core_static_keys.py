"""The core's ``static`` key exchange: the key-exchange conformance kit, ``keys_file``
persistence and bad input."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from trustflow_core.errors import InvalidInput, ObjectNotFound
from trustflow_core.keyexchange import Resource, ResourceRequest, ResultKey
from trustflow_core.static_keys import StaticKeyExchange
from trustflow_core.testing.keyexchange import KeyExchangeConformance


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def request_for(*uris: str) -> ResourceRequest:
    return ResourceRequest("PARTY", "default", "psi", tuple(Resource(uri) for uri in uris))


def result_key(uri: str, key: bytes) -> ResultKey:
    return ResultKey(uri, "default", key, ancestor_uuids=("parent",))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def keys() -> dict[str, bytes]:
    return {f"static-{n}-{os.urandom(4).hex()}": os.urandom(n) for n in (16, 24, 32)}


# ---- the conformance kit ----------------------------------------------------------------------


class TestStaticKeyExchangeConformance(KeyExchangeConformance):
    @pytest_asyncio.fixture
    async def key_exchange(self, keys: dict[str, bytes]) -> AsyncIterator[StaticKeyExchange]:
        settings = {"keys": {uri: b64(k) for uri, k in keys.items()}}
        async with StaticKeyExchange.from_settings(settings) as kx:
            yield kx

    @pytest.fixture
    def granted_request(self, keys: dict[str, bytes]) -> ResourceRequest:
        return request_for(*keys)

    @pytest.fixture
    def denied_or_unknown_request(self) -> ResourceRequest:
        return request_for("no-such-resource")

    @pytest.fixture
    def supports_tls_assets(self) -> bool:
        return False


class TestStaticKeyExchangeWithKeysFileConformance(TestStaticKeyExchangeConformance):
    @pytest_asyncio.fixture
    async def key_exchange(
        self, keys: dict[str, bytes], tmp_path: Path
    ) -> AsyncIterator[StaticKeyExchange]:
        keys_file = tmp_path / "keys.json"
        keys_file.write_text(json.dumps({uri: b64(k) for uri, k in keys.items()}))
        async with StaticKeyExchange.from_settings({"keys_file": str(keys_file)}) as kx:
            yield kx


@pytest.mark.asyncio
async def test_serves_exactly_the_configured_keys(keys: dict[str, bytes]) -> None:
    kx = StaticKeyExchange.from_settings({"keys": {uri: b64(k) for uri, k in keys.items()}})
    served = await kx.get_data_keys(request_for(*keys))
    assert {k.resource_uri: k.key for k in served} == keys


# ---- keys_file persistence --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_registered_key_is_persisted_with_mode_0600(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    kx = StaticKeyExchange.from_settings({"keys_file": str(keys_file)})
    assert not keys_file.exists()
    key = os.urandom(32)
    await kx.register_result_key(result_key("result-1", key))
    assert mode_of(keys_file) == 0o600
    assert json.loads(keys_file.read_text()) == {"result-1": b64(key)}
    reopened = StaticKeyExchange.from_settings({"keys_file": str(keys_file)})
    assert [k.key for k in await reopened.get_data_keys(request_for("result-1"))] == [key]


@pytest.mark.asyncio
async def test_keys_file_is_rewritten_atomically(tmp_path: Path, keys: dict[str, bytes]) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({uri: b64(k) for uri, k in keys.items()}))
    keys_file.chmod(0o644)
    inode = keys_file.stat().st_ino
    kx = StaticKeyExchange.from_settings({"keys_file": str(keys_file)})
    new = os.urandom(16)
    await kx.register_result_key(result_key("result-2", new))
    assert keys_file.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert mode_of(keys_file) == 0o600
    table = json.loads(keys_file.read_text())
    assert table == {**{uri: b64(k) for uri, k in keys.items()}, "result-2": b64(new)}
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]


@pytest.mark.asyncio
async def test_failed_rewrite_registers_nothing(tmp_path: Path) -> None:
    keys_file = tmp_path / "missing-dir" / "keys.json"
    kx = StaticKeyExchange.from_settings({"keys_file": str(keys_file)})
    with pytest.raises(OSError):
        await kx.register_result_key(result_key("result-3", os.urandom(16)))
    with pytest.raises(ObjectNotFound):
        await kx.get_data_keys(request_for("result-3"))
    keys_file.parent.mkdir()
    key = os.urandom(16)
    await kx.register_result_key(result_key("result-3", key))  # not "already has a key"
    assert [k.key for k in await kx.get_data_keys(request_for("result-3"))] == [key]


@pytest.mark.asyncio
async def test_settings_keys_and_keys_file_are_merged(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    from_file, from_settings = os.urandom(16), os.urandom(32)
    keys_file.write_text(json.dumps({"a": b64(from_file)}))
    kx = StaticKeyExchange.from_settings(
        {"keys_file": str(keys_file), "keys": {"b": b64(from_settings)}}
    )
    served = await kx.get_data_keys(request_for("a", "b"))
    assert [k.key for k in served] == [from_file, from_settings]


@pytest.mark.asyncio
async def test_concurrent_registrations_of_one_uri(tmp_path: Path) -> None:
    kx = StaticKeyExchange.from_settings({"keys_file": str(tmp_path / "keys.json")})
    outcomes = await asyncio.gather(
        *(kx.register_result_key(result_key("same", os.urandom(16))) for _ in range(5)),
        return_exceptions=True,
    )
    assert outcomes.count(None) == 1
    assert all(isinstance(o, InvalidInput) for o in outcomes if o is not None)
    assert list(json.loads((tmp_path / "keys.json").read_text())) == ["same"]


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "not base64!",
        base64.urlsafe_b64encode(b"\xfb\xff" * 8).decode(),  # '-' and '_' are not standard
        b64(os.urandom(16)) + "\n",
        b64(os.urandom(16)).rstrip("="),
        12345,
        None,
    ],
)
def test_bad_base64_is_invalid(value: Any) -> None:
    with pytest.raises(InvalidInput, match="base64"):
        StaticKeyExchange.from_settings({"keys": {"uri": value}})


@pytest.mark.parametrize("length", [0, 1, 15, 17, 23, 31, 33, 64])
def test_bad_key_length_is_invalid(length: int) -> None:
    with pytest.raises(InvalidInput, match=f"{length} bytes"):
        StaticKeyExchange.from_settings({"keys": {"uri": b64(os.urandom(length))}})


def test_bad_key_in_keys_file_is_invalid(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"uri": b64(os.urandom(20))}))
    with pytest.raises(InvalidInput, match="20 bytes"):
        StaticKeyExchange.from_settings({"keys_file": str(keys_file)})


@pytest.mark.parametrize("content", ["{", "", "not json"])
def test_unreadable_keys_file_is_invalid(tmp_path: Path, content: str) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(content)
    with pytest.raises(InvalidInput, match="keys_file"):
        StaticKeyExchange.from_settings({"keys_file": str(keys_file)})


def test_directory_as_keys_file_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="keys_file"):
        StaticKeyExchange.from_settings({"keys_file": str(tmp_path)})


@pytest.mark.parametrize("settings", [{"key": {}}, {"keys": {}, "keysfile": "x"}, {"tls": 1}])
def test_unknown_settings_are_invalid(settings: dict[str, Any]) -> None:
    unknown = next(name for name in settings if name not in ("keys", "keys_file"))
    with pytest.raises(InvalidInput, match=unknown):
        StaticKeyExchange.from_settings(settings)


@pytest.mark.parametrize("keys", ["uri=key", ["ab"], 5])
def test_keys_setting_that_is_not_a_mapping_is_invalid(keys: Any) -> None:
    with pytest.raises(InvalidInput, match="mapping"):
        StaticKeyExchange.from_settings({"keys": keys})


@pytest.mark.parametrize("content", ["5", '["ab"]', '"text"'])
def test_keys_file_that_is_not_an_object_is_invalid(tmp_path: Path, content: str) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(content)
    with pytest.raises(InvalidInput) as caught:
        StaticKeyExchange.from_settings({"keys_file": str(keys_file)})
    assert str(caught.value).startswith(f"{keys_file}: expected a mapping, got ")


@pytest.mark.asyncio
async def test_result_key_of_bad_length_is_refused(tmp_path: Path) -> None:
    """Otherwise the keys_file would be rewritten with a key that from_settings rejects."""
    keys_file = tmp_path / "keys.json"
    kx = StaticKeyExchange.from_settings({"keys_file": str(keys_file)})
    with pytest.raises(InvalidInput, match="10 bytes"):
        await kx.register_result_key(result_key("short", os.urandom(10)))
    assert not keys_file.exists()
