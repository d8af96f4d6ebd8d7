"""Command-line options shared by the role commands (cheap to import: click only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from ._logging import LOG_FORMATS

F = TypeVar("F", bound=Callable[..., object])

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _logger_levels(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        name, sep, level = value.partition("=")
        if not sep or not name or level.lower() not in LOG_LEVELS:
            raise click.BadParameter(f"{value!r}: expected LOGGER=LEVEL, LEVEL one of {LOG_LEVELS}")
        pairs.append((name, level.lower()))
    return tuple(pairs)


def log_options(command: F) -> F:
    """Add ``--log-path/--log_path``, ``--log-level/--log_level`` (upstream spellings too),
    ``--log-level-for LOGGER=LEVEL`` and ``--log-format text|json``; pass them to
    :func:`roles._logging.setup_logging`.

    ``--log-level`` sets the project's loggers only; third-party libraries (grpc, SQLAlchemy,
    the CEL library, aiohttp, ...) stay at WARNING unless ``--log-level-for`` names them."""
    command = click.option(
        "--log-level-for",
        "log_levels_for",
        multiple=True,
        callback=_logger_levels,
        metavar="LOGGER=LEVEL",
        help="Level of one logger, e.g. a library's (celpy=debug); repeatable.",
    )(command)
    command = click.option(
        "--log-level",
        "--log_level",
        "log_level",
        type=click.Choice(LOG_LEVELS),
        default="info",
        show_default=True,
        help="Level of the project's loggers (libraries stay at warning).",
    )(command)
    command = click.option(
        "--log-path", "--log_path", "log_path", default=None, help="Log file (else stderr)."
    )(command)
    return click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS),
        default="text",
        show_default=True,
        help="Log lines as text or as JSON objects, one per line (docs/observability.md).",
    )(command)


def admin_options(command: F) -> F:
    """Add ``--admin-port`` (default: no admin listener) and ``--admin-host`` (default
    127.0.0.1): the listener of ``/metrics``, ``/-/healthz``, ``/-/readyz`` and ``/-/plugins``
    (:mod:`._admin`, docs/observability.md)."""
    command = click.option(
        "--admin-host",
        default="127.0.0.1",
        show_default=True,
        help="Address of the admin listener (keep it on loopback or an internal network).",
    )(command)
    return click.option(
        "--admin-port",
        type=click.IntRange(0, 65535),
        default=None,
        help="Serve /metrics, /-/healthz, /-/readyz and /-/plugins on this port (0: any free "
        "port). Default: no admin listener.",
    )(command)
