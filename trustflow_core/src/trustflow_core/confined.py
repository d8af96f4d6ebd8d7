"""File system access confined to root directories, free of check-then-open races.

Every operation starts from a freshly opened root directory and opens one path component at a
time relative to the directory descriptor before it, with ``O_NOFOLLOW``: no component is ever
resolved by the kernel through a symbolic link. A symbolic link met on the way is read
(``readlinkat``) and, where the operation follows links, its target is resolved by this module
under the same rules, so a link may lead anywhere inside the roots and never outside them. A
directory swapped for a link (or back) between two steps therefore cannot move the walk out of
the roots: at worst the operation fails.

Rules:

* A path is absolute. It lies under the root whose configured or resolved spelling is its
  longest leading run of components; any other path raises
  :class:`~trustflow_core.errors.AccessDenied`. ``.`` components are ignored.
* ``..`` (only possible in link targets; callers refuse it in the paths they are given) steps
  back to the directory already walked and raises AccessDenied above the root.
* With ``follow=False`` any symbolic link on the way raises AccessDenied naming it.
* More than :data:`MAX_LINKS` links in one resolution raise AccessDenied.
* Other failures are the :class:`OSError` of the step that failed (``FileNotFoundError``,
  ``NotADirectoryError``, ``IsADirectoryError``, ``PermissionError``); callers translate them.

Symbolic links are resolved in user space because the kernel has no ``openat2`` wrapper in
Python and ``RESOLVE_BENEATH`` refuses absolute links, which the roots allow when they point
inside; the walk costs one ``openat`` per component.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import secrets
import stat
from collections.abc import Callable, Iterable
from typing import BinaryIO, TypeVar

from .errors import AccessDenied

T = TypeVar("T")
#: Most symbolic links followed in one resolution (Linux's own limit).
MAX_LINKS = 40
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_A_DIR = (errno.ELOOP, errno.ENOTDIR)


class Dir:
    """An open directory beneath a root: its descriptor ``fd`` and resolved ``path``. Close
    it, or use it as a context manager."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def child(self, name: str, *, create: bool = False) -> Dir:
        """Open the subdirectory ``name`` without following a link (a link raises
        AccessDenied); with ``create``, make it (mode 0o777 less the umask) if missing."""
        try:
            return Dir(_open_dir(self.fd, name, create), posixpath.join(self.path, name))
        except OSError as exc:
            if exc.errno in _NOT_A_DIR and _is_link(self.fd, name):
                raise AccessDenied(
                    f"{posixpath.join(self.path, name)!r} is a symbolic link"
                ) from None
            raise

    def mkdtemp(self, prefix: str) -> Dir:
        """Create and open a new private (0o700) subdirectory named ``prefix`` + random."""
        while True:
            name = prefix + secrets.token_hex(6)
            try:
                os.mkdir(name, 0o700, dir_fd=self.fd)
            except FileExistsError:
                continue
            return self.child(name)

    def scan(self) -> list[os.DirEntry[str]]:
        """The entries of this directory (``entry.path`` is the bare name)."""
        with os.scandir(self.fd) as entries:
            return list(entries)

    def remove_tree(self, name: str) -> None:
        """Remove ``name`` and everything below it, never following a link (a link is
        removed itself). A missing ``name`` is no error."""
        try:
            sub = self.child(name)
        except AccessDenied:
            os.unlink(name, dir_fd=self.fd)  # a link: remove the link, not its target
            return
        except FileNotFoundError:
            return
        except NotADirectoryError:
            os.unlink(name, dir_fd=self.fd)
            return
        with sub:
            for entry in sub.scan():
                if entry.is_dir(follow_symlinks=False):
                    sub.remove_tree(entry.name)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=sub.fd)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(name, dir_fd=self.fd)

    def fsync(self) -> None:
        os.fsync(self.fd)


class AtomicWrite:
    """A file being written beneath a root: bytes go to ``file`` (a hidden temporary file in
    the destination's directory); :meth:`commit` fsyncs it and renames it over the
    destination, :meth:`discard` removes it. Either one ends the write."""

    def __init__(self, parent: Dir, name: str, tmp: str, file: BinaryIO) -> None:
        self.parent, self.name, self.tmp, self.file = parent, name, tmp, file

    def commit(self) -> None:
        """fsync the file, rename it over the destination, fsync the directory."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.name, src_dir_fd=self.parent.fd, dst_dir_fd=self.parent.fd)
            self.parent.fsync()
        except BaseException:
            self.discard()
            raise
        self.parent.close()

    def discard(self) -> None:
        """Close and remove the temporary file. Closing a buffered file waits for a write still
        running in another thread, so the file is never removed under it."""
        with contextlib.suppress(OSError, ValueError):
            self.file.close()
        if self.parent.fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp, dir_fd=self.parent.fd)
        self.parent.close()


class ConfinedRoots:
    """Root directories and the operations beneath them; see the module docstring. Callers
    validate the roots (existing absolute directories) before building this."""

    def __init__(self, roots: Iterable[str | os.PathLike[str]]) -> None:
        given = [os.fspath(root) for root in roots]
        self.real: tuple[str, ...] = tuple(os.path.realpath(root) for root in given)
        spellings = {(tuple(_parts(s)), real) for s, real in zip(given, self.real, strict=True)}
        spellings |= {(tuple(_parts(real)), real) for real in self.real}
        self._spellings = sorted(spellings, key=lambda item: -len(item[0]))

    # ---- operations ----------------------------------------------------------------------

    def resolve(self, path: str) -> str:
        """The resolved form of ``path``: links followed (confined), missing trailing
        components appended as named."""
        try:
            return self._final(path, True, False, _resolved)
        except FileNotFoundError:
            head, tail = posixpath.split(path.rstrip("/"))
            if not tail or tail == "..":
                raise
            return posixpath.join(self.resolve(head), tail)

    def open(self, path: str, flags: int, mode: int = 0o600, *, follow: bool = True) -> int:
        """``os.open`` of ``path`` (``O_NOFOLLOW`` and ``O_CLOEXEC`` added)."""
        flags |= os.O_NOFOLLOW | os.O_CLOEXEC
        return self._final(path, follow, False, lambda d, n: os.open(n, flags, mode, dir_fd=d.fd))

    def stat(self, path: str) -> os.stat_result:
        """The status of ``path`` (of a link's confined target)."""
        return self._final(path, True, False, _lstat_no_link)

    def opendir(self, path: str, *, create: bool = False) -> Dir:
        """Open the directory ``path`` (a link's confined target); with ``create``, make it
        and its parents if missing."""
        return self._final(path, True, create, lambda d, n: _as_dir(d, n, create))

    def unlink(self, path: str, *, follow: bool = True) -> None:
        """Remove the file ``path``; with ``follow``, a link's (confined) target, else the link
        itself. A directory raises IsADirectoryError."""

        def remove(parent: Dir, name: str) -> None:
            if follow:
                _lstat_no_link(parent, name)
            os.unlink(name, dir_fd=parent.fd)

        self._final(path, follow, False, remove)

    def begin_write(
        self, path: str, *, mode: int = 0o600, temp_suffix: str = ".tmp"
    ) -> AtomicWrite:
        """Start an atomic write of ``path`` (a link's confined target if it is one; missing
        parents are made): a temporary file ``.<name>.<random><temp_suffix>`` with
        permissions ``mode`` in the destination's directory. A directory at ``path`` raises
        IsADirectoryError."""

        def begin(parent: Dir, name: str) -> AtomicWrite:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(_lstat_no_link(parent, name).st_mode):
                    raise IsADirectoryError(errno.EISDIR, "is a directory", name)
            kept = Dir(os.dup(parent.fd), parent.path)
            try:
                tmp, fd = _create_temp(kept, f".{name[:64]}.", temp_suffix)
                try:
                    os.fchmod(fd, mode)
                    return AtomicWrite(kept, name, tmp, os.fdopen(fd, "wb"))
                except BaseException:
                    os.close(fd)
                    os.unlink(tmp, dir_fd=kept.fd)
                    raise
            except BaseException:
                kept.close()
                raise

        return self._final(path, True, True, begin)

    def files(self, top: Dir) -> list[tuple[str, int]]:
        """``(path relative to top, size)`` of the regular files below the open directory
        ``top``, unsorted. Real subdirectories are descended, links never; a link counts when
        its (confined) target is a regular file. Entries that vanish, or subdirectories swapped
        for links, during the walk are skipped."""
        found: list[tuple[str, int]] = []
        pending: list[tuple[str, Dir]] = [("", top)]
        try:
            while pending:
                rel, current = pending.pop()
                try:
                    for entry in current.scan():
                        name, shown = entry.name, rel + entry.name
                        try:
                            st = os.stat(name, dir_fd=current.fd, follow_symlinks=False)
                            if stat.S_ISDIR(st.st_mode):
                                pending.append((shown + "/", current.child(name)))
                            elif stat.S_ISLNK(st.st_mode):
                                st = self._link_target(posixpath.join(current.path, name))
                        except (AccessDenied, FileNotFoundError, NotADirectoryError):
                            continue
                        if stat.S_ISREG(st.st_mode):
                            found.append((shown, st.st_size))
                finally:
                    if current is not top:
                        current.close()
        finally:
            for _, opened in pending:
                if opened is not top:
                    opened.close()
        return found

    def _link_target(self, path: str) -> os.stat_result:
        """The status of the link ``path``'s confined target; AccessDenied for any failure
        (leaving the roots, dangling, unreadable), so listings skip it."""
        try:
            return self.stat(path)
        except OSError as exc:
            raise AccessDenied(f"{path!r}: {exc}") from None

    # ---- resolution ----------------------------------------------------------------------

    def _final(self, path: str, follow: bool, create: bool, attempt: Callable[[Dir, str], T]) -> T:
        """Run ``attempt(parent, name)`` on the last component of ``path``. ``attempt`` must
        not follow a link there but raise ``OSError(ELOOP)`` (as ``O_NOFOLLOW`` does); the link
        is then resolved (confined) and ``attempt`` retried at its target."""
        original = path
        for _ in range(MAX_LINKS + 1):
            parent, name = self._parent(path, follow, create, original)
            with parent:
                try:
                    return attempt(parent, name or ".")
                except OSError as exc:
                    if exc.errno not in _NOT_A_DIR or not name:
                        raise
                    target = _readlink(parent, name)
                    if target is None and not _swapped(exc, parent.fd, name):
                        raise
                if target is None:
                    continue  # no longer a link: try again
                if not follow:
                    raise _link_refused(original, parent, name)
                path = posixpath.join(parent.path, target)
        raise _too_many(original)

    def _parent(
        self, path: str, follow: bool, create: bool, original: str | None = None
    ) -> tuple[Dir, str]:
        """Walk every component of ``path`` but the last from its root; return the open
        directory reached and the last name (``""`` if ``path`` names that directory)."""
        original = original or path
        root, todo = self._locate(path, original)
        stack = [Dir(os.open(root, _DIR), root)]
        links = 0
        try:
            while todo:
                name = todo.pop(0)
                if name == "..":
                    if len(stack) == 1:
                        raise AccessDenied(f"{original!r} leads above the root {root!r}")
                    stack.pop().close()
                    continue
                if not todo:
                    return stack.pop(), name
                top = stack[-1]
                try:
                    stack.append(Dir(_open_dir(top.fd, name, create), f"{top.path}/{name}"))
                    continue
                except OSError as exc:
                    if exc.errno not in _NOT_A_DIR:
                        raise
                    target = _readlink(top, name)
                    if target is None and not _swapped(exc, top.fd, name):
                        raise
                links += 1
                if links > MAX_LINKS:
                    raise _too_many(original)
                if target is None:  # no longer a link: try again
                    todo.insert(0, name)
                    continue
                if not follow:
                    raise _link_refused(original, top, name)
                restart = posixpath.join(top.path, target, *todo)
                for opened in stack:
                    opened.close()
                root, todo = self._locate(restart, original, f"{top.path}/{name}")
                stack = [Dir(os.open(root, _DIR), root)]
            return stack.pop(), ""
        finally:
            for opened in stack:
                opened.close()

    def _locate(self, path: str, original: str, link: str | None = None) -> tuple[str, list[str]]:
        """The resolved root ``path`` lies under and the components below it."""
        if not path.startswith("/"):
            raise AccessDenied(f"{original!r} is not an absolute path")
        parts = _parts(path)
        for prefix, real in self._spellings:
            if tuple(parts[: len(prefix)]) == prefix:
                return real, parts[len(prefix) :]
        where = f"symbolic link {link!r} leads" if link else "it lies"
        raise AccessDenied(f"{original!r}: {where} outside the roots {list(self.real)}")


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _open_dir(dir_fd: int, name: str, create: bool) -> int:
    try:
        return os.open(name, _DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o777, dir_fd=dir_fd)
    return os.open(name, _DIR, dir_fd=dir_fd)


def _as_dir(parent: Dir, name: str, create: bool) -> Dir:
    if name == ".":
        return Dir(os.open(".", _DIR, dir_fd=parent.fd), parent.path)
    return Dir(_open_dir(parent.fd, name, create), posixpath.join(parent.path, name))


def _readlink(parent: Dir, name: str) -> str | None:
    """The target of the link ``name``, or None if it is (no longer) a link."""
    try:
        return os.readlink(name, dir_fd=parent.fd)
    except OSError:
        return None


def _swapped(exc: OSError, dir_fd: int, name: str) -> bool:
    """Whether ``name``, which made a step fail as a link (ELOOP) or a non-directory
    (ENOTDIR) but then could not be read as a link, is being swapped (a directory or a link
    now), so the step is worth retrying."""
    if exc.errno == errno.ELOOP:
        return True
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        return stat.S_ISDIR(mode) or stat.S_ISLNK(mode)
    except OSError:
        return False


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _lstat_no_link(parent: Dir, name: str) -> os.stat_result:
    """``lstat`` that raises ``OSError(ELOOP)`` for a link, so :meth:`_final` follows it."""
    st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "is a symbolic link", name)
    return st


def _resolved(parent: Dir, name: str) -> str:
    if name == ".":
        return parent.path
    with contextlib.suppress(FileNotFoundError):
        _lstat_no_link(parent, name)
    return posixpath.join(parent.path, name)


def _create_temp(parent: Dir, prefix: str, suffix: str) -> tuple[str, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        name = f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            return name, os.open(name, flags, 0o600, dir_fd=parent.fd)
        except FileExistsError:
            continue


def _link_refused(original: str, parent: Dir, name: str) -> AccessDenied:
    link = posixpath.join(parent.path, name)
    return AccessDenied(f"{original!r}: {link!r} is a symbolic link, which is not followed here")


def _too_many(original: str) -> AccessDenied:
    return AccessDenied(f"{original!r}: more than {MAX_LINKS} symbolic links")
