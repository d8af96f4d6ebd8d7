"""Command-line entry point of the Capsule Manager server (cheap to import):
``trustflow capsule-manager``. The owner CLI, ``trustflow cms``, is the client side's
(:mod:`trustflow_core.roles.capsule_manager_client.commands`)."""

from __future__ import annotations

from pathlib import Path

import click

from .._options import (
    DEFAULT_PORTS,
    admin_options,
    check_config_option,
    log_options,
    role_command,
)


def _peers(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """A click callback: every ``--join`` value is ``HOST:PORT``."""
    for value in values:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return values


@role_command
@click.command("capsule-manager")
@click.option(
    "-c",
    "--config",
    "--config-file",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML settings (see docs/capsule-manager.md); the options below override it.",
)
@click.option("--host", help="Listen address (default 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help=f"gRPC port (default {DEFAULT_PORTS['capsule-manager']}; 0: any).",
)
@click.option("--plat", help="TEE backend for the CM's own report: sim, tdx, csv, ... or none.")
@click.option(
    "--envelope-channel",
    help="Envelope channel backend of the JWE/JWS envelopes (default jwe; 'trustflow plugins').",
)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--storage-url", help="SQLAlchemy URL (default sqlite:///<data dir>/cm.db).")
@click.option("--private-key-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cert-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--storage-key-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--allow-upstream-sim/--no-allow-upstream-sim",
    default=None,
    help="Accept app requests that carry NO attestation report (upstream sim clients).",
)
@click.option(
    "--join",
    "join",
    multiple=True,
    metavar="HOST:PORT",
    callback=_peers,
    help="Replica mode (docs/replicas.md): obtain the CM identity from this running replica "
    "by attesting to it (repeatable: the first that answers). Needs a shared PostgreSQL or "
    "MySQL --storage-url; a replica with its key files or without peers uses or founds its own.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes sharing the port (they share keys and database).",
)
@check_config_option
@admin_options
@log_options
def capsule_manager(
    config_file: Path | None,
    host: str | None,
    port: int | None,
    plat: str | None,
    envelope_channel: str | None,
    data_dir: Path | None,
    storage_url: str | None,
    private_key_file: Path | None,
    cert_file: Path | None,
    storage_key_file: Path | None,
    allow_upstream_sim: bool | None,
    join: tuple[str, ...],
    workers: int,
    check_config: bool,
    admin_host: str,
    admin_port: int | None,
    log_path: str | None,
    log_level: str,
    log_levels_for: tuple[tuple[str, str], ...],
    log_format: str,
) -> None:
    """Run the Capsule Manager (gRPC service secretflowapis.v2.sdc.capsule_manager).

    Replicas: several Capsule Managers on one PostgreSQL or MySQL database share one identity.
    The first founds it (no key files, no --join); every other one obtains it with --join
    HOST:PORT by attesting to a running replica (docs/replicas.md)."""
    import functools

    from .._logging import setup_logging
    from .._options import command_plugin_manager, config_ok
    from .._server import run, use_uvloop
    from .server import ROLE, capsule_manager_service
    from .settings import check_settings, load_settings

    settings = load_settings(
        config_file,
        host=host,
        port=port,
        plat=plat,
        envelope_channel=envelope_channel,
        data_dir=data_dir,
        storage_url=storage_url,
        private_key_file=private_key_file,
        cert_file=cert_file,
        storage_key_file=storage_key_file,
        allow_upstream_sim=allow_upstream_sim,
        join=join or None,
    )
    check_settings(settings, command_plugin_manager())
    if check_config:
        config_ok()
        return
    setup_logging(log_path, log_level, log_levels_for, log_format, ROLE)
    service = functools.partial(capsule_manager_service, settings, admin_host, admin_port)
    run(service, workers=workers, prepare=use_uvloop)  # uvloop: docs/capsule-manager.md


COMMANDS: list[click.Command] = [capsule_manager]
