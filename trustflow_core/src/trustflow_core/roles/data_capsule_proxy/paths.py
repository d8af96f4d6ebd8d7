"""Confinement of local paths to the proxy's allowed roots, and staged (all-or-nothing) output.

Rules for every local path in a request: absolute, no NUL, no ``..`` segment, and it must lie
inside one of the roots with every symbolic link on the way leading inside them too. All file
system work goes through :class:`trustflow_core.confined.ConfinedRoots`, which opens one path
component at a time beneath a root's directory descriptor and never lets the kernel follow a
link, so a directory swapped for a link during a request cannot move it outside the roots.
Reading goes through the ``local`` storage backend, which uses the same walk.

:class:`StagedOutput` writes a request's output files into a hidden staging directory
(``.tflow-stage-*``) inside the destination directory, fsyncs them, and only when every file is
complete renames them into place. Any error before that removes the staging directory, so the
destination never shows a partial file, and a directory request shows none of its files. The
staging directory is held open by descriptor and nothing inside it is reached through a link;
the renames replace symbolic links instead of following them, and each target's parent
directory is opened (and made) beneath the roots. If the process is killed, its staging
directory remains (hidden, never holding a file under its final name) until the next request
into the same directory removes it: staging names carry the process id, and those of dead
processes are swept.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from ...confined import ConfinedRoots, Dir
from ...errors import AccessDenied, InvalidInput

STAGE_PREFIX = ".tflow-stage-"
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


class Roots:
    """The directories the proxy may read and write, and its confined file operations."""

    def __init__(self, roots: Iterable[str | os.PathLike[str]]) -> None:
        given = []
        for root in roots:
            path = os.fspath(root)
            if not os.path.isabs(path) or not os.path.isdir(path):
                raise InvalidInput(f"allowed root {path!r} is not an existing absolute directory")
            if os.path.realpath(path) == "/":
                raise InvalidInput("allowed root '/' confines nothing; name narrower directories")
            given.append(path)
        if not given:
            raise InvalidInput("no allowed roots: give at least one --allowed-root directory")
        self.confined = ConfinedRoots(given)
        self.real = self.confined.real

    def resolve(self, path: str, what: str) -> str:
        """The resolved ``path``; AccessDenied if it (or a link on the way) leaves the roots."""
        _check(path, what)
        try:
            return self.confined.resolve(path)
        except AccessDenied as exc:
            raise AccessDenied(f"{what} {exc}") from None
        except NotADirectoryError:
            raise InvalidInput(f"{what} {path!r}: a parent is not a directory") from None

    def remove(self, path: str) -> None:
        """Remove the file ``path`` (a link itself, never its target)."""
        self.confined.unlink(path, follow=False)


def _check(path: str, what: str) -> None:
    if not isinstance(path, str) or not path:
        raise InvalidInput(f"{what} is empty")
    if "\x00" in path:
        raise InvalidInput(f"{what} contains a NUL character")
    if not path.startswith("/"):
        raise InvalidInput(f"{what} {path!r} is not an absolute path")
    if ".." in path.split("/"):
        raise AccessDenied(f"{what} {path!r} contains a '..' segment")


class StagedOutput:
    """Files written under a destination directory that appear together or not at all.

    Use as a context manager: :meth:`create` opens a new staged file for a relative output
    name; :meth:`commit` moves every staged file into place; leaving the block without
    committing (or with an exception) removes the staging directory.
    """

    def __init__(self, roots: Roots, dest_dir: str, what: str = "dest_config.path") -> None:
        self.roots = roots
        roots.resolve(dest_dir, what)
        try:
            self._dest = roots.confined.opendir(dest_dir, create=True)
        except AccessDenied as exc:
            raise AccessDenied(f"{what} {exc}") from None
        except (FileExistsError, NotADirectoryError):
            raise InvalidInput(f"{what} {dest_dir!r} is not a directory") from None
        try:
            sweep_stale_stages(self._dest)
            self._stage = self._dest.mkdtemp(f"{STAGE_PREFIX}{os.getpid()}-")
        except BaseException:
            self._dest.close()
            raise
        self.dest = self._dest.path
        self.names: list[str] = []

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def create(self, rel: str, mode: int = 0o600) -> BinaryIO:
        """A new staged file for output ``rel`` (parents made), open for writing."""
        parts = rel.split("/")
        if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InvalidInput(f"output name {rel!r} is not a clean relative path")
        if parts[0].startswith(STAGE_PREFIX):
            raise InvalidInput(f"output name {rel!r} uses the reserved prefix {STAGE_PREFIX}")
        if rel in self.names:
            raise InvalidInput(f"two inputs map to the same output {rel!r}")
        self.names.append(rel)
        with self._staged_dir(parts[:-1], create=True) as parent:
            fd = os.open(
                parts[-1], _NEW_FILE | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent.fd
            )
        return os.fdopen(fd, "wb")

    def commit(self) -> list[str]:
        """Rename every staged file into place; return the final paths."""
        targets: dict[str, Dir] = {}
        try:
            placed = [(rel, self._target_dir(rel, targets)) for rel in self.names]
            for rel, target in placed:
                name = posixpath.basename(rel)
                with self._staged_dir(rel.split("/")[:-1], create=False) as source:
                    os.replace(name, name, src_dir_fd=source.fd, dst_dir_fd=target.fd)
            for target in targets.values():
                target.fsync()
        finally:
            for target in targets.values():
                target.close()
        self.names = []
        return [posixpath.join(target.path, posixpath.basename(rel)) for rel, target in placed]

    def _target_dir(self, rel: str, opened: dict[str, Dir]) -> Dir:
        """The open (made if missing) directory that will hold output ``rel``; refuses a
        directory in the way of the file."""
        head, name = posixpath.split(rel)
        if head not in opened:
            try:
                opened[head] = self.roots.confined.opendir(
                    posixpath.join(self.dest, head), create=True
                )
            except AccessDenied:
                raise AccessDenied(f"output {rel!r} would land outside the allowed roots") from None
            except (FileExistsError, NotADirectoryError):
                raise InvalidInput(f"cannot place {rel!r}: a parent is not a directory") from None
        target = opened[head]
        try:
            st = os.stat(name, dir_fd=target.fd, follow_symlinks=False)
        except FileNotFoundError:
            return target
        if stat.S_ISDIR(st.st_mode):
            raise InvalidInput(
                f"cannot write {posixpath.join(target.path, name)!r}: it is a directory"
            )
        return target

    def _staged_dir(self, parts: list[str], *, create: bool) -> Dir:
        """Open the staging subdirectory ``parts`` (never through a link)."""
        current = Dir(os.dup(self._stage.fd), self._stage.path)
        for part in parts:
            with current:
                current = current.child(part, create=create)
        return current

    def discard(self) -> None:
        """Remove the staging directory (idempotent)."""
        if self._dest.fd < 0:
            return
        self._stage.close()
        try:
            self._dest.remove_tree(posixpath.basename(self._stage.path))
        finally:
            self._dest.close()


def sweep_stale_stages(directory: Dir) -> None:
    """Remove staging directories in ``directory`` left by proxy processes that no longer
    exist (killed mid-request). Their names carry the creating process id."""
    with contextlib.suppress(OSError):
        for entry in directory.scan():
            if not entry.name.startswith(STAGE_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            pid_text = entry.name[len(STAGE_PREFIX) :].split("-", 1)[0]
            if pid_text.isdigit() and not _alive(int(pid_text)):
                directory.remove_tree(entry.name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def relative_name(base: str, found: str) -> str:
    """``found`` relative to the listed ``base`` (both in the same notation)."""
    prefix = base.rstrip("/") + "/"
    if not found.startswith(prefix):
        raise InvalidInput(f"listed object {found!r} is not below {base!r}")
    return found[len(prefix) :]


def basename(uri: str) -> str:
    return Path(uri.rstrip("/")).name
