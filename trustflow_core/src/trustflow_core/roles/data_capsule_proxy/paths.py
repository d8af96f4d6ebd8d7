"""Confinement of local paths to the proxy's allowed roots, and staged (all-or-nothing) output.

Rules for every local path in a request: absolute, no NUL, no ``..`` segment; resolved with
:func:`os.path.realpath` it must lie inside one of the roots (also resolved), so a symbolic
link may point anywhere inside the roots but never outside them. Reading goes through the
``local`` storage backend, which applies the same rule and opens files with ``O_NOFOLLOW``.

:class:`StagedOutput` writes a request's output files into a hidden staging directory
(``.tflow-stage-*``) inside the destination directory, fsyncs them, and only when every file is
complete renames them into place. Any error before that removes the staging directory, so the
destination never shows a partial file, and a directory request shows none of its files. The
renames replace symbolic links instead of following them, and each target's parent directory
must resolve inside the roots. If the process is killed, its staging directory remains (hidden,
never holding a file under its final name) until the next request into the same directory
removes it: staging names carry the process id, and those of dead processes are swept.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ...errors import AccessDenied, InvalidInput

STAGE_PREFIX = ".tflow-stage-"


class Roots:
    """The resolved directories the proxy may read and write."""

    def __init__(self, roots: Iterable[str | os.PathLike[str]]) -> None:
        real = []
        for root in roots:
            path = os.fspath(root)
            if not os.path.isabs(path) or not os.path.isdir(path):
                raise InvalidInput(f"allowed root {path!r} is not an existing absolute directory")
            if os.path.realpath(path) == "/":
                raise InvalidInput("allowed root '/' confines nothing; name narrower directories")
            real.append(os.path.realpath(path))
        if not real:
            raise InvalidInput("no allowed roots: give at least one --allowed-root directory")
        self.real: tuple[str, ...] = tuple(real)

    def contains(self, real: str) -> bool:
        return any(real == root or real.startswith(root + "/") for root in self.real)

    def resolve(self, path: str, what: str) -> str:
        """The resolved ``path``; AccessDenied if it lies outside the roots."""
        if not isinstance(path, str) or not path:
            raise InvalidInput(f"{what} is empty")
        if "\x00" in path:
            raise InvalidInput(f"{what} contains a NUL character")
        if not path.startswith("/"):
            raise InvalidInput(f"{what} {path!r} is not an absolute path")
        if ".." in path.split("/"):
            raise AccessDenied(f"{what} {path!r} contains a '..' segment")
        real = os.path.realpath(path)
        if not self.contains(real):
            raise AccessDenied(f"{what} {path!r} resolves outside the allowed roots")
        return real


class StagedOutput:
    """Files written under a destination directory that appear together or not at all.

    Use as a context manager: :meth:`path_for` gives the staging path of a relative output name;
    :meth:`commit` moves every staged file into place; leaving the block without committing
    (or with an exception) removes the staging directory.
    """

    def __init__(self, roots: Roots, dest_dir: str, what: str = "dest_config.path") -> None:
        self.roots = roots
        self.dest = roots.resolve(dest_dir, what)
        if os.path.exists(self.dest) and not os.path.isdir(self.dest):
            raise InvalidInput(f"{what} {dest_dir!r} is not a directory")
        os.makedirs(self.dest, exist_ok=True)
        if not roots.contains(os.path.realpath(self.dest)):  # changed under us
            raise AccessDenied(f"{what} {dest_dir!r} resolves outside the allowed roots")
        sweep_stale_stages(self.dest)
        self.stage = tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-", dir=self.dest)
        self.names: list[str] = []

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def path_for(self, rel: str) -> str:
        """The staging path for output ``rel`` (parents created)."""
        parts = rel.split("/")
        if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InvalidInput(f"output name {rel!r} is not a clean relative path")
        if parts[0].startswith(STAGE_PREFIX):
            raise InvalidInput(f"output name {rel!r} uses the reserved prefix {STAGE_PREFIX}")
        if rel in self.names:
            raise InvalidInput(f"two inputs map to the same output {rel!r}")
        self.names.append(rel)
        path = os.path.join(self.stage, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def commit(self) -> list[str]:
        """Rename every staged file into place; return the final paths."""
        final = []
        for rel in self.names:
            target = os.path.join(self.dest, rel)
            parent = os.path.dirname(target)
            for check in ("before", "after"):  # realpath resolves links in the existing prefix
                if not self.roots.contains(os.path.realpath(parent)):
                    raise AccessDenied(f"output {rel!r} would land outside the allowed roots")
                if check == "before":
                    try:
                        os.makedirs(parent, exist_ok=True)
                    except (FileExistsError, NotADirectoryError) as exc:
                        raise InvalidInput(
                            f"cannot place {rel!r}: a parent is not a directory"
                        ) from exc
            if os.path.isdir(target) and not os.path.islink(target):
                raise InvalidInput(f"cannot write {target!r}: it is a directory")
            final.append(target)
        for rel, target in zip(self.names, final, strict=True):
            os.replace(os.path.join(self.stage, rel), target)
        _fsync_dirs({os.path.dirname(t) for t in final})
        self.names = []
        return final

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.stage)


def sweep_stale_stages(directory: str) -> None:
    """Remove staging directories in ``directory`` left by proxy processes that no longer
    exist (killed mid-request). Their names carry the creating process id."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if not entry.name.startswith(STAGE_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            pid_text = entry.name[len(STAGE_PREFIX) :].split("-", 1)[0]
            if pid_text.isdigit() and not _alive(int(pid_text)):
                shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dirs(dirs: Iterable[str]) -> None:
    for directory in dirs:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def relative_name(base: str, found: str) -> str:
    """``found`` relative to the listed ``base`` (both in the same notation)."""
    prefix = base.rstrip("/") + "/"
    if not found.startswith(prefix):
        raise InvalidInput(f"listed object {found!r} is not below {base!r}")
    return found[len(prefix) :]


def basename(uri: str) -> str:
    return Path(uri.rstrip("/")).name
