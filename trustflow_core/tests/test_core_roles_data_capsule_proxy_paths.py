"""Confinement and staged all-or-nothing output of the Data Capsule Proxy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trustflow_core.errors import AccessDenied, InvalidInput
from trustflow_core.roles.data_capsule_proxy.paths import (
    STAGE_PREFIX,
    Roots,
    StagedOutput,
)


@pytest.fixture
def layout(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return Roots([str(root)]), root, outside


def test_roots_refuse_bad_configuration(tmp_path):
    with pytest.raises(InvalidInput, match="no allowed roots"):
        Roots([])
    with pytest.raises(InvalidInput, match="confines nothing"):
        Roots(["/"])
    with pytest.raises(InvalidInput, match="not an existing"):
        Roots([str(tmp_path / "missing")])
    with pytest.raises(InvalidInput, match="not an existing"):
        Roots(["relative"])


def test_resolve_confines(layout):
    roots, root, outside = layout
    (root / "in").mkdir()
    (root / "link_out").symlink_to(outside, target_is_directory=True)
    (root / "link_in").symlink_to(root / "in", target_is_directory=True)
    assert roots.resolve(str(root / "in" / "x"), "p") == str(root / "in" / "x")
    assert roots.resolve(str(root / "link_in" / "x"), "p") == str(root / "in" / "x")
    for bad in (str(outside / "x"), str(root / "link_out" / "x"), str(root / ".." / "outside")):
        with pytest.raises(AccessDenied):
            roots.resolve(bad, "p")
    with pytest.raises(InvalidInput, match="absolute"):
        roots.resolve("in/x", "p")
    with pytest.raises(InvalidInput, match="NUL"):
        roots.resolve(str(root) + "/a\x00b", "p")
    with pytest.raises(InvalidInput, match="empty"):
        roots.resolve("", "p")


def test_staged_output_appears_only_on_commit(layout):
    roots, root, _ = layout
    dest = root / "dest"
    with StagedOutput(roots, str(dest)) as staged:
        for rel in ("a.txt", "sub/b.txt"):
            with staged.create(rel) as f:
                f.write(rel.encode())
        visible = [n for n in os.listdir(dest) if not n.startswith(STAGE_PREFIX)]
        assert visible == []
        final = staged.commit()
    assert sorted(final) == [str(dest / "a.txt"), str(dest / "sub" / "b.txt")]
    assert sorted(os.listdir(dest)) == ["a.txt", "sub"]
    assert (dest / "sub" / "b.txt").read_bytes() == b"sub/b.txt"


def test_staged_output_discarded_on_error(layout):
    roots, root, _ = layout
    dest = root / "dest"
    dest.mkdir()
    (dest / "old.txt").write_bytes(b"old")
    with pytest.raises(RuntimeError), StagedOutput(roots, str(dest)) as staged:
        with staged.create("old.txt") as f:
            f.write(b"new")
        raise RuntimeError("failed before commit")
    assert os.listdir(dest) == ["old.txt"]
    assert (dest / "old.txt").read_bytes() == b"old"


def test_staged_output_refuses_bad_names_and_collisions(layout):
    roots, root, _ = layout
    with StagedOutput(roots, str(root / "d")) as staged:
        for bad in ("", "/abs", "a/../b", "a//b", "./a", f"{STAGE_PREFIX}x/y"):
            with pytest.raises(InvalidInput):
                staged.create(bad)
        staged.create("same").close()
        with pytest.raises(InvalidInput, match="same output"):
            staged.create("same")


def test_commit_replaces_a_symlink_instead_of_following_it(layout):
    roots, root, outside = layout
    dest = root / "dest"
    dest.mkdir()
    (outside / "victim").write_bytes(b"victim")
    (dest / "out.txt").symlink_to(outside / "victim")
    with StagedOutput(roots, str(dest)) as staged:
        with staged.create("out.txt") as f:
            f.write(b"result")
        staged.commit()
    assert (outside / "victim").read_bytes() == b"victim"
    assert not (dest / "out.txt").is_symlink()
    assert (dest / "out.txt").read_bytes() == b"result"


def test_commit_refuses_a_subdirectory_link_leaving_the_roots(layout):
    roots, root, outside = layout
    dest = root / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    with StagedOutput(roots, str(dest)) as staged:
        with staged.create("sub/deeper/y.txt") as f:
            f.write(b"y")
        with staged.create("sub/x.txt") as f:
            f.write(b"x")
        with pytest.raises(AccessDenied):
            staged.commit()
    assert os.listdir(outside) == []  # not even the directory "deeper"


def test_destination_outside_or_a_file_is_refused(layout):
    roots, root, outside = layout
    with pytest.raises(AccessDenied):
        StagedOutput(roots, str(outside))
    (root / "file").write_bytes(b"")
    with pytest.raises(InvalidInput, match="not a directory"):
        StagedOutput(roots, str(root / "file"))


def test_sweep_removes_stages_of_dead_processes_only(layout):
    roots, root, _ = layout
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = root / f"{STAGE_PREFIX}{dead.stdout.strip()}-abc"
    mine = root / f"{STAGE_PREFIX}{os.getpid()}-def"
    for d in (stale, mine):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "partial").write_bytes(b"plaintext")
    with StagedOutput(roots, str(root)):  # a new request into the directory sweeps it
        assert not stale.exists()
        assert mine.exists()
