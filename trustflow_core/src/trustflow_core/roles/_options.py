"""Command-line options shared by the role commands (cheap to import: click only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def log_options(command: F) -> F:
    """Add ``--log-path/--log_path`` and ``--log-level/--log_level`` (upstream spellings too)."""
    command = click.option(
        "--log-level",
        "--log_level",
        "log_level",
        type=click.Choice(LOG_LEVELS),
        default="info",
        show_default=True,
    )(command)
    return click.option(
        "--log-path", "--log_path", "log_path", default=None, help="Log file (else stderr)."
    )(command)
