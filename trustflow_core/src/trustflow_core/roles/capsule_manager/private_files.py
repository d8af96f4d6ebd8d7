"""The Capsule Manager's files are private to the user it runs as: the data directory 0700;
the key files and the SQLite database with its companions (``-wal``, ``-shm``, ``-journal``,
the writer lock) 0600.

Created that way (the database file is created 0600 before SQLite opens it, and SQLite gives
its ``-wal``/``-shm`` files the database's mode), and tightened on every start when an existing
one allows more, with a warning naming the file and both modes. Bits are only ever removed. A
file the OS does not let us change (a read-only mount of a key) is reported and left as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)
DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal", ".writer-lock")


def tighten(path: Path, mode: int) -> None:
    """Remove from ``path``'s permission bits every bit ``mode`` lacks; log what changed.
    A path that does not exist is skipped."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    wanted = current & mode
    if wanted == current:
        return
    try:
        os.chmod(path, wanted)
    except OSError as exc:
        log.warning(
            "%s has mode %04o and cannot be made %04o: %s",
            path,
            current,
            wanted,
            exc.strerror or exc,
        )
        return
    log.warning("tightened %s from mode %04o to %04o", path, current, wanted)


def secure(data_dir: Path, key_files: Iterable[Path], database: Path | None) -> None:
    """Create ``data_dir`` (0700) and, when given, the SQLite ``database`` file (0600); tighten
    them, the database's companions and ``key_files`` to those modes."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    tighten(data_dir, DIR_MODE)
    for key_file in key_files:
        tighten(key_file, FILE_MODE)
    if database is None:
        return
    with contextlib.suppress(OSError):  # SQLite reports a database it cannot open
        os.close(os.open(database, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
    for suffix in ("", *SQLITE_COMPANIONS):
        tighten(database.with_name(database.name + suffix), FILE_MODE)
