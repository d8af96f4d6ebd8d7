"""trustflow_core.confined: the walk beneath root directory descriptors, on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trustflow_core.confined import MAX_LINKS, ConfinedRoots
from trustflow_core.errors import AccessDenied


@pytest.fixture
def tree(tmp_path: Path) -> tuple[ConfinedRoots, Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "in").mkdir(parents=True)
    outside.mkdir()
    (root / "in" / "f.txt").write_bytes(b"inside")
    (outside / "f.txt").write_bytes(b"outside")
    return ConfinedRoots([str(root)]), root, outside


def read(roots: ConfinedRoots, path: Path, **kw: bool) -> bytes:
    fd = roots.open(str(path), os.O_RDONLY, **kw)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def test_links_inside_the_roots_are_followed(tree) -> None:
    roots, root, _ = tree
    (root / "rel").symlink_to("in", target_is_directory=True)
    (root / "abs").symlink_to(root / "in", target_is_directory=True)
    (root / "in" / "up").symlink_to("../in/f.txt")
    for path in (root / "rel" / "f.txt", root / "abs" / "f.txt", root / "in" / "up"):
        assert read(roots, path) == b"inside"
    assert roots.resolve(str(root / "rel" / "new" / "x")) == str(root / "in" / "new" / "x")
    assert roots.stat(str(root / "abs" / "up")).st_size == 6


def test_intermediate_link_leaving_the_roots_is_refused_with_its_name(tree) -> None:
    roots, root, outside = tree
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "in" / "climb").symlink_to("../../outside", target_is_directory=True)
    with pytest.raises(AccessDenied, match=f"symbolic link '{root}/out' leads outside the roots"):
        read(roots, root / "out" / "f.txt")
    with pytest.raises(AccessDenied, match="leads above the root"):
        read(roots, root / "in" / "climb" / "f.txt")
    with pytest.raises(AccessDenied, match="outside the roots"):
        roots.begin_write(str(root / "out" / "new" / "g.txt"))
    assert sorted(p.name for p in outside.iterdir()) == ["f.txt"]


def test_without_follow_every_link_is_refused(tree) -> None:
    roots, root, _ = tree
    (root / "rel").symlink_to("in", target_is_directory=True)
    (root / "in" / "alias").symlink_to("f.txt")
    with pytest.raises(AccessDenied, match="is a symbolic link, which is not followed"):
        read(roots, root / "rel" / "f.txt", follow=False)
    with pytest.raises(AccessDenied, match="is a symbolic link, which is not followed"):
        read(roots, root / "in" / "alias", follow=False)


def test_link_loops_end(tree) -> None:
    roots, root, _ = tree
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    with pytest.raises(AccessDenied, match=f"more than {MAX_LINKS} symbolic links"):
        read(roots, root / "a")
    with pytest.raises(AccessDenied, match=f"more than {MAX_LINKS} symbolic links"):
        read(roots, root / "a" / "x")


def test_paths_outside_every_root_are_refused(tree) -> None:
    roots, root, outside = tree
    with pytest.raises(AccessDenied, match="it lies outside the roots"):
        read(roots, outside / "f.txt")
    with pytest.raises(AccessDenied, match="outside the roots"):
        read(roots, Path(str(root) + "2") / "f.txt")


def test_atomic_write_commits_or_leaves_nothing(tree) -> None:
    roots, root, _ = tree
    target = root / "new" / "w.txt"
    write = roots.begin_write(str(target), mode=0o640, temp_suffix=".part")
    write.file.write(b"first")
    write.discard()
    assert os.listdir(root / "new") == []
    write = roots.begin_write(str(target), mode=0o640, temp_suffix=".part")
    write.file.write(b"second")
    assert not target.exists()
    write.commit()
    assert target.read_bytes() == b"second"
    assert target.stat().st_mode & 0o777 == 0o640
    assert os.listdir(root / "new") == ["w.txt"]
    with pytest.raises(IsADirectoryError):
        roots.begin_write(str(root / "in"))


def test_files_and_remove_tree_never_go_through_links(tree) -> None:
    roots, root, outside = tree
    (root / "in" / "file_link").symlink_to(root / "in" / "f.txt")
    (root / "in" / "out_link").symlink_to(outside / "f.txt")
    (root / "in" / "dir_link").symlink_to(outside, target_is_directory=True)
    (root / "in" / "sub").mkdir()
    (root / "in" / "sub" / "g").write_bytes(b"gg")
    with roots.opendir(str(root)) as top:
        assert sorted(roots.files(top)) == [
            ("in/f.txt", 6),
            ("in/file_link", 6),
            ("in/sub/g", 2),
        ]
        top.remove_tree("in")
    assert os.listdir(root) == []
    assert sorted(p.name for p in outside.iterdir()) == ["f.txt"]
