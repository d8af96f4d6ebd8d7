"""Confinement under a race: a directory inside the root keeps being swapped with a symbolic
link to a directory outside it while reads and writes run through the backend."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from trustflow_core.errors import AccessDenied
from trustflow_core.testing.races import exchanging

from trustflow_storage_local.storage import LocalStorage

pytestmark = pytest.mark.asyncio
SECRET = b"SECRET outside the root"
#: Upper bound of one race; the old check-then-open code escaped within a few hundred tries.
RACE_SECONDS = 3.0
ROUNDS = 20000


def snapshot(directory: Path) -> tuple[int, dict[str, bytes]]:
    """The directory's mtime and every file's content (a created or removed entry changes
    the mtime even if it is gone again)."""
    files = {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }
    return directory.stat().st_mtime_ns, files


@pytest.fixture
def racy(tmp_path: Path) -> tuple[Path, Path, Path]:
    """``root/d`` (a real directory holding ``f.txt``) and ``root/l`` (a link to ``outside``,
    which holds its own ``f.txt``): the race exchanges them."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    (root / "d" / "f.txt").write_bytes(b"inside")
    (outside / "f.txt").write_bytes(SECRET)
    (root / "l").symlink_to(outside, target_is_directory=True)
    return root, outside, tmp_path


async def test_reads_and_writes_never_leave_the_root_while_a_directory_is_swapped(racy) -> None:
    root, outside, _ = racy
    before = snapshot(outside)
    outcomes: dict[str, int] = {}
    leaked = []
    async with LocalStorage.from_settings({"roots": [str(root)]}) as storage:
        with exchanging(root / "d", root / "l") as swapper:
            deadline = time.monotonic() + RACE_SECONDS
            for n in range(ROUNDS):
                if time.monotonic() > deadline:
                    break
                try:
                    data = await storage.read_bytes(str(root / "d" / "f.txt"))
                    await storage.write_bytes(str(root / "d" / f"w{n % 4}.txt"), b"written")
                    outcome = "ok"
                except OSError as exc:  # judged below, after the escape checks
                    outcome, data = type(exc).__name__, b""
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if data == SECRET:
                    leaked.append(n)
                    break
                await asyncio.sleep(0)
    assert not leaked, f"read outside the root after {leaked[0]} rounds ({swapper.swaps} swaps)"
    assert snapshot(outside) == before, "something was written outside the root"
    assert swapper.swaps > 100 and outcomes.get("ok", 0) > 0, (swapper.swaps, outcomes)
    assert outcomes.get("AccessDenied", 0) > 0, outcomes  # the link was met, and refused
    assert set(outcomes) <= {"ok", "AccessDenied", "ObjectNotFound"}, outcomes


async def test_symlinked_intermediate_directory_leaving_the_root_is_refused(racy) -> None:
    root, outside, _ = racy
    before = snapshot(outside)
    async with LocalStorage.from_settings({"roots": [str(root)]}) as storage:
        for uri in (str(root / "l" / "f.txt"), (root / "l" / "f.txt").as_uri()):
            with pytest.raises(AccessDenied, match=r"symbolic link .*/l'.* outside the roots"):
                await storage.read_bytes(uri)
            with pytest.raises(AccessDenied, match=r"symbolic link .*/l'.* outside the roots"):
                await storage.write_bytes(uri, b"x")
        with pytest.raises(AccessDenied, match="outside the roots"):
            await storage.write_bytes(str(root / "l" / "new" / "deeper.txt"), b"x")
    assert snapshot(outside) == before
