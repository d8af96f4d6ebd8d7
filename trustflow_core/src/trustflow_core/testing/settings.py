"""A backend's settings errors, as a role reports them: for a plugin's tests (no pytest needed).

A role reads a backend's settings from a section of its config file and builds the backend
through :meth:`trustflow_core.settings_schema.Node.build`, so an error names the file and the
key path. :func:`settings_error` does the same with a settings section written to a file and
returns the message, for the test to check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..settings_schema import ConfigError, load_yaml_file

SECTION = "attester"


def settings_error(
    directory: Path, from_settings: Callable[[Mapping[str, Any]], object], yaml_text: str
) -> str:
    """The message of the :class:`ConfigError` ``from_settings`` raises for ``yaml_text`` (the
    backend's settings) held in the ``attester`` section of ``directory/role.yaml``; the message
    starts with ``<file>: attester.<key path>: ``. Fails when no such error is raised."""
    config = directory / "role.yaml"
    indented = "".join(f"  {line}\n" for line in yaml_text.splitlines())
    config.write_text(f"{SECTION}:\n{indented}")
    try:
        load_yaml_file(config).get(SECTION).build(from_settings)
    except ConfigError as exc:
        return str(exc)
    raise AssertionError(f"no config error for settings {yaml_text!r}")
