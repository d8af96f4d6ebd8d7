"""Confinement to the roots: traversal, outside paths, symbolic links, URI forms."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from trustflow_core.errors import AccessDenied, InvalidInput, ObjectNotFound
from trustflow_core.storage import ObjectInfo

from trustflow_storage_local.storage import LocalStorage

pytestmark = pytest.mark.asyncio


@dataclass
class Tree:
    root: Path
    outside: Path
    secret: Path


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "data").mkdir(parents=True)
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_bytes(b"secret")
    (root / "data" / "real.txt").write_bytes(b"real")
    return Tree(root, outside, secret)


@pytest_asyncio.fixture
async def storage(tree: Tree) -> AsyncIterator[LocalStorage]:
    async with LocalStorage.from_settings({"roots": [str(tree.root)], "chunk_size": 4}) as s:
        yield s


async def assert_all_denied(storage: LocalStorage, uri: str) -> None:
    """Every operation on ``uri`` raises AccessDenied naming it."""
    name = uri.rsplit("/", 1)[-1]
    with pytest.raises(AccessDenied, match=name):
        await storage.read_bytes(uri)
    with pytest.raises(AccessDenied, match=name):
        await storage.write_bytes(uri, b"overwritten")
    with pytest.raises(AccessDenied, match=name):
        await storage.stat(uri)
    with pytest.raises(AccessDenied, match=name):
        await storage.list(uri)
    with pytest.raises(AccessDenied, match=name):
        await storage.delete(uri)


async def test_dotdot_traversal_is_refused(storage: LocalStorage, tree: Tree) -> None:
    escape = f"{tree.root}/../outside/secret.txt"
    await assert_all_denied(storage, escape)
    await assert_all_denied(storage, Path(escape).as_uri())
    await assert_all_denied(storage, f"file://{tree.root}/%2E%2E/outside/secret.txt")
    # '..' is refused even when it would stay inside the root
    await assert_all_denied(storage, f"{tree.root}/data/../data/real.txt")
    assert tree.secret.read_bytes() == b"secret"


async def test_absolute_path_outside_roots_is_refused(storage: LocalStorage, tree: Tree) -> None:
    await assert_all_denied(storage, str(tree.secret))
    await assert_all_denied(storage, tree.secret.as_uri())
    await assert_all_denied(storage, str(tree.outside / "new.txt"))
    assert not (tree.outside / "new.txt").exists()
    assert tree.secret.read_bytes() == b"secret"


async def test_sibling_with_root_name_as_prefix_is_refused(
    storage: LocalStorage, tree: Tree
) -> None:
    sibling = tree.root.with_name(tree.root.name + "2")
    sibling.mkdir()
    (sibling / "f.txt").write_bytes(b"x")
    await assert_all_denied(storage, str(sibling / "f.txt"))


async def test_file_symlink_escaping_the_root_is_refused(storage: LocalStorage, tree: Tree) -> None:
    link = tree.root / "link.txt"
    link.symlink_to(tree.secret)
    await assert_all_denied(storage, str(link))
    assert tree.secret.read_bytes() == b"secret"
    assert link.is_symlink()
    listed = await storage.list(str(tree.root))
    assert [info.uri for info in listed] == [str(tree.root / "data" / "real.txt")]


async def test_dangling_symlink_escaping_the_root_is_refused(
    storage: LocalStorage, tree: Tree
) -> None:
    link = tree.root / "dangling.txt"
    link.symlink_to(tree.outside / "created.txt")
    await assert_all_denied(storage, str(link))
    assert not (tree.outside / "created.txt").exists()


async def test_directory_symlink_escaping_the_root_is_refused(
    storage: LocalStorage, tree: Tree
) -> None:
    linkdir = tree.root / "linkdir"
    linkdir.symlink_to(tree.outside, target_is_directory=True)
    await assert_all_denied(storage, str(linkdir / "secret.txt"))
    await assert_all_denied(storage, str(linkdir / "sub" / "new.txt"))
    await assert_all_denied(storage, str(linkdir))
    assert sorted(p.name for p in tree.outside.iterdir()) == ["secret.txt"]
    listed = await storage.list(str(tree.root))
    assert [info.uri for info in listed] == [str(tree.root / "data" / "real.txt")]


async def test_symlink_inside_the_root_to_inside_the_root_is_followed(
    storage: LocalStorage, tree: Tree
) -> None:
    """Documented choice: links that stay inside the roots are allowed and act on their
    target; ``list`` shows file links but does not descend into directory links."""
    real = tree.root / "data" / "real.txt"
    alias = tree.root / "alias.txt"
    alias.symlink_to(real)
    aliasdir = tree.root / "aliasdir"
    aliasdir.symlink_to(tree.root / "data", target_is_directory=True)

    assert await storage.read_bytes(str(alias)) == b"real"
    assert await storage.read_bytes(str(aliasdir / "real.txt")) == b"real"
    assert await storage.stat(str(alias)) == ObjectInfo(str(alias), 4)
    assert await storage.list(str(tree.root)) == [
        ObjectInfo(str(alias), 4),
        ObjectInfo(str(real), 4),
    ]
    assert await storage.list(str(aliasdir)) == [ObjectInfo(str(aliasdir / "real.txt"), 4)]

    await storage.write_bytes(str(alias), b"via alias")
    assert alias.is_symlink()
    assert real.read_bytes() == b"via alias"


async def test_root_named_through_a_symlink(tree: Tree, tmp_path: Path) -> None:
    via = tmp_path / "via"
    via.symlink_to(tree.root, target_is_directory=True)
    async with LocalStorage.from_settings({"roots": [str(via)]}) as storage:
        assert storage.roots == (str(tree.root.resolve()),)
        assert await storage.read_bytes(str(via / "data" / "real.txt")) == b"real"
        assert await storage.read_bytes(str(tree.root / "data" / "real.txt")) == b"real"
        with pytest.raises(AccessDenied):
            await storage.read_bytes(str(tree.secret))


async def test_several_roots(tree: Tree, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    async with LocalStorage.from_settings({"roots": [str(tree.root), other]}) as storage:
        await storage.write_bytes(str(other / "o.txt"), b"o")
        assert await storage.read_bytes(str(tree.root / "data" / "real.txt")) == b"real"
        with pytest.raises(AccessDenied):
            await storage.read_bytes(str(tree.secret))


@pytest.mark.parametrize(
    "uri",
    [
        "relative/path.txt",
        "s3://bucket/key",
        "file://otherhost/etc/passwd",
        "file:relative.txt",
        "",
    ],
)
async def test_unsupported_uris_are_invalid(storage: LocalStorage, uri: str) -> None:
    with pytest.raises(InvalidInput):
        await storage.stat(uri)
    with pytest.raises(InvalidInput):
        await storage.list(uri)


async def test_query_fragment_and_nul_are_invalid(storage: LocalStorage, tree: Tree) -> None:
    base = (tree.root / "data" / "real.txt").as_uri()
    for uri in (base + "?x=1", base + "#frag", base.replace("real", "re%00al")):
        with pytest.raises(InvalidInput):
            await storage.stat(uri)
    with pytest.raises(InvalidInput):
        await storage.stat(f"{tree.root}/a\x00b")


async def test_percent_encoded_file_uris_round_trip(storage: LocalStorage, tree: Tree) -> None:
    path = tree.root / "with space" / "100%.txt"
    uri = path.as_uri()
    assert "%20" in uri and "%25" in uri
    await storage.write_bytes(uri, b"x")
    assert path.read_bytes() == b"x"
    assert await storage.list((tree.root / "with space").as_uri()) == [ObjectInfo(uri, 1)]
    assert await storage.list(str(tree.root / "with space")) == [ObjectInfo(str(path), 1)]
    assert await storage.read_bytes("file://localhost" + uri.removeprefix("file://")) == b"x"


async def test_directories_are_not_objects(storage: LocalStorage, tree: Tree) -> None:
    data = str(tree.root / "data")
    with pytest.raises(ObjectNotFound):
        await storage.read_bytes(data)
    with pytest.raises(ObjectNotFound):
        await storage.stat(data)
    with pytest.raises(ObjectNotFound):
        await storage.delete(data)
    with pytest.raises(InvalidInput):
        await storage.write_bytes(data, b"x")
    with pytest.raises(InvalidInput):
        await storage.write_bytes(data + "/", b"x")
    with pytest.raises(InvalidInput):
        await storage.write_bytes(f"{tree.root}/data/real.txt/child", b"x")
    assert (tree.root / "data").is_dir()


async def test_fifo_is_not_read_and_not_listed(storage: LocalStorage, tree: Tree) -> None:
    fifo = tree.root / "data" / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ObjectNotFound):  # and does not block waiting for a writer
        await storage.read_bytes(str(fifo))
    assert [i.uri for i in await storage.list(str(tree.root))] == [
        str(tree.root / "data" / "real.txt")
    ]
