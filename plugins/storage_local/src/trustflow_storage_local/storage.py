"""The ``local`` storage backend: files below configured root directories.

Settings:

* ``roots`` (required, non-empty list of existing absolute directories): everything this
  backend reads, writes, lists or deletes must resolve inside one of them.
* ``chunk_size`` (optional, bytes, default 1 MiB): the default read chunk size.
* ``file_mode`` (optional, default ``0o600``): permissions of written files; an int or an
  octal string such as ``"0640"``.

URIs are parsed by :mod:`trustflow_storage_local.paths`; every file system operation goes
through :class:`trustflow_core.confined.ConfinedRoots`, which opens each path component beneath a
root's directory descriptor without letting the kernel follow a link. Symbolic links that stay
inside the roots are followed (reading, writing, stat and delete act on the link's target);
links that leave the roots are refused with :class:`~trustflow_core.errors.AccessDenied`, also
when a directory is swapped for such a link while the operation runs. ``list`` does not descend
into symbolic links to directories.

Writes go to a hidden temporary file (``.<name>.<random>.tflow-tmp``) in the destination
directory, are fsynced and renamed over the destination (all through directory descriptors); on
any error the temporary file is removed and the destination keeps its old content. All file
system work runs in worker threads.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import os
import posixpath
import stat
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from typing import Any, BinaryIO, ClassVar, TypeVar

from trustflow_core.confined import AtomicWrite, ConfinedRoots
from trustflow_core.errors import AccessDenied, InvalidInput, ObjectNotFound, TrustflowError
from trustflow_core.settings_schema import Node
from trustflow_core.storage import DEFAULT_CHUNK_SIZE, ObjectInfo, Storage
from typing_extensions import Self

from .paths import TEMP_SUFFIX, Location, is_temp_name, parse

SETTINGS = ("roots", "chunk_size", "file_mode")
T = TypeVar("T")


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
        self._roots = ConfinedRoots(_check_roots(roots))
        self.chunk_size = _check_chunk_size(chunk_size)
        self.file_mode = _check_mode(file_mode)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        """Build from ``roots`` (required: the directories it may touch), ``chunk_size`` and
        ``file_mode``; a bad or unknown setting raises
        :class:`~trustflow_core.settings_schema.ConfigError` naming it."""
        root = Node.settings(settings, "local storage settings").mapping(
            SETTINGS, required=("roots",)
        )
        mode = root.get("file_mode")
        return cls(
            root.get("roots").build(_check_roots),
            chunk_size=root.get("chunk_size").integer(DEFAULT_CHUNK_SIZE, minimum=1),
            file_mode=mode.build(_check_mode) if mode.present else 0o600,
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

    def open_file(self, uri: str) -> BinaryIO:
        """The file at ``uri`` open for reading (blocking; the caller closes it), with the
        confinement and errors of :meth:`read`."""
        return self._open_for_read(uri)

    def _open_for_read(self, uri: str) -> BinaryIO:
        loc = self._locate_object(uri)
        try:
            fd = self._roots.open(loc.path, os.O_RDONLY | os.O_NONBLOCK)
        except TrustflowError:
            raise
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
        return ObjectInfo(uri, self._regular_file_stat(loc.path, uri).st_size)

    async def list(self, uri: str) -> builtins.list[ObjectInfo]:
        return await asyncio.to_thread(self._list, uri)

    def _list(self, uri: str) -> builtins.list[ObjectInfo]:
        loc = parse(uri)
        try:
            st = self._roots.stat(loc.path)
            if stat.S_ISREG(st.st_mode):
                hidden = is_temp_name(posixpath.basename(loc.path))
                return [] if hidden else [ObjectInfo(loc.uri(), st.st_size)]
            if not stat.S_ISDIR(st.st_mode):
                return []
            with self._roots.opendir(loc.path) as top:
                files = self._roots.files(top)
        except (FileNotFoundError, NotADirectoryError):
            return []  # absent, or removed while we looked
        except PermissionError as exc:
            raise AccessDenied(f"cannot list {uri!r}: permission denied") from exc
        found = [
            ObjectInfo(loc.uri(loc.child(rel)), size)
            for rel, size in files
            if not is_temp_name(posixpath.basename(rel))
        ]
        return sorted(found, key=lambda info: info.uri)

    # ---- writing ---------------------------------------------------------------------------

    async def write(self, uri: str, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        begun = await _acquire(lambda: self._begin_write(uri), AtomicWrite.discard)
        size = 0
        try:
            async for chunk in chunks:
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise InvalidInput(f"write to {uri!r}: chunks must be bytes, got {chunk!r:.40}")
                await asyncio.to_thread(begun.file.write, chunk)
                size += memoryview(chunk).nbytes
            await asyncio.to_thread(_commit, begun, uri)
        except BaseException:
            begun.discard()
            raise
        return ObjectInfo(uri, size)

    def _begin_write(self, uri: str) -> AtomicWrite:
        """Create the destination's parent directories and a hidden temporary file there."""
        loc = self._locate_object(uri)
        try:
            return self._roots.begin_write(loc.path, mode=self.file_mode, temp_suffix=TEMP_SUFFIX)
        except IsADirectoryError:
            raise InvalidInput(f"cannot write {uri!r}: it is a directory") from None
        except (FileExistsError, NotADirectoryError) as exc:
            raise InvalidInput(f"cannot write {uri!r}: a parent is not a directory") from exc
        except TrustflowError:
            raise
        except OSError as exc:
            raise _translate(exc, uri) from exc

    async def delete(self, uri: str) -> None:
        await asyncio.to_thread(self._delete, uri)

    def _delete(self, uri: str) -> None:
        loc = self._locate_object(uri)
        self._regular_file_stat(loc.path, uri)
        try:
            self._roots.unlink(loc.path)
        except TrustflowError:
            raise
        except OSError as exc:
            raise _translate(exc, uri) from exc

    # ---- helpers ---------------------------------------------------------------------------

    def _locate_object(self, uri: str) -> Location:
        """Locate a URI naming one object (not a directory prefix, not a temporary file)."""
        if isinstance(uri, str) and uri.endswith("/"):
            raise InvalidInput(f"{uri!r} names a directory, not an object")
        loc = parse(uri)
        if is_temp_name(posixpath.basename(loc.path)):
            raise InvalidInput(f"{uri!r}: names like '.*{TEMP_SUFFIX}' are reserved")
        return loc

    def _regular_file_stat(self, path: str, uri: str) -> os.stat_result:
        try:
            st = self._roots.stat(path)
        except TrustflowError:
            raise
        except OSError as exc:
            raise _translate(exc, uri) from exc
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"{uri!r} is not a regular file")
        return st


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


def _commit(begun: AtomicWrite, uri: str) -> None:
    """fsync the temporary file, rename it over the destination and fsync the directory."""
    try:
        begun.commit()
    except TrustflowError:
        raise
    except OSError as exc:
        raise _translate(exc, uri) from exc


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
