"""The ``local`` storage backend: files below configured root directories.

Settings:

* ``roots`` (required, non-empty list of existing absolute directories): everything this
  backend reads, writes, lists or deletes must resolve inside one of them.
* ``chunk_size`` (optional, bytes, default 1 MiB): the default read chunk size.
* ``file_mode`` (optional, default ``0o600``): permissions of written files; an int or an
  octal string such as ``"0640"``.

Confinement rules are in :mod:`trustflow_storage_local.paths`. Symbolic links that stay inside
the roots are followed (reading, writing, stat and delete act on the link's target); links that
leave the roots are refused with :class:`~trustflow_core.errors.AccessDenied`. Files are opened
with ``O_NOFOLLOW`` on the already resolved path, so a link swapped in after resolution is
refused too. ``list`` does not descend into symbolic links to directories.

Writes go to a hidden temporary file (``.<name>.<random>.tflow-tmp``) in the destination
directory, are fsynced and renamed over the destination; on any error the temporary file is
removed and the destination keeps its old content. All file system work runs in worker threads.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from typing import Any, BinaryIO, ClassVar, TypeVar

from trustflow_core.errors import AccessDenied, InvalidInput, ObjectNotFound
from trustflow_core.storage import DEFAULT_CHUNK_SIZE, ObjectInfo, Storage
from typing_extensions import Self

from .paths import TEMP_SUFFIX, Location, Roots, is_temp_name

SETTINGS = ("roots", "chunk_size", "file_mode")
T = TypeVar("T")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class LocalStorage(Storage):
    """Local files confined to ``roots``. See the module docstring for settings and rules."""

    name: ClassVar[str] = "local"
    schemes: ClassVar[tuple[str, ...]] = ("file",)

    def __init__(
        self,
        roots: Sequence[str | os.PathLike[str]],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        file_mode: int | str = 0o600,
    ) -> None:
        self._roots = Roots(_check_roots(roots))
        self.chunk_size = _check_chunk_size(chunk_size)
        self.file_mode = _check_mode(file_mode)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        settings = dict(settings or {})
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise InvalidInput(f"local storage: unknown setting(s) {unknown}; known: {SETTINGS}")
        if "roots" not in settings:
            raise InvalidInput(
                "local storage: setting 'roots' (the directories it may touch) is required"
            )
        return cls(
            settings["roots"],
            chunk_size=settings.get("chunk_size", DEFAULT_CHUNK_SIZE),
            file_mode=settings.get("file_mode", 0o600),
        )

    @property
    def roots(self) -> tuple[str, ...]:
        """The resolved root directories."""
        return self._roots.real

    # ---- reading ---------------------------------------------------------------------------

    async def read(self, uri: str, *, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """Yield the file's bytes in chunks of at most ``chunk_size`` (default: the configured
        one); errors are raised on first iteration."""
        size = self.chunk_size if chunk_size is None else _check_chunk_size(chunk_size)
        f = await _acquire(lambda: self._open_for_read(uri), _close)
        try:
            while chunk := await asyncio.to_thread(f.read, size):
                yield chunk
        finally:
            f.close()  # a buffered file: waits for a read still running in a worker thread

    def _open_for_read(self, uri: str) -> BinaryIO:
        loc = self._locate_object(uri)
        try:
            fd = os.open(loc.real, _OPEN_FLAGS)
        except OSError as exc:
            raise _translate(exc, uri) from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ObjectNotFound(f"{uri!r} is not a regular file")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    async def stat(self, uri: str) -> ObjectInfo:
        return await asyncio.to_thread(self._stat, uri)

    def _stat(self, uri: str) -> ObjectInfo:
        loc = self._locate_object(uri)
        return ObjectInfo(uri, _regular_file_stat(loc.real, uri).st_size)

    async def list(self, uri: str) -> builtins.list[ObjectInfo]:
        return await asyncio.to_thread(self._list, uri)

    def _list(self, uri: str) -> builtins.list[ObjectInfo]:
        loc = self._roots.locate(uri)
        try:
            st = os.stat(loc.real)
        except (FileNotFoundError, NotADirectoryError):
            return []
        if stat.S_ISREG(st.st_mode):
            hidden = is_temp_name(os.path.basename(loc.path))
            return [] if hidden else [ObjectInfo(loc.uri(), st.st_size)]
        if not stat.S_ISDIR(st.st_mode):
            return []
        found = [ObjectInfo(loc.uri(path), size) for path, size in self._walk(loc)]
        return sorted(found, key=lambda info: info.uri)

    def _walk(self, top: Location) -> builtins.list[tuple[str, int]]:
        """``(caller-notation path, size)`` of the files below ``top``: regular files and
        links to regular files inside the roots; temporary files and links to directories
        are skipped."""
        found: builtins.list[tuple[str, int]] = []
        pending = [(top.real, top.path)]
        while pending:
            real_dir, shown_dir = pending.pop()
            try:
                with os.scandir(real_dir) as entries:
                    listing = list(entries)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed while we walked
            except PermissionError as exc:
                raise AccessDenied(f"cannot list {shown_dir!r}: permission denied") from exc
            for entry in listing:
                shown = f"{shown_dir.rstrip('/')}/{entry.name}"
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_dir(follow_symlinks=False):
                        pending.append((entry.path, shown))
                    elif entry.is_file(follow_symlinks=False):
                        if not is_temp_name(entry.name):
                            found.append((shown, entry.stat(follow_symlinks=False).st_size))
                    elif entry.is_symlink():
                        target = os.path.realpath(entry.path)
                        if self._roots.contains(target) and os.path.isfile(target):
                            found.append((shown, os.stat(target).st_size))
        return found

    # ---- writing ---------------------------------------------------------------------------

    async def write(self, uri: str, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        target, tmp, f = await _acquire(
            lambda: self._begin_write(uri), lambda begun: _discard(begun[2], begun[1])
        )
        size = 0
        try:
            async for chunk in chunks:
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise InvalidInput(f"write to {uri!r}: chunks must be bytes, got {chunk!r:.40}")
                await asyncio.to_thread(f.write, chunk)
                size += memoryview(chunk).nbytes
            await asyncio.to_thread(_commit, f, tmp, target, uri)
        except BaseException:
            _discard(f, tmp)
            raise
        return ObjectInfo(uri, size)

    def _begin_write(self, uri: str) -> tuple[str, str, BinaryIO]:
        """Create the destination's parent directories and a hidden temporary file there;
        return ``(resolved destination, temporary path, open temporary file)``."""
        loc = self._locate_object(uri)
        parent, name = os.path.split(loc.real)
        if os.path.isdir(loc.real):
            raise InvalidInput(f"cannot write {uri!r}: it is a directory")
        try:
            os.makedirs(parent, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise InvalidInput(f"cannot write {uri!r}: a parent is not a directory") from exc
        except OSError as exc:
            raise _translate(exc, uri) from exc
        if os.path.realpath(parent) != parent:  # a link appeared after resolution
            raise AccessDenied(f"cannot write {uri!r}: {parent!r} changed into a symbolic link")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name[:64]}.", suffix=TEMP_SUFFIX, dir=parent)
        except OSError as exc:
            raise _translate(exc, uri) from exc
        try:
            os.fchmod(fd, self.file_mode)
            return loc.real, tmp, os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise

    async def delete(self, uri: str) -> None:
        await asyncio.to_thread(self._delete, uri)

    def _delete(self, uri: str) -> None:
        loc = self._locate_object(uri)
        _regular_file_stat(loc.real, uri)
        try:
            os.unlink(loc.real)
        except OSError as exc:
            raise _translate(exc, uri) from exc

    # ---- helpers ---------------------------------------------------------------------------

    def _locate_object(self, uri: str) -> Location:
        """Locate a URI naming one object (not a directory prefix, not a temporary file)."""
        if isinstance(uri, str) and uri.endswith("/"):
            raise InvalidInput(f"{uri!r} names a directory, not an object")
        loc = self._roots.locate(uri)
        if is_temp_name(os.path.basename(loc.path)):
            raise InvalidInput(f"{uri!r}: names like '.*{TEMP_SUFFIX}' are reserved")
        return loc


def _check_roots(roots: Any) -> list[str]:
    if isinstance(roots, (str, bytes)) or not isinstance(roots, Sequence):
        raise InvalidInput(f"local storage: roots must be a list of directories, got {roots!r}")
    if not roots:
        raise InvalidInput("local storage: roots is empty; an unconfined storage is refused")
    checked = []
    for root in roots:
        path = os.fspath(root) if isinstance(root, (str, os.PathLike)) else None
        if not isinstance(path, str) or not os.path.isabs(path):
            raise InvalidInput(f"local storage: root {root!r} is not an absolute path")
        if not os.path.isdir(path):
            raise InvalidInput(f"local storage: root {path!r} is not an existing directory")
        if os.path.realpath(path) == "/":
            raise InvalidInput(f"local storage: root {path!r} is '/', which confines nothing")
        checked.append(path)
    return checked


def _check_chunk_size(chunk_size: Any) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise InvalidInput(f"local storage: chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


def _check_mode(mode: Any) -> int:
    """A permission mode from an int or an octal string such as ``"0640"``."""
    if isinstance(mode, str):
        try:
            mode = int(mode, 8)
        except ValueError:
            raise InvalidInput(f"local storage: file_mode {mode!r} is not octal") from None
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise InvalidInput(f"local storage: file_mode must be an int, got {mode!r}")
    if not 0 <= mode <= 0o777:
        raise InvalidInput(f"local storage: file_mode {mode:#o} is not in 0..0o777")
    return mode


def _regular_file_stat(real: str, uri: str) -> os.stat_result:
    try:
        st = os.stat(real)
    except OSError as exc:
        raise _translate(exc, uri) from exc
    if not stat.S_ISREG(st.st_mode):
        raise ObjectNotFound(f"{uri!r} is not a regular file")
    return st


def _translate(exc: OSError, uri: str) -> Exception:
    """The Trustflow error for an OS error on ``uri`` (other OS errors are returned as is)."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return ObjectNotFound(f"no object at {uri!r}")
    if exc.errno == errno.ELOOP:
        return AccessDenied(f"{uri!r} is a symbolic link where none is allowed")
    if isinstance(exc, PermissionError):
        return AccessDenied(f"permission denied for {uri!r}: {exc.strerror}")
    if isinstance(exc, IsADirectoryError):
        return InvalidInput(f"{uri!r} is a directory")
    return exc


def _commit(f: BinaryIO, tmp: str, target: str, uri: str) -> None:
    """fsync the temporary file, rename it over ``target`` and fsync the directory."""
    f.flush()
    os.fsync(f.fileno())
    f.close()
    try:
        os.replace(tmp, target)
    except OSError as exc:
        raise _translate(exc, uri) from exc
    dir_fd = os.open(os.path.dirname(target), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _discard(f: BinaryIO, tmp: str) -> None:
    """Close and remove an abandoned temporary file. Closing a buffered file waits for a
    write still running in a worker thread, so the file is never removed under it."""
    with contextlib.suppress(OSError, ValueError):
        f.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _close(f: BinaryIO) -> None:
    f.close()


async def _acquire(acquire: Callable[[], T], release: Callable[[T], None]) -> T:
    """Run ``acquire`` in a worker thread and return what it opened. If the caller is
    cancelled meanwhile, ``release`` the result once the thread finishes, so nothing leaks."""
    future = asyncio.ensure_future(asyncio.to_thread(acquire))

    def release_late(done: asyncio.Future[T]) -> None:
        if not done.cancelled() and done.exception() is None:
            release(done.result())

    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(release_late)
        raise
