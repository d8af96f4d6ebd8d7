"""A third-party storage chosen by configuration in a core role: the Data Capsule Proxy serving a
request's MinIO-typed ``s3_config`` from the ``memory`` backend (``--object-store-backend
minio=memory``), through its real HTTP interface; and the start-up refusal of a backend of the
wrong kind."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from click.testing import CliRunner
from trustflow_core.capsule import decrypt_file, encrypt_file
from trustflow_core.cli import build_cli
from trustflow_core.harness.data_capsule_proxy import running_proxy
from trustflow_core.manager import get_plugin_manager
from trustflow_core.roles.data_capsule_proxy.settings import DataCapsuleProxySettings
from trustflow_core.testing.certs import write_app_identity

from trustflow_storage_memory.backend import MemoryStorage

GET = "/DataCapsuleProxy/GetInputData"
PUT = "/DataCapsuleProxy/PutResultData"
ENDPOINT = "memory.test:9000"
KEY = bytes(range(16))


def _settings(tmp_path: Path, **extra: Any) -> DataCapsuleProxySettings:
    cert, key = write_app_identity(tmp_path)
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    return DataCapsuleProxySettings(
        cert_path=cert,
        private_key_path=key,
        allowed_roots=(str(root),),
        key_exchange="static",
        allowed_object_store_endpoints=(ENDPOINT,),
        **extra,
    )


def _s3(bucket: str, path: str) -> dict[str, Any]:
    return {
        "endpoint": ENDPOINT,
        "bucket": bucket,
        "path": path,
        "access_key_id": "ak",
        "access_key_secret": "sk",
        "type": "S3_STORAGE_TYPE_MINIO",
    }


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, str]:
    async with http.post(url, json=body) as reply:
        return reply.status, await reply.text()


@pytest.mark.asyncio
async def test_the_proxy_serves_minio_requests_from_the_configured_memory_backend(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = _settings(tmp_path, object_stores={"oss": "oss", "minio": "memory"})
    root = Path(settings.allowed_roots[0])
    plain = os.urandom(70_000)
    (tmp_path / "in.csv").write_bytes(plain)
    encrypt_file(tmp_path / "in.csv", tmp_path / "in.csv.enc", KEY)
    store = MemoryStorage.from_settings({"endpoint": ENDPOINT, "bucket": "b"})

    async def one(data: bytes) -> AsyncIterator[bytes]:
        yield data

    await store.write("mem://b/in/in.csv.enc", one((tmp_path / "in.csv.enc").read_bytes()))
    key_b64 = base64.b64encode(KEY).decode()
    async with running_proxy(settings, get_plugin_manager()) as url:
        status, text = await _post(
            http,
            url + GET,
            {
                "data_key_b64": key_b64,
                "s3_config": _s3("b", "in"),
                "dest_config": {"path": str(root / "got")},
            },
        )
        assert status == 200, text
        assert (root / "got" / "in.csv").read_bytes() == plain

        (root / "result.csv").write_bytes(b"joined\n")
        status, text = await _post(
            http,
            url + PUT,
            {
                "data_key_b64": key_b64,
                "source_config": {"path": str(root / "result.csv")},
                "s3_config": _s3("b", "out"),
            },
        )
        assert status == 200, text
        written = [info.uri for info in await store.list("mem://b/out")]
        assert written == ["mem://b/out/result.csv.enc"]
        blob = b"".join([c async for c in store.read("mem://b/out/result.csv.enc")])
        (tmp_path / "result.csv.enc").write_bytes(blob)
        decrypt_file(tmp_path / "result.csv.enc", tmp_path / "result.csv", KEY)
        assert (tmp_path / "result.csv").read_bytes() == b"joined\n"

        # the OSS type is switched off in this configuration: refused before any backend
        oss = {**_s3("b", "in"), "type": "S3_STORAGE_TYPE_OSS"}
        settings_off = _settings(tmp_path, object_stores={"minio": "memory"})
    async with running_proxy(settings_off, get_plugin_manager()) as url:
        status, text = await _post(
            http,
            url + GET,
            {"data_key_b64": key_b64, "s3_config": oss, "dest_config": {"path": str(root / "x")}},
        )
        assert status == 403
        assert "object-store type 'oss' is not enabled" in text
        assert "--object-store-backend" in text


def test_a_local_storage_of_the_wrong_kind_fails_start_up_naming_kind_and_installed(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    cert, key, root = settings.cert_path, settings.private_key_path, settings.allowed_roots[0]
    base = [
        "data-capsule-proxy",
        "--cert-path",
        str(cert),
        "--private-key-path",
        str(key),
        "--allowed-root",
        root,
        "--key-exchange",
        "static",
        "--port",
        "0",
    ]
    result = CliRunner().invoke(build_cli(), [*base, "--local-storage", "jwe"])
    assert result.exit_code == 1
    assert "no storage backend 'jwe' ('jwe' is an envelope channel, not a storage)" in result.output
    assert "installed storage backends: [" in result.output and "'memory'" in result.output
    result = CliRunner().invoke(build_cli(), [*base, "--local-storage", "memory"])
    assert result.exit_code == 1
    assert "--local-storage 'memory' does not serve file paths (it serves mem://)" in result.output
