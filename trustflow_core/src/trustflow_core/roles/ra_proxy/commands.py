"""``trustflow ra-proxy``: the RA Proxy server (upstream flags accepted in both spellings)."""

from __future__ import annotations

from pathlib import Path

import click

from .._options import log_options


@click.command("ra-proxy")
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
@click.option("--port", type=click.IntRange(0, 65535), default=8010, show_default=True)
@log_options
def ra_proxy(
    cert_path: Path,
    plat: str | None,
    upstream_sim: bool,
    settings_file: str | None,
    host: str,
    port: int,
    log_path: str | None,
    log_level: str,
    log_levels_for: tuple[tuple[str, str], ...],
) -> None:
    """Serve POST /RaProxy/GetRaCert: the app certificate plus an attestation report binding
    SHA-256(cert || "." || nonce), and GET /health."""
    from ...fileio import load_mapping
    from ...manager import get_plugin_manager
    from .._server import AppServer, run, setup_logging
    from .app import create_app
    from .settings import RaProxySettings

    setup_logging(log_path, log_level, log_levels_for)
    settings = RaProxySettings(
        cert_path=cert_path,
        plat=plat,
        upstream_sim=upstream_sim,
        attester_settings=load_mapping(settings_file, "settings file") if settings_file else {},
        host=host,
        port=port,
    )
    app = create_app(settings, get_plugin_manager())
    run(lambda: AppServer("ra-proxy", app, host, port))


COMMANDS: list[click.Command] = [ra_proxy]
