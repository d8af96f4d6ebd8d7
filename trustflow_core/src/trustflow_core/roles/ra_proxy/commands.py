"""``trustflow ra-proxy``: the RA Proxy server (upstream flags accepted in both spellings)."""

from __future__ import annotations

from pathlib import Path

import click

from .._options import (
    DEFAULT_PORTS,
    admin_options,
    check_config_option,
    config_option,
    log_options,
    role_command,
)


@role_command
@click.command("ra-proxy")
@config_option(
    help="YAML config: any option below by its name (cert_path, ecdh_cert_path, plat, "
    "upstream_sim, host, port, log_level, log_path) plus attester (the attester backend's "
    "settings), max_body_bytes, report_timeout. Relative paths are relative to the file."
)
@click.option(
    "--cert-path",
    "--cert_path",
    "cert_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="app.crt",
    show_default=True,
    help="App certificate PEM: returned as `cert` and bound into every report.",
)
@click.option(
    "--ecdh-cert-path",
    "ecdh_cert_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Optional P-256 key-agreement certificate (the app's ECDH offer), served after the "
    "app certificate and bound into every report with it.",
)
@click.option(
    "--plat",
    default=None,
    help="Attester backend (see 'trustflow plugins'). Default: the development default "
    "attester (tee_sim's).",
)
@click.option(
    "--upstream-sim",
    is_flag=True,
    help="With a simulated attester: send no report at all, like the upstream sim proxy "
    "(default: the attester's verifiable report).",
)
@click.option(
    "--settings",
    "settings_file",
    default=None,
    help="YAML/JSON mapping of attester backend settings.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=DEFAULT_PORTS["ra-proxy"], show_default=True
)
@check_config_option
@admin_options
@log_options
@click.pass_context
def ra_proxy(
    ctx: click.Context,
    config_file: Path | None,
    cert_path: Path,
    ecdh_cert_path: Path | None,
    plat: str | None,
    upstream_sim: bool,
    settings_file: str | None,
    host: str,
    port: int,
    check_config: bool,
    admin_host: str,
    admin_port: int | None,
    log_path: str | None,
    log_level: str,
    log_levels_for: tuple[tuple[str, str], ...],
    log_format: str,
) -> None:
    """Serve POST /RaProxy/GetRaCert: the app certificate plus an attestation report binding
    SHA-256(cert || "." || nonce), and GET /health."""
    from ...fileio import load_mapping
    from ...settings_schema import Node
    from .._admin import create_admin_app, with_admin
    from .._logging import setup_logging
    from .._options import command_plugin_manager, config_ok, merge_config
    from .._server import AppServer, run
    from .app import ROLE, check_settings, create_app
    from .settings import CONFIG_KEYS, settings_from

    values = merge_config(ctx, config_file, CONFIG_KEYS)
    if settings_file:
        values["attester"] = Node(load_mapping(settings_file, "settings file"), settings_file)
    settings = settings_from(values)
    host, port = settings.host, settings.port
    pm = command_plugin_manager()
    check_settings(settings, pm, values.get("attester"))
    if check_config:
        config_ok()
        return
    setup_logging(
        values["log_path"], values["log_level"], log_levels_for, values["log_format"], ROLE
    )
    app, admin = create_app(settings, pm), create_admin_app(ROLE, pm)
    run(lambda: with_admin(AppServer(ROLE, app, host, port), admin, admin_host, admin_port))


COMMANDS: list[click.Command] = [ra_proxy]
