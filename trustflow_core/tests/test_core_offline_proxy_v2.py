"""The Data Capsule Proxy's local-file path (one worker thread per file: ``readinto`` and AES-GCM
``*_into`` for v2, ``copy_file_range`` for copies) over real loopback HTTP: multi-segment v2
files of any segment size round-trip byte-exact; a flipped byte, a truncated file, reordered
segments or an appended byte are refused with 422 and leave nothing behind; a failing file
stops its sibling's worker thread; and cancelling the transfer stops its thread early."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import threading

import aiohttp
import pytest
from test_core_offline_proxy import GET, PUT, files_below, post, proxy, settings_for, world  # noqa: F401

from trustflow_core.capsule import decrypt_stream, v2
from trustflow_core.capsule.v2 import HEADER_LEN, MAGIC
from trustflow_core.harness.data_capsule_proxy import running_proxy
from trustflow_core.registry import STORAGE, backend_class
from trustflow_core.roles.data_capsule_proxy.transfer import decrypt_job, run_local

pytestmark = [pytest.mark.asyncio, pytest.mark.plugins("storage_local", "storage_oss")]
SEG = 4096  # small segments: many of them in a small file


def v2_file(key: bytes, data: bytes, segment_len: int = SEG) -> bytes:
    out = io.BytesIO()
    v2.encrypt_stream(key, io.BytesIO(data), out, len(data), segment_len=segment_len)
    return out.getvalue()


def segments(blob: bytes) -> list[bytes]:
    return [blob[HEADER_LEN:SEG]] + [blob[i : i + SEG] for i in range(SEG, len(blob), SEG)]


def get_body(key: bytes, path, out) -> dict:
    return {
        "data_key_b64": base64.b64encode(key).decode(),
        "local_fs_config": {"path": str(path)},
        "dest_config": {"path": str(out)},
    }


async def test_v2_files_of_any_segment_size_decrypt_byte_exact(proxy, world):  # noqa: F811
    key = os.urandom(32)
    for segment_len, size in (
        (SEG, 10 * SEG + 123),
        (v2.SEGMENT_LEN, 0),
        (3 << 20, 7 << 20),
        (5 << 20, 11 << 20),
    ):
        data = os.urandom(size)
        (world["root"] / "in.bin.enc").write_bytes(v2_file(key, data, segment_len))
        out = world["out"] / f"seg-{segment_len}"
        status, text = await post(proxy, GET, get_body(key, world["root"] / "in.bin.enc", out))
        assert status == 200, text
        assert (out / "in.bin").read_bytes() == data


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], "segment 0 failed authentication"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 0x80]), "segment 5 failed authentication"),
        (lambda b: b[:-1], "truncated or extended"),
        (lambda b: b[: 3 * SEG], "truncated or extended"),
        (lambda b: b + b"\0", "truncated or extended"),
        (
            lambda b: b[:HEADER_LEN] + b"".join(segments(b)[i] for i in (0, 2, 1, 3, 4, 5)),
            "segment 1 failed authentication",
        ),
        (lambda b: b[:8] + b"\xff" + b[9:], "segment_len"),
    ],
    ids=["flip-first", "flip-last", "cut-byte", "cut-segments", "append", "reorder", "header"],
)
async def test_tampered_v2_file_is_422_and_leaves_nothing(proxy, world, tamper, message):  # noqa: F811
    key = os.urandom(16)
    data = os.urandom(5 * SEG + 77)
    blob = v2_file(key, data)
    assert len(segments(blob)) == 6
    (world["root"] / "t.bin.enc").write_bytes(tamper(blob))
    status, text = await post(proxy, GET, get_body(key, world["root"] / "t.bin.enc", world["out"]))
    assert status == 422, text
    assert message in text
    assert os.listdir(world["out"]) == []


async def test_a_failing_file_leaves_no_sibling_behind(proxy, world):  # noqa: F811
    """Two files run at once; the bad one fails at once; the big good one is stopped and
    neither appears (nor any staging directory)."""
    key = os.urandom(16)
    src = world["root"] / "batch"
    src.mkdir()
    (src / "a.bin.enc").write_bytes(v2_file(key, os.urandom(16 << 20), v2.SEGMENT_LEN))
    (src / "b.bin.enc").write_bytes(v2_file(key, b"short")[:-1])
    status, text = await post(proxy, GET, get_body(key, src, world["out"]))
    assert status == 422, text
    assert os.listdir(world["out"]) == []


async def test_put_v2_through_the_local_path_is_read_by_the_incremental_reader(world, pm):  # noqa: F811
    key = os.urandom(16)
    data = os.urandom((2 << 20) + 5)
    (world["root"] / "r.bin").write_bytes(data)
    copy_src = world["root"] / "plain.txt"
    copy_src.write_bytes(b"unchanged" * 1000)
    settings = settings_for(world, result_format="v2")
    async with running_proxy(settings, pm) as url, aiohttp.ClientSession() as http:
        body = {
            "data_key_b64": base64.b64encode(key).decode(),
            "source_config": {"path": str(world["root"] / "r.bin")},
            "local_fs_config": {"path": str(world["out"])},
        }
        async with http.post(url + PUT, json=body) as r:
            assert r.status == 200, await r.text()
        body = {
            "need_encrypt": False,
            "source_config": {"path": str(copy_src)},
            "local_fs_config": {"path": str(world["out"] / "copy")},
        }
        async with http.post(url + PUT, json=body) as r:
            assert r.status == 200, await r.text()
    blob = (world["out"] / "r.bin.enc").read_bytes()
    assert blob[:8] == MAGIC
    reader = v2.V2Decryptor(key, len(blob))
    assert reader.update(blob) == data
    reader.finalize()
    assert (world["out"] / "copy" / "plain.txt").read_bytes() == copy_src.read_bytes()


class _Gate:
    """A byte counter for :func:`run_local` that holds the worker thread at its first count
    until released, and tells the event loop that the thread got there."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.total = 0
        self.reached = asyncio.Event()
        self.release = threading.Event()
        self._loop = loop

    def inc(self, n: float = 1) -> None:
        self.total += int(n)
        if not self.reached.is_set():
            self._loop.call_soon_threadsafe(self.reached.set)
            assert self.release.wait(10)


async def test_cancelling_a_local_transfer_stops_its_thread(world, pm):  # noqa: F811
    key = os.urandom(16)
    blob = v2_file(key, os.urandom(8 << 20), v2.SEGMENT_LEN)
    (world["root"] / "c.bin.enc").write_bytes(blob)
    storage = backend_class(pm, STORAGE, "local").from_settings({"roots": [str(world["root"])]})
    dst = open(world["out"] / "c.bin", "wb")  # noqa: SIM115 - run_local closes it
    read, written = _Gate(asyncio.get_running_loop()), _Gate(asyncio.get_running_loop())
    task = asyncio.ensure_future(
        run_local(
            storage, str(world["root"] / "c.bin.enc"), decrypt_job(key), dst, len(blob),
            (read, written),
        )
    )  # fmt: skip
    await asyncio.wait_for(read.reached.wait(), 10)
    task.cancel()
    await asyncio.sleep(0)
    read.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dst.closed  # the thread was waited for and closed its file
    assert read.total < len(blob) // 4, read.total  # it stopped after a segment or two
    assert written.total == 0
    # what it left is a prefix of the plaintext, never more: the caller discards it
    with open(world["root"] / "c.bin.enc", "rb") as src:
        assert decrypt_stream(src, io.BytesIO(), key, len(blob)) == 8 << 20


async def test_early_writeback_passes_every_byte_through_in_order(tmp_path):
    """The output wrapper only adds write-back hints: the file holds exactly what was written
    (across several write-back chunks and odd write sizes)."""
    from trustflow_core.roles.data_capsule_proxy.transfer import WRITEBACK_CHUNK, EarlyWriteback

    data = os.urandom(2 * WRITEBACK_CHUNK + 12345)
    with open(tmp_path / "out", "wb") as f:
        out = EarlyWriteback(f)
        view, at = memoryview(data), 0
        for size in (7, (1 << 20) - 16, WRITEBACK_CHUNK, 3, len(data)):
            at += out.write(view[at : at + size])
        out.flush()
        assert out.fileno() == f.fileno()
    assert at == len(data)
    assert (tmp_path / "out").read_bytes() == data
