"""The Data Capsule Proxy's confinement under a race, over real loopback HTTP: while requests
read from and stage output into a directory inside a root, a thread keeps exchanging that
directory with a symbolic link to a directory outside the roots."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from test_core_offline_proxy import GET, PUT, post, proxy, world  # noqa: F401

from trustflow_core.testing.races import exchanging

pytestmark = [pytest.mark.asyncio, pytest.mark.plugins("storage_local", "storage_oss")]
SECRET = b"SECRET outside the roots\n"
#: Upper bound of the race; the old check-then-open code escaped within a few hundred requests.
RACE_SECONDS = 4.0
ROUNDS = 3000


def snapshot(directory: Path) -> tuple[int, dict[str, bytes]]:
    """The directory's mtime (changed by any entry created or removed, even if gone again)
    and every file below it."""
    files = {
        str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in directory.rglob("*")
    }
    return directory.stat().st_mtime_ns, files


def secrets_below(directory: Path) -> list[str]:
    """Files below ``directory`` (links not followed) holding the outside secret."""
    return [
        str(p)
        for p in directory.rglob("*")
        if p.is_file() and not p.is_symlink() and SECRET in p.read_bytes()
    ]


async def test_output_staging_and_input_never_leave_the_roots(proxy, world):  # noqa: F811
    out, outside = world["out"], world["outside"]
    (out / "d").mkdir()
    (out / "d" / "in.txt").write_bytes(b"inside\n")
    (outside / "in.txt").write_bytes(SECRET)
    (out / "l").symlink_to(outside, target_is_directory=True)
    (world["root"] / "result.txt").write_bytes(b"result\n")
    before = snapshot(outside)
    get = {
        "need_decrypt": False,
        "local_fs_config": {"path": str(out / "d" / "in.txt")},
        "dest_config": {"path": str(out / "d" / "copy")},
    }
    put = {
        "need_encrypt": False,
        "source_config": {"path": str(world["root"] / "result.txt")},
        "local_fs_config": {"path": str(out / "d" / "results")},
    }
    statuses: Counter[tuple[str, int]] = Counter()
    errors = []
    with exchanging(out / "d", out / "l") as swapper:
        deadline = time.monotonic() + RACE_SECONDS
        for _ in range(ROUNDS):
            if time.monotonic() > deadline or snapshot(outside) != before:
                break
            for name, body in (("get", get), ("put", put)):
                status, text = await post(proxy, GET if name == "get" else PUT, body)
                statuses[name, status] += 1
                if status >= 500:
                    errors.append(text)
    assert snapshot(outside) == before, f"written outside the roots ({statuses})"
    assert secrets_below(out) == [], f"read outside the roots ({statuses})"
    assert errors == [], statuses  # judged after the escape checks
    assert swapper.swaps > 100, swapper.swaps
    assert statuses["get", 200] and statuses["put", 200], statuses
    assert statuses["get", 403] and statuses["put", 403], statuses  # the link met, and refused


async def test_symlinked_directory_leaving_the_roots_is_refused(proxy, world):  # noqa: F811
    out, outside = world["out"], world["outside"]
    (out / "l").symlink_to(outside, target_is_directory=True)
    (world["root"] / "result.txt").write_bytes(b"result\n")
    before = snapshot(outside)
    body = {
        "need_encrypt": False,
        "source_config": {"path": str(world["root"] / "result.txt")},
        "local_fs_config": {"path": str(out / "l" / "results")},
    }
    status, text = await post(proxy, PUT, body)
    assert status == 403
    assert f"local_fs_config.path '{out}/l/results': symbolic link '{out}/l' leads" in text
    assert "outside the roots" in text
    assert snapshot(outside) == before
