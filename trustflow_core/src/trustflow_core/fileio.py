"""Files: atomic writing, and reading a JSON/YAML mapping (settings, policies, reports).

Atomic writing: a temporary file in the destination directory, fsync, rename. Readers see the
old file or the complete new one, never a partial one; on error the temporary file is removed
and the destination is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from .errors import InvalidInput


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` atomically when the block exits cleanly.

    The file is created with permissions ``mode`` (e.g. ``0o600`` for key material) before
    any byte is written.
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as tmp:
            yield tmp
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``."""
    with atomic_writer(path, mode=mode) as out:
        out.write(data)


def load_mapping(path: str, what: str, *, yaml_ok: bool = True) -> Mapping[str, Any]:
    """A JSON (or, with ``yaml_ok``, YAML) file holding a mapping ("-" = stdin): a settings
    file, a policy, a report. A file that cannot be read, does not parse or holds no mapping
    raises :class:`~trustflow_core.errors.InvalidInput` naming ``what`` and ``path``."""
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        if not yaml_ok:
            raise InvalidInput(f"{what} {path} is not JSON: {exc}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as yaml_exc:
            from .settings_schema import yaml_problem

            raise InvalidInput(
                f"{what} {path} is not YAML/JSON: {yaml_problem(yaml_exc)}"
            ) from yaml_exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{what} {path} must hold a mapping, not {type(data).__name__}")
    return data
