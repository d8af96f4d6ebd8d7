"""Command-line options shared by the role commands (cheap to import: click and the settings
reader only).

Every role command (``ra-proxy``, ``data-capsule-proxy``, ``gateway``, ``capsule-manager``)
takes the same things the same way:

* ``-c/--config FILE`` -- a YAML config file (:mod:`trustflow_core.settings_schema` reads it;
  a bad value is one ``config error: FILE: KEY.PATH: problem`` line and exit status 1);
* every option also from an environment variable ``TRUSTFLOW_<ROLE>_<OPTION>`` (role and option
  upper-cased, ``-`` as ``_``: ``TRUSTFLOW_RA_PROXY_PORT``), shown in ``--help``
  (:func:`role_command`); precedence: command line, then environment, then config file, then
  the default;
* ``--check-config`` -- validate the whole configuration and exit (:func:`check_config_option`);
* ``--log-level`` (a fixed choice), ``--log-path``, ``--log-level-for`` (:func:`log_options`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from ..settings_schema import Node, load_yaml_file
from ._logging import LOG_FORMATS

F = TypeVar("F", bound=Callable[..., object])
C = TypeVar("C", bound=click.Command)

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: Default listening ports, distinct per role: upstream's where it has one (the RA proxy's 8010,
#: the Capsule Manager's 8888); the upstream Data Capsule Proxy also defaults to 8010, so ours
#: takes 50003, where every upstream sample runs it. The gateway listens where its config says.
DEFAULT_PORTS = {"ra-proxy": 8010, "data-capsule-proxy": 50003, "capsule-manager": 8888}
ENV_PREFIX = "TRUSTFLOW"
CONFIG_OK = "configuration OK"


def env_prefix(command: str) -> str:
    """``TRUSTFLOW_<COMMAND>`` for a command name such as ``ra-proxy``."""
    return f"{ENV_PREFIX}_{command.upper().replace('-', '_')}"


def role_command(command: C) -> C:
    """Give every option of ``command`` its environment variable
    ``TRUSTFLOW_<COMMAND>_<OPTION>`` (``OPTION``: its first long name, ``--cert-path`` →
    ``CERT_PATH``; shown in ``--help``) and say so in the help epilog. ``--check-config`` is
    an action, not configuration: it has none. Apply on top of ``@click.command``."""
    prefix = env_prefix(command.name or "")
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in ("help", "check_config"):
            continue
        option = next(o for o in param.opts if o.startswith("--"))
        param.envvar = f"{prefix}_{option[2:].upper().replace('-', '_')}"
        param.show_envvar = True
    command.epilog = (
        f"Every option can also be set in the environment as {prefix}_<OPTION> (shown per "
        "option; a repeatable option takes a space-separated list, paths an os.pathsep one). "
        "The command line wins over the environment, which wins over the config file."
    )
    return command


def config_option(*, required: bool = False, help: str) -> Callable[[F], F]:
    """``-c/--config FILE`` (the YAML config file of the role)."""
    return click.option(
        "-c",
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        required=required,
        help=help,
    )


def check_config_option(command: F) -> F:
    """``--check-config``: the command validates its whole configuration, prints
    :data:`CONFIG_OK` and exits 0 (or the error and exit status 1), binding no port and
    contacting nothing."""
    return click.option(
        "--check-config",
        is_flag=True,
        help="Validate the whole configuration (files readable, keys parse, ports valid, "
        "backends build), print 'configuration OK' and exit 0, or the error and exit 1. "
        "Binds no port and contacts nothing (container health checks, CI).",
    )(command)


def config_ok() -> None:
    """What ``--check-config`` prints when everything is valid."""
    click.echo(CONFIG_OK)


def merge_config(
    ctx: click.Context,
    config_file: Path | None,
    keys: Mapping[str, Callable[[Node], Any]],
    *,
    relative_to_file: bool = True,
) -> dict[str, Any]:
    """The command's parameter values with the config file's filled in.

    ``keys`` maps each key the file may hold to how it is read (e.g. ``Node.port``); a key
    named like a parameter fills that parameter when it was left at its default (neither on
    the command line nor in the environment); a key that is no parameter (a backend settings
    section, say) is added. Every present key is validated, used or not; unknown keys are
    refused. Relative paths in the file are relative to its directory (``relative_to_file``)."""
    values = dict(ctx.params)
    if config_file is None:
        return values
    root = load_yaml_file(config_file, relative_to_file=relative_to_file).mapping(keys)
    for key, read in keys.items():
        node = root.get(key)
        if not node.present:
            continue
        value = read(node)
        if key not in ctx.params or ctx.get_parameter_source(key) in (
            ParameterSource.DEFAULT,
            ParameterSource.DEFAULT_MAP,
        ):
            values[key] = value
    return values


def key_value_pairs(
    _ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    """A click callback: repeatable ``KEY=VALUE`` options as a dict."""
    pairs = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key.strip() or not item.strip():
            raise click.BadParameter(f"expected {param.metavar or 'KEY=VALUE'}, got {value!r}")
        pairs[key.strip()] = item.strip()
    return pairs


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
    """Add ``--log-path/--log_path``, ``--log-level/--log_level`` (upstream spellings too; a fixed
    choice), ``--log-level-for LOGGER=LEVEL`` and ``--log-format text|json``; pass them to
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
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
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


#: How the config file's log keys are read (every role's file may hold them).
LOG_KEYS: Mapping[str, Callable[[Node], Any]] = {
    "log_path": lambda node: str(node.path()),
    "log_level": lambda node: node.choice(LOG_LEVELS),
    "log_format": lambda node: node.choice(LOG_FORMATS),
}
