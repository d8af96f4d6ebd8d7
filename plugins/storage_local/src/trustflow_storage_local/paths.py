"""From URIs to local paths.

Accepted URIs are ``file:///abs/path`` (also ``file://localhost/abs/path``; percent-encoded
bytes are decoded) and plain absolute paths (taken literally). Paths with ``..`` segments are
refused outright, whatever they would resolve to. Confinement of the paths to the roots is
:mod:`trustflow_core.confined`'s: every component is opened beneath a root's directory
descriptor, and a symbolic link may point anywhere inside the roots but never outside them.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from urllib.parse import quote_from_bytes, unquote_to_bytes, urlsplit

from trustflow_core.errors import AccessDenied, InvalidInput

#: Suffix of the hidden temporary files of in-progress writes (``.<name>.<random>.tflow-tmp``).
TEMP_SUFFIX = ".tflow-tmp"


def is_temp_name(name: str) -> bool:
    """Whether a file name is that of an in-progress write's temporary file."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


@dataclass(frozen=True)
class Location:
    """A requested location: its lexically normalised absolute ``path`` (as the caller named
    it, for building URIs) and whether the caller used a ``file://`` URI."""

    path: str
    file_uri: bool

    def uri(self, path: str | None = None) -> str:
        """The URI of ``path`` (default: this location) in the caller's notation."""
        path = self.path if path is None else path
        return "file://" + quote_from_bytes(os.fsencode(path)) if self.file_uri else path

    def child(self, name: str) -> str:
        """The caller-notation path of an entry ``name`` below this location."""
        return posixpath.join(self.path, name)


def parse(uri: str) -> Location:
    """Return the :class:`Location` ``uri`` names. Raises :class:`InvalidInput` for
    other schemes, remote hosts, queries, fragments and relative paths, and
    :class:`AccessDenied` for ``..`` segments."""
    if not isinstance(uri, str) or not uri:
        raise InvalidInput(f"storage URI must be a non-empty string, got {uri!r}")
    if "\x00" in uri:
        raise InvalidInput(f"storage URI {uri!r} contains a NUL character")
    file_uri = not uri.startswith("/")
    if file_uri:
        scheme = urlsplit(uri).scheme
        if not scheme:
            raise InvalidInput(f"storage path {uri!r} is not absolute")
        if scheme != "file":
            raise InvalidInput(
                f"local storage serves file:// URIs and absolute paths, not {scheme}:// ({uri!r})"
            )
        if "?" in uri or "#" in uri:
            raise InvalidInput(f"file URI {uri!r} has a query or fragment; percent-encode ? and #")
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise InvalidInput(f"file URI {uri!r} names a remote host {parts.netloc!r}")
        path = os.fsdecode(unquote_to_bytes(parts.path))
        if "\x00" in path:
            raise InvalidInput(f"file URI {uri!r} encodes a NUL character")
    else:
        path = uri
    if not path.startswith("/"):
        raise InvalidInput(f"storage path {uri!r} is not absolute")
    if ".." in path.split("/"):
        raise AccessDenied(f"storage path {uri!r} contains a '..' segment")
    normal = posixpath.normpath(path)
    return Location("/" + normal.lstrip("/"), file_uri)
