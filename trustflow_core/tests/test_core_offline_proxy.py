"""The Data Capsule Proxy over real loopback HTTP with local files: upstream-encrypted inputs
decrypt byte-exact, results are encrypted, staged and registered (static key exchange), bad
requests get specific 4xx, paths stay confined, failures leave nothing behind."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization

from trustflow_core.capsule import decrypt_file, encrypt_file
from trustflow_core.capsule.v2 import MAGIC
from trustflow_core.harness.data_capsule_proxy import running_proxy
from trustflow_core.identity import self_signed_cert
from trustflow_core.roles.data_capsule_proxy.paths import STAGE_PREFIX
from trustflow_core.roles.data_capsule_proxy.settings import DataCapsuleProxySettings
from trustflow_core.testing.certs import write_app_identity

pytestmark = [pytest.mark.asyncio, pytest.mark.plugins("storage_local", "storage_oss")]
GET = "/DataCapsuleProxy/GetInputData"
PUT = "/DataCapsuleProxy/PutResultData"
SUCCESS = {"status": {"message": "success"}}


@pytest.fixture
def world(tmp_path, compat_dir, compat_manifest):
    """Roots (data, out), an outside directory, the app cert, static keys of the vectors."""
    root = tmp_path / "data"
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    for d in (root, out, outside):
        d.mkdir()
    keys = {}
    for name, entry in compat_manifest["data"].items():
        if entry["upstream_decrypt"] != "ok":
            continue
        (root / name).write_bytes((compat_dir / "data" / name).read_bytes())
        keys[name] = (compat_dir / entry["key_b64_file"]).read_text().strip()
    cert, key = write_app_identity(tmp_path)
    return {
        "tmp": tmp_path,
        "root": root,
        "out": out,
        "outside": outside,
        "cert": cert,
        "key": key,
        "keys": keys,
        "keys_file": tmp_path / "keys.json",
    }


def settings_for(world, **extra) -> DataCapsuleProxySettings:
    return DataCapsuleProxySettings(
        cert_path=world["cert"],
        private_key_path=world["key"],
        allowed_roots=(str(world["root"]), str(world["out"])),
        key_exchange="static",
        key_exchange_settings={"keys": world["keys"], "keys_file": str(world["keys_file"])},
        **extra,
    )


@pytest_asyncio.fixture
async def proxy(world, pm) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        running_proxy(settings_for(world), pm) as url,
        aiohttp.ClientSession(timeout=timeout) as http,
    ):
        yield http, url


async def post(proxy, path: str, body) -> tuple[int, str]:
    http, url = proxy
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    async with http.post(url + path, data=data, headers={"Content-Type": "application/json"}) as r:
        return r.status, await r.text()


def cm(uri: str) -> dict:
    return {"endpoint": "127.0.0.1:1", "scope": "default", "op_name": "psi", "resource_uri": uri}


def files_below(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# ---- GetInputData ----------------------------------------------------------------------------


async def test_health(proxy):
    http, url = proxy
    async with http.get(url + "/health") as r:
        assert r.status == 200
        assert await r.text() == "OK"


async def test_upstream_vectors_decrypt_byte_exact_via_key_exchange(
    proxy, world, compat_dir, compat_manifest
):
    decrypted = 0
    for name, entry in compat_manifest["data"].items():
        if entry["upstream_decrypt"] != "ok":
            continue
        body = {
            "cm_resource_config": cm(name),
            "local_fs_config": {"path": str(world["root"] / name)},
            "dest_config": {"path": str(world["out"])},
        }
        assert await post(proxy, GET, body) == (200, json.dumps(SUCCESS, separators=(",", ":")))
        plain = (world["out"] / name[: -len(".enc")]).read_bytes()
        assert hashlib.sha256(plain).hexdigest() == entry["plaintext_sha256"]
        assert plain == (compat_dir / entry["plaintext"]).read_bytes()
        decrypted += 1
    assert decrypted >= 3


async def test_direct_key_and_directory_source(proxy, world, compat_manifest):
    entry = compat_manifest["data"]["small.csv.enc"]
    key_b64 = world["keys"]["small.csv.enc"]
    src = world["root"] / "dir"
    (src / "sub").mkdir(parents=True)
    (src / "a.csv.enc").write_bytes((world["root"] / "small.csv.enc").read_bytes())
    (src / "sub" / "b.csv.enc").write_bytes((world["root"] / "small.csv.enc").read_bytes())
    (src / "sub" / "notes.txt").write_bytes(b"copied as is")
    body = {
        "data_key_b64": key_b64,
        "local_fs_config": {"path": str(src)},
        "dest_config": {"path": str(world["out"] / "plain")},
    }
    assert (await post(proxy, GET, body))[0] == 200
    plain = world["out"] / "plain"
    assert files_below(plain) == ["a.csv", "sub/b.csv", "sub/notes.txt"]
    assert (
        hashlib.sha256((plain / "sub/b.csv").read_bytes()).hexdigest() == entry["plaintext_sha256"]
    )
    assert (plain / "sub/notes.txt").read_bytes() == b"copied as is"


async def test_need_decrypt_false_copies_without_a_key(proxy, world):
    body = {
        "need_decrypt": False,
        "local_fs_config": {"path": str(world["root"] / "small.csv.enc")},
        "dest_config": {"path": str(world["out"])},
    }
    assert (await post(proxy, GET, body))[0] == 200
    assert (world["out"] / "small.csv.enc").read_bytes() == (
        world["root"] / "small.csv.enc"
    ).read_bytes()


async def test_wrong_key_is_422_and_leaves_nothing(proxy, world):
    body = {
        "data_key_b64": base64.b64encode(os.urandom(16)).decode(),
        "local_fs_config": {"path": str(world["root"] / "large.csv.enc")},
        "dest_config": {"path": str(world["out"])},
    }
    status, text = await post(proxy, GET, body)
    assert status == 422
    assert "failed authentication" in text
    assert os.listdir(world["out"]) == []


async def test_tampered_block_in_a_directory_leaves_no_file_at_all(proxy, world):
    src = world["root"] / "batch"
    src.mkdir()
    good = (world["root"] / "small.csv.enc").read_bytes()
    (src / "a.csv.enc").write_bytes(good)
    bad = bytearray(good)
    bad[-1] ^= 1
    (src / "z.csv.enc").write_bytes(bytes(bad))
    body = {
        "cm_resource_config": cm("small.csv.enc"),
        "local_fs_config": {"path": str(src)},
        "dest_config": {"path": str(world["out"])},
    }
    status, _ = await post(proxy, GET, body)
    assert status == 422
    assert os.listdir(world["out"]) == []  # not even a.csv, and no staging directory


async def test_unknown_resource_is_404(proxy, world):
    body = {
        "cm_resource_config": cm("nobody"),
        "local_fs_config": {"path": str(world["root"] / "small.csv.enc")},
        "dest_config": {"path": str(world["out"])},
    }
    status, text = await post(proxy, GET, body)
    assert status == 404
    assert "nobody" in text


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),  # deeper than the parser
        (b"[1, 2]", 400, "JSON object"),
        ({"local_fs_config": {"path": "/x"}}, 400, "dest_config.path is empty"),
        ({"data_key_b64": "AAAA", "dest_config": {"path": "@out"}}, 400, "Source config"),
        (
            {"local_fs_config": {"path": "@root/small.csv.enc"}, "dest_config": {"path": "@out"}},
            400,
            "Data key config",
        ),
        (
            {
                "data_key_b64": "not base64!",
                "local_fs_config": {"path": "@root/small.csv.enc"},
                "dest_config": {"path": "@out"},
            },
            400,
            "base64",
        ),
        (
            {
                "data_key_b64": "AAAA",
                "local_fs_config": {"path": "@root/small.csv.enc"},
                "dest_config": {"path": "@out"},
            },
            400,
            "3 bytes",
        ),
        (
            {
                "data_key_b64": "AAAAAAAAAAAAAAAAAAAAAA==",
                "local_fs_config": {"path": "relative"},
                "dest_config": {"path": "@out"},
            },
            400,
            "not an absolute path",
        ),
        (
            {
                "need_decrypt": False,
                "local_fs_config": {"path": "@root/missing.enc"},
                "dest_config": {"path": "@out"},
            },
            404,
            "does not exist",
        ),
        ({"dest_config": {"path": 5}}, 400, "GetInputDataRequest"),
        ({"need_decrypt": "yes"}, 400, "need_decrypt"),
    ],
)
async def test_bad_requests_get_specific_4xx(proxy, world, body, status, message):
    if isinstance(body, dict):
        text = (
            json.dumps(body).replace("@root", str(world["root"])).replace("@out", str(world["out"]))
        )
        body = text.encode()
    got, text = await post(proxy, GET, body)
    assert got == status, text
    assert message in text
    assert "Traceback" not in text


async def test_traversal_and_outside_paths_are_403(proxy, world):
    (world["outside"] / "secret.enc").write_bytes((world["root"] / "small.csv.enc").read_bytes())
    (world["root"] / "link.enc").symlink_to(world["outside"] / "secret.enc")
    (world["out"] / "escape").symlink_to(world["outside"], target_is_directory=True)
    key_b64 = world["keys"]["small.csv.enc"]
    cases = [
        (str(world["root"] / ".." / "outside" / "secret.enc"), str(world["out"])),
        (str(world["outside"] / "secret.enc"), str(world["out"])),
        (str(world["root"] / "link.enc"), str(world["out"])),
        (str(world["root"] / "small.csv.enc"), str(world["outside"])),
        (str(world["root"] / "small.csv.enc"), str(world["out"] / "escape")),
        (str(world["root"] / "small.csv.enc"), str(world["out"] / ".." / "outside")),
    ]
    for src, dest in cases:
        body = {
            "data_key_b64": key_b64,
            "local_fs_config": {"path": src},
            "dest_config": {"path": dest},
        }
        status, text = await post(proxy, GET, body)
        assert status == 403, (src, dest, text)
    assert os.listdir(world["outside"]) == ["secret.enc"]


async def test_symlinked_subdirectory_in_a_directory_source_is_not_followed(proxy, world):
    src = world["root"] / "tree"
    src.mkdir()
    (src / "ok.csv.enc").write_bytes((world["root"] / "small.csv.enc").read_bytes())
    (world["outside"] / "leak.csv.enc").write_bytes((world["root"] / "small.csv.enc").read_bytes())
    (src / "sneaky").symlink_to(world["outside"], target_is_directory=True)
    body = {
        "data_key_b64": world["keys"]["small.csv.enc"],
        "local_fs_config": {"path": str(src)},
        "dest_config": {"path": str(world["out"])},
    }
    assert (await post(proxy, GET, body))[0] == 200
    assert files_below(world["out"]) == ["ok.csv"]


# ---- PutResultData ---------------------------------------------------------------------------


async def test_put_result_registers_key_after_storing(proxy, world):
    result = world["root"] / "join.csv"
    result.write_bytes(b"id,x\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(5000)))
    body = {
        "cm_result_config": {
            "endpoint": "127.0.0.1:1",
            "scope": "default",
            "resource_uri": "join_uuid",
            "ancestor_uuids": ["small.csv.enc", "large.csv.enc"],
        },
        "source_config": {"path": str(result)},
        "local_fs_config": {"path": str(world["out"])},
    }
    assert (await post(proxy, PUT, body))[0] == 200
    stored = json.loads(world["keys_file"].read_text())
    key = base64.b64decode(stored["join_uuid"])
    assert len(key) == 16
    encrypted = world["out"] / "join.csv.enc"
    assert encrypted.read_bytes()[:4] == (1).to_bytes(4, "little")  # upstream format
    decrypt_file(encrypted, world["tmp"] / "check.csv", key)
    assert (world["tmp"] / "check.csv").read_bytes() == result.read_bytes()
    # registering the same resource again is refused by the key exchange: 400, output removed
    encrypted.unlink()
    status, text = await post(proxy, PUT, body)
    assert status == 400, text
    assert not encrypted.exists()


async def test_put_result_directory_with_given_key_v2(world, pm):
    key = os.urandom(32)
    src = world["root"] / "results"
    (src / "deep").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha" * 1000)
    (src / "deep" / "b.txt").write_bytes(b"")
    settings = settings_for(world, result_format="v2")
    async with running_proxy(settings, pm) as url, aiohttp.ClientSession() as http:
        body = {
            "data_key_b64": base64.b64encode(key).decode(),
            "source_config": {"path": str(src)},
            "local_fs_config": {"path": str(world["out"])},
        }
        async with http.post(url + PUT, json=body) as r:
            assert r.status == 200, await r.text()
        assert files_below(world["out"]) == ["a.txt.enc", "deep/b.txt.enc"]
        assert (world["out"] / "a.txt.enc").read_bytes()[:8] == MAGIC
        # and the proxy reads its own v2 output back (format auto-detected)
        body = {
            "data_key_b64": base64.b64encode(key).decode(),
            "local_fs_config": {"path": str(world["out"])},
            "dest_config": {"path": str(world["root"] / "back")},
        }
        async with http.post(url + GET, json=body) as r:
            assert r.status == 200, await r.text()
    assert (world["root"] / "back" / "a.txt").read_bytes() == b"alpha" * 1000
    assert (world["root"] / "back" / "deep" / "b.txt").read_bytes() == b""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cm_result_config": {"resource_uri": "r", "ancestor_uuids": ["a"]}}, "scope"),
        ({"cm_result_config": {"resource_uri": "r", "scope": "default"}}, "ancestor_uuids"),
        ({"local_fs_config": None}, "Dest config"),
        ({"source_config": None}, "source_config.path"),
        ({"need_encrypt": False}, "not encrypted"),
    ],
)
async def test_put_bad_requests_write_nothing(proxy, world, change, message):
    result = world["root"] / "r.csv"
    result.write_bytes(b"data")
    body = {
        "cm_result_config": {"scope": "default", "resource_uri": "r", "ancestor_uuids": ["a"]},
        "source_config": {"path": str(result)},
        "local_fs_config": {"path": str(world["out"])},
    }
    body.update(change)
    status, text = await post(proxy, PUT, body)
    assert status == 400
    assert message in text
    assert os.listdir(world["out"]) == []
    assert not world["keys_file"].exists()


@pytest.fixture
def file_size_limit():
    """Make writes beyond a size fail with EFBIG (as a full disk fails them with ENOSPC):
    RLIMIT_FSIZE with SIGXFSZ ignored."""
    import resource
    import signal

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def limit(size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))

    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


async def test_write_error_midway_leaves_nothing_and_registers_nothing(
    proxy, world, file_size_limit
):
    result = world["root"] / "big.csv"
    result.write_bytes(os.urandom(3 << 20))
    body = {
        "cm_result_config": {
            "scope": "default",
            "resource_uri": "big_uuid",
            "ancestor_uuids": ["a"],
        },
        "source_config": {"path": str(result)},
        "local_fs_config": {"path": str(world["out"])},
    }
    file_size_limit(1 << 20)
    status, text = await post(proxy, PUT, body)
    file_size_limit(resource_unlimited())
    assert status == 500, text
    assert "File too large" in text
    assert os.listdir(world["out"]) == []
    assert not world["keys_file"].exists()
    # after recovery, the same request succeeds
    assert (await post(proxy, PUT, body))[0] == 200
    assert "big_uuid" in json.loads(world["keys_file"].read_text())


def resource_unlimited() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_FSIZE)[1]


async def test_source_changing_during_encryption_leaves_nothing(proxy, world, monkeypatch):
    """The source file shrinks after it was listed: the encryptor refuses to finish."""
    result = world["root"] / "shrinking.csv"
    result.write_bytes(os.urandom(1 << 20))

    import trustflow_core.roles.data_capsule_proxy.service as service

    original = service._plan

    def plan_then_truncate(base, found, what):
        planned = original(base, found, what)
        with open(result, "r+b") as f:
            f.truncate(1000)
        return planned

    monkeypatch.setattr(service, "_plan", plan_then_truncate)
    body = {
        "cm_result_config": {"scope": "default", "resource_uri": "s_uuid", "ancestor_uuids": ["a"]},
        "source_config": {"path": str(result)},
        "local_fs_config": {"path": str(world["out"])},
    }
    status, text = await post(proxy, PUT, body)
    assert status == 400, text
    assert "ended after" in text
    assert os.listdir(world["out"]) == []
    assert not world["keys_file"].exists()


async def test_staging_directories_in_a_source_are_skipped(proxy, world):
    src = world["root"] / "mixed"
    stage = src / f"{STAGE_PREFIX}999999-x"
    stage.mkdir(parents=True)
    (stage / "half.bin").write_bytes(b"partial plaintext of another request")
    (src / "done.txt").write_bytes(b"complete")
    body = {
        "need_decrypt": False,
        "local_fs_config": {"path": str(src)},
        "dest_config": {"path": str(world["out"])},
    }
    assert (await post(proxy, GET, body))[0] == 200
    assert files_below(world["out"]) == ["done.txt"]


async def test_no_staging_directory_survives_a_request(proxy, world):
    body = {
        "data_key_b64": world["keys"]["small.csv.enc"],
        "local_fs_config": {"path": str(world["root"] / "small.csv.enc")},
        "dest_config": {"path": str(world["out"])},
    }
    assert (await post(proxy, GET, body))[0] == 200
    assert not [n for n in os.listdir(world["out"]) if n.startswith(STAGE_PREFIX)]


async def test_encrypted_input_made_by_our_writer_round_trips(proxy, world):
    key = os.urandom(16)
    plain = world["root"] / "mine.bin"
    plain.write_bytes(os.urandom(100_000))
    encrypt_file(plain, world["root"] / "mine.bin.enc", key)
    body = {
        "data_key_b64": base64.b64encode(key).decode(),
        "local_fs_config": {"path": str(world["root"] / "mine.bin.enc")},
        "dest_config": {"path": str(world["out"])},
    }
    assert (await post(proxy, GET, body))[0] == 200
    assert (world["out"] / "mine.bin").read_bytes() == plain.read_bytes()


async def test_oversized_body_is_413(proxy):
    import io

    http, url = proxy
    body = io.BytesIO(b"{" + b" " * (2 << 20) + b"}")
    async with http.post(url + GET, data=body) as r:
        assert r.status == 413


@pytest.mark.parametrize("fmt", ["v1", "v2"])
async def test_memory_is_bounded_independently_of_file_size(world, pm, fmt):
    """Python allocations while a 48 MiB file is encrypted and decrypted stay a few chunks."""
    import tracemalloc

    key_b64 = base64.b64encode(os.urandom(16)).decode()
    src = world["root"] / "big.bin"
    with open(src, "wb") as f:
        for _ in range(48):
            f.write(os.urandom(1 << 20))
    settings = settings_for(world, result_format=fmt)
    async with running_proxy(settings, pm) as url, aiohttp.ClientSession() as http:
        tracemalloc.start()
        try:
            for path, body in (
                (
                    PUT,
                    {
                        "data_key_b64": key_b64,
                        "source_config": {"path": str(src)},
                        "local_fs_config": {"path": str(world["out"])},
                    },
                ),
                (
                    GET,
                    {
                        "data_key_b64": key_b64,
                        "local_fs_config": {"path": str(world["out"] / "big.bin.enc")},
                        "dest_config": {"path": str(world["out"] / "plain")},
                    },
                ),
            ):
                async with http.post(url + path, json=body) as r:
                    assert r.status == 200, await r.text()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (world["out"] / "plain" / "big.bin").read_bytes() == src.read_bytes()
    print(f"{fmt}: peak Python allocations {peak / (1 << 20):.1f} MiB")
    assert peak < 16 << 20, f"peak Python allocations {peak / (1 << 20):.1f} MiB"


async def test_bad_key_exchange_settings_fail_startup(world, pm):
    from trustflow_core.errors import InvalidInput

    settings = DataCapsuleProxySettings(
        cert_path=world["cert"],
        private_key_path=world["key"],
        allowed_roots=(str(world["root"]),),
        key_exchange="static",
        key_exchange_settings={"keys": {"r": "not base64!"}},
    )
    with pytest.raises(InvalidInput, match="base64"):
        async with running_proxy(settings, pm):
            pass


async def test_directory_of_many_files_round_trips(proxy, world):
    src = world["root"] / "many"
    expected = {}
    for i in range(7):
        rel = f"d{i % 3}/f{i}.bin"
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        expected[rel] = os.urandom(i * 50_000 + 1)
        (src / rel).write_bytes(expected[rel])
    key_b64 = base64.b64encode(os.urandom(32)).decode()
    body = {
        "data_key_b64": key_b64,
        "source_config": {"path": str(src)},
        "local_fs_config": {"path": str(world["out"] / "enc")},
    }
    assert (await post(proxy, PUT, body))[0] == 200
    assert files_below(world["out"] / "enc") == sorted(f"{rel}.enc" for rel in expected)
    body = {
        "data_key_b64": key_b64,
        "local_fs_config": {"path": str(world["out"] / "enc")},
        "dest_config": {"path": str(world["out"] / "dec")},
    }
    assert (await post(proxy, GET, body))[0] == 200
    for rel, data in expected.items():
        assert (world["out"] / "dec" / rel).read_bytes() == data


async def test_the_key_exchange_uses_the_proxys_plugin_manager(world, pm):
    """One plugin manager passed down: the ``capsule_manager`` key exchange finds its attester
    in the plugin manager the proxy was given (here: an attester registered only there), not in
    a manager of its own."""
    import types

    from trustflow_tee_sim.attester import SimAttester

    from trustflow_core import hookimpl

    class RoleOnlyAttester(SimAttester):
        name = "role-only"
        development_default = False

    module = types.ModuleType("role_only_attester")

    @hookimpl
    def trustflow_register_attesters(register):
        register(RoleOnlyAttester)

    module.trustflow_register_attesters = trustflow_register_attesters
    pm.register(module)
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert_path, key_path = world["tmp"] / "rsa.crt", world["tmp"] / "rsa.key"
    cert_path.write_bytes(self_signed_cert(key, "carol").public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    settings = DataCapsuleProxySettings(
        cert_path=cert_path,
        private_key_path=key_path,
        allowed_roots=(str(world["root"]),),
        plat="role-only",
        cm_endpoint="127.0.0.1:1",
    )
    async with (
        running_proxy(settings, pm) as url,
        aiohttp.ClientSession() as http,
        http.get(url + "/health") as reply,
    ):
        assert reply.status == 200
