"""Small helpers for validating the plain settings mappings handed to ``from_settings``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trustflow_core.errors import InvalidInput


def check_keys(what: str, settings: Mapping[str, Any], allowed: set[str]) -> None:
    """Raise :class:`InvalidInput` naming every key of ``settings`` not in ``allowed``."""
    if not isinstance(settings, Mapping):
        raise InvalidInput(f"{what} settings must be a mapping, got {type(settings).__name__}")
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise InvalidInput(f"{what} got unknown setting(s) {unknown}; known: {sorted(allowed)}")


def optional_path(what: str, settings: Mapping[str, Any], key: str) -> Path | None:
    """``settings[key]`` as a user-expanded path, None when absent."""
    value = settings.get(key)
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value):
        raise InvalidInput(f"{what} setting {key!r} must be a file path, got {value!r}")
    return Path(value).expanduser()
