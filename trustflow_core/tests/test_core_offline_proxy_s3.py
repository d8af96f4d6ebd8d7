"""The Data Capsule Proxy with object storage: a real S3 server (moto, server mode) on loopback,
reached through a loopback TCP relay that can cut or refuse connections to inject faults."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator

import aiohttp
import boto3
import pytest
import pytest_asyncio
from test_core_offline_proxy import GET, PUT

from trustflow_core.capsule import open_reader
from trustflow_core.harness.data_capsule_proxy import running_proxy
from trustflow_core.manager import get_plugin_manager
from trustflow_core.roles.data_capsule_proxy.settings import DataCapsuleProxySettings
from trustflow_core.testing.certs import write_app_identity
from trustflow_core.testing.fixtures import free_port

pytestmark = pytest.mark.asyncio
MINIO = "S3_STORAGE_TYPE_MINIO"
AK, SK = "proxy-test-ak", "proxy-test-sk"


@pytest.fixture(scope="module")
def moto_port() -> Iterator[int]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield port
    finally:
        server.stop()


class Relay:
    """A loopback TCP relay to the S3 server. ``down`` refuses new connections;
    ``cut_after`` closes a connection once it carried that many request bytes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.down = False
        self.cut_after: int | None = None
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        sent = 0

        async def pipe(src, dst, counted: bool) -> None:
            nonlocal sent
            try:
                while data := await src.read(65536):
                    if counted:
                        sent += len(data)
                        if self.cut_after is not None and sent > self.cut_after:
                            break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                for w in (dst, writer, up_writer):
                    w.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))


@pytest_asyncio.fixture
async def relay(moto_port) -> AsyncIterator[Relay]:
    relay = Relay(moto_port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


@pytest.fixture
def s3(moto_port, request):
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{moto_port}",
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        region_name="us-east-1",
    )
    bucket = "dcp-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    client.create_bucket(Bucket=bucket)
    yield client, bucket
    client.close()


@pytest.fixture
def world(tmp_path, compat_dir, compat_manifest, monkeypatch):
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "storage_local,storage_oss")
    root = tmp_path / "data"
    root.mkdir()
    keys = {}
    for name, entry in compat_manifest["data"].items():
        if entry["upstream_decrypt"] == "ok":
            keys[name] = (compat_dir / entry["key_b64_file"]).read_text().strip()
    cert, key = write_app_identity(tmp_path)
    return {"root": root, "cert": cert, "key": key, "keys": keys, "keys_file": tmp_path / "k.json"}


@pytest_asyncio.fixture
async def proxy(world, relay) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    settings = DataCapsuleProxySettings(
        cert_path=world["cert"],
        private_key_path=world["key"],
        allowed_roots=(str(world["root"]),),
        key_exchange="static",
        key_exchange_settings={"keys": world["keys"], "keys_file": str(world["keys_file"])},
        allowed_object_store_endpoints=(f"127.0.0.1:{relay.port}",),
    )
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        running_proxy(settings, get_plugin_manager()) as url,
        aiohttp.ClientSession(timeout=timeout) as http,
    ):
        yield http, url


def s3_config(relay: Relay, bucket: str, path: str) -> dict:
    return {
        "endpoint": f"127.0.0.1:{relay.port}",
        "bucket": bucket,
        "path": path,
        "access_key_id": AK,
        "access_key_secret": SK,
        "region": "us-east-1",
        "type": MINIO,
        "secure": False,
    }


async def post(proxy, path: str, body: dict) -> tuple[int, str]:
    http, url = proxy
    async with http.post(url + path, json=body) as r:
        return r.status, await r.text()


def objects(s3, prefix: str = "") -> list[str]:
    client, bucket = s3
    reply = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in reply.get("Contents", []))


async def test_inputs_from_s3_decrypt_byte_exact(
    proxy, relay, s3, world, compat_dir, compat_manifest
):
    client, bucket = s3
    names = [n for n, e in compat_manifest["data"].items() if e["upstream_decrypt"] == "ok"]
    for name in names:
        client.put_object(
            Bucket=bucket, Key=f"in/{name}", Body=(compat_dir / "data" / name).read_bytes()
        )
    # one object
    body = {
        "cm_resource_config": {
            "scope": "default",
            "op_name": "psi",
            "resource_uri": "large.csv.enc",
        },
        "s3_config": s3_config(relay, bucket, "in/large.csv.enc"),
        "dest_config": {"path": str(world["root"] / "one")},
    }
    assert (await post(proxy, GET, body))[0] == 200
    entry = compat_manifest["data"]["large.csv.enc"]
    plain = (world["root"] / "one" / "large.csv").read_bytes()
    assert hashlib.sha256(plain).hexdigest() == entry["plaintext_sha256"]
    # a prefix with one key for all: only the small-key vectors
    small = [
        n for n in names if compat_manifest["data"][n]["key_b64_file"].endswith("small.key.b64")
    ]
    for name in small:
        client.copy_object(
            Bucket=bucket, Key=f"batch/{name}", CopySource={"Bucket": bucket, "Key": f"in/{name}"}
        )
    body = {
        "data_key_b64": world["keys"][small[0]],
        "s3_config": s3_config(relay, bucket, "batch/"),
        "dest_config": {"path": str(world["root"] / "batch")},
    }
    assert (await post(proxy, GET, body))[0] == 200
    for name in small:
        got = (world["root"] / "batch" / name[: -len(".enc")]).read_bytes()
        assert hashlib.sha256(got).hexdigest() == compat_manifest["data"][name]["plaintext_sha256"]


async def test_put_result_to_s3_then_register(proxy, relay, s3, world):
    result = world["root"] / "join.csv"
    result.write_bytes(os.urandom(9 << 20))  # above the 8 MiB part size: multipart
    body = {
        "cm_result_config": {
            "scope": "default",
            "resource_uri": "join_s3",
            "ancestor_uuids": ["a", "b"],
        },
        "source_config": {"path": str(result)},
        "s3_config": s3_config(relay, s3[1], "results"),
    }
    status, text = await post(proxy, PUT, body)
    assert status == 200, text
    assert objects(s3) == ["results/join.csv.enc"]
    key = base64.b64decode(json.loads(world["keys_file"].read_text())["join_s3"])
    blob = s3[0].get_object(Bucket=s3[1], Key="results/join.csv.enc")["Body"].read()
    dec = open_reader(key, len(blob), "v1")
    plain = dec.update(blob)
    dec.finalize()
    assert plain == result.read_bytes()


async def test_upload_dying_midway_leaves_nothing_and_registers_nothing(proxy, relay, s3, world):
    result = world["root"] / "big.csv"
    result.write_bytes(os.urandom(20 << 20))
    body = {
        "cm_result_config": {"scope": "default", "resource_uri": "big_s3", "ancestor_uuids": ["a"]},
        "source_config": {"path": str(result)},
        "s3_config": s3_config(relay, s3[1], "out"),
    }
    relay.cut_after = 3 << 20  # every connection dies after 3 MiB: no 8 MiB part gets through
    status, text = await post(proxy, PUT, body)
    assert status == 500, text
    assert text.startswith("object store: write 's3://")
    assert_no_connection_details(text, relay.port)
    assert objects(s3) == []
    assert not world["keys_file"].exists()
    relay.cut_after = None  # recovery: the same request now succeeds
    assert (await post(proxy, PUT, body))[0] == 200
    assert objects(s3) == ["out/big.csv.enc"]
    assert "big_s3" in json.loads(world["keys_file"].read_text())
    uploads = s3[0].list_multipart_uploads(Bucket=s3[1]).get("Uploads", [])
    assert uploads == []  # the failed upload was aborted once the store was reachable...
    # ...or, had the abort failed too, would stay invisible (checked above: no object)


async def test_store_down_is_a_clear_error_and_writes_nothing(proxy, relay, s3, world, caplog):
    s3[0].put_object(Bucket=s3[1], Key="x/small.csv.enc", Body=b"irrelevant")
    relay.down = True
    body = {
        "data_key_b64": world["keys"]["small.csv.enc"],
        "s3_config": s3_config(relay, s3[1], "x/small.csv.enc"),
        "dest_config": {"path": str(world["root"] / "dest")},
    }
    status, text = await post(proxy, GET, body)
    assert status == 500
    assert text.startswith("object store: list 's3://") and "proxy's log" in text
    assert_no_connection_details(text, relay.port)
    assert f"object store 127.0.0.1:{relay.port}: list" in caplog.text  # the cause is logged
    assert not (world["root"] / "dest").exists() or os.listdir(world["root"] / "dest") == []


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    """A listening socket on 127.0.0.1 that never accepts: a connection attempt to it would
    wait in its backlog."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def connection_attempted(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def assert_no_connection_details(text: str, port: int) -> None:
    for detail in ("127.0.0.1", "localhost", str(port), "Errno", "refused", "onnect", "http"):
        assert detail not in text, (detail, text)


@contextlib.asynccontextmanager
async def proxy_allowing(
    world, *endpoints: str
) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    settings = DataCapsuleProxySettings(
        cert_path=world["cert"],
        private_key_path=world["key"],
        allowed_roots=(str(world["root"]),),
        key_exchange="static",
        key_exchange_settings={"keys": world["keys"], "keys_file": str(world["keys_file"])},
        allowed_object_store_endpoints=endpoints,
    )
    async with (
        running_proxy(settings, get_plugin_manager()) as url,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http,
    ):
        yield http, url


@pytest.mark.parametrize("allowed", ["none configured", "another one configured"])
async def test_endpoint_not_allowed_is_refused_without_connecting(world, relay, allowed):
    endpoints = () if allowed == "none configured" else (f"127.0.0.1:{relay.port}",)
    with listener() as sock:
        port = sock.getsockname()[1]
        config = s3_config(relay, "some-bucket", "x")
        config["endpoint"] = f"127.0.0.1:{port}"
        get = {
            "need_decrypt": False,
            "s3_config": config,
            "dest_config": {"path": str(world["root"])},
        }
        (world["root"] / "r.txt").write_bytes(b"result")
        put = {
            "need_encrypt": False,
            "source_config": {"path": str(world["root"] / "r.txt")},
            "s3_config": config,
        }
        async with proxy_allowing(world, *endpoints) as proxy:
            for route, body in ((GET, get), (PUT, put)):
                request = asyncio.ensure_future(post(proxy, route, body))
                done, _ = await asyncio.wait({request}, timeout=5)
                assert not connection_attempted(sock), f"{route}: the proxy connected to {port}"
                assert done, f"{route}: no answer"
                status, text = request.result()
                assert status == 403, text
                assert "is not allowed" in text and "--allowed-object-store-endpoint" in text
                assert "allowed_object_store_endpoints" in text


async def test_allowed_but_dead_endpoint_reply_has_no_connection_details(world, relay, caplog):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]  # closed again below: nothing listens there
    config = s3_config(relay, "some-bucket", "x/small.csv.enc")
    config["endpoint"] = f"127.0.0.1:{dead}"
    body = {"need_decrypt": False, "s3_config": config, "dest_config": {"path": str(world["root"])}}
    async with proxy_allowing(world, f"127.0.0.1:{dead}") as proxy:
        status, text = await post(proxy, GET, body)
    assert status == 500
    listed = "'s3://some-bucket/x/small.csv.enc'"
    assert text == f"object store: list {listed} failed (the cause is in the proxy's log)\n"
    assert_no_connection_details(text, dead)
    assert f"127.0.0.1:{dead}" in caplog.text


async def test_missing_object_and_bucket(proxy, relay, s3, world):
    body = {
        "data_key_b64": world["keys"]["small.csv.enc"],
        "s3_config": s3_config(relay, s3[1], "nothing/here"),
        "dest_config": {"path": str(world["root"])},
    }
    assert (await post(proxy, GET, body))[0] == 404
    body["s3_config"]["bucket"] = "no-such-bucket-dcp"
    status, text = await post(proxy, GET, body)
    assert status == 500
    assert text.startswith("object store: list 's3://no-such-bucket-dcp/nothing/here' failed")
    assert_no_connection_details(text, relay.port)
