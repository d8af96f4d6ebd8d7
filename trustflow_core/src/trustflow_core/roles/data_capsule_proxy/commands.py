"""``trustflow data-capsule-proxy``: the Data Capsule Proxy server (upstream flags accepted in
both spellings, plus confinement and key-exchange options)."""

from __future__ import annotations

from pathlib import Path

import click

from .._options import (
    DEFAULT_PORTS,
    admin_options,
    check_config_option,
    config_option,
    key_value_pairs,
    log_options,
    role_command,
)


@role_command
@click.command("data-capsule-proxy")
@config_option(
    help="YAML config: any option below by its name (cert_path, private_key_path, plat, host, "
    "port, cm_endpoint, allowed_cm_endpoints, key_exchange, allowed_roots, "
    "allowed_object_store_endpoints, local_storage, result_format, cm_init_config, log_level, "
    "log_path; lists as YAML lists) plus key_exchange_settings (a mapping), object_stores "
    "(TYPE: NAME), max_body_bytes, key_timeout, chunk_size. Relative paths are relative to "
    "the file."
)
@click.option(
    "--cert-path",
    "--cert_path",
    "cert_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="app.crt",
    show_default=True,
    help="App certificate PEM (party id, RA binding).",
)
@click.option(
    "--private-key-path",
    "--private_key_path",
    "private_key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="app.key",
    show_default=True,
    help="App private key PEM.",
)
@click.option(
    "--plat",
    default=None,
    help="Attester for CM requests (see 'trustflow plugins'); none = no report (what upstream's "
    "simulation mode sends). Default: the development default attester (tee_sim's).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORTS["data-capsule-proxy"],
    show_default=True,
)
@click.option(
    "--cm-endpoint",
    "--cm_endpoint",
    "cm_endpoint",
    default="127.0.0.1:8888",
    show_default=True,
    help="Default Capsule Manager endpoint (host:port), or several replicas of it "
    "(host:port,host:port,...): key requests fail over between them.",
)
@click.option(
    "--allowed-cm-endpoint",
    "allowed_cm_endpoints",
    multiple=True,
    help="Another CM endpoint a request may name (repeatable).",
)
@click.option(
    "--key-exchange",
    default="capsule_manager",
    show_default=True,
    help="Key-exchange backend (see 'trustflow plugins'), e.g. capsule_manager or static.",
)
@click.option(
    "--key-exchange-settings",
    "key_exchange_settings",
    default=None,
    help="YAML/JSON file with the key-exchange backend's settings.",
)
@click.option(
    "--allowed-root",
    "allowed_roots",
    multiple=True,
    type=click.Path(file_okay=False, exists=True, resolve_path=False),
    help="Directory request paths must resolve into (repeatable; at least one, here or in the "
    "config file).",
)
@click.option(
    "--allowed-object-store-endpoint",
    "--s3-endpoint",
    "allowed_object_store_endpoints",
    multiple=True,
    help="Object-store endpoint (host[:port]) a request's s3_config may name (repeatable; "
    "none = object storage refused).",
)
@click.option(
    "--local-storage",
    default="local",
    show_default=True,
    help="Storage backend serving the requests' local paths (see 'trustflow plugins'); it must "
    "serve file:// URIs.",
)
@click.option(
    "--object-store-backend",
    "object_stores",
    multiple=True,
    callback=key_value_pairs,
    metavar="TYPE=NAME",
    help="Storage backend serving a request's s3_config of TYPE (oss, minio; defaults "
    "oss=oss, minio=s3); NAME 'none' refuses that type (repeatable).",
)
@click.option(
    "--result-format",
    type=click.Choice(["v1", "v2"]),
    default="v1",
    show_default=True,
    help="v1 = upstream data capsule; v2 = authenticated (block order, truncation, header).",
)
@click.option(
    "--cm-init-config",
    "--cm_init_config",
    "cm_init_config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="cm_init.yaml: fetch the communication-group TLS asset from the CM before serving "
    "(written to its tls_cert_path / tls_key_path, re-fetched before expiry).",
)
@check_config_option
@admin_options
@log_options
@click.pass_context
def data_capsule_proxy(
    ctx: click.Context,
    config_file: Path | None,
    cert_path: Path,
    private_key_path: Path,
    plat: str | None,
    host: str,
    port: int,
    cm_endpoint: str,
    allowed_cm_endpoints: tuple[str, ...],
    key_exchange: str,
    key_exchange_settings: str | None,
    allowed_roots: tuple[str, ...],
    allowed_object_store_endpoints: tuple[str, ...],
    local_storage: str,
    object_stores: dict[str, str],
    result_format: str,
    cm_init_config: Path | None,
    check_config: bool,
    admin_host: str,
    admin_port: int | None,
    log_path: str | None,
    log_level: str,
    log_levels_for: tuple[tuple[str, str], ...],
    log_format: str,
) -> None:
    """Serve POST /DataCapsuleProxy/GetInputData and /DataCapsuleProxy/PutResultData (decrypt
    inputs with released keys; encrypt, store and register results) and GET /health.
    A start-up failure (bad settings, TLS asset refused) is one line on stderr and exit 1."""

    from ...errors import TrustflowError
    from ...fileio import load_mapping
    from ...settings_schema import ConfigError, Node
    from .._admin import create_admin_app, with_admin
    from .._logging import setup_logging
    from .._options import command_plugin_manager, config_ok, merge_config
    from .._server import AppServer, run
    from .app import ROLE, create_app, readiness_checks
    from .settings import CONFIG_KEYS, check_settings, settings_from

    try:
        values = merge_config(ctx, config_file, CONFIG_KEYS)
        if key_exchange_settings:
            values["key_exchange_settings"] = Node(
                load_mapping(key_exchange_settings, "key exchange settings"),
                key_exchange_settings,
            )
        settings = settings_from(values)
        host, port = settings.host, settings.port
        pm = command_plugin_manager()
        check_settings(settings, pm, values.get("key_exchange_settings"))
        if check_config:
            config_ok()
            return
        setup_logging(
            values["log_path"], values["log_level"], log_levels_for, values["log_format"], ROLE
        )
        app = create_app(settings, pm)
        admin = create_admin_app(ROLE, pm, readiness_checks(settings))
        run(lambda: with_admin(AppServer(ROLE, app, host, port), admin, admin_host, admin_port))
    except ConfigError:
        raise
    except TrustflowError as exc:  # one line, whatever the cause's message holds
        raise click.ClickException(f"data-capsule-proxy: {' '.join(str(exc).split())}") from None
    except OSError as exc:
        raise click.ClickException(f"data-capsule-proxy: {exc.strerror or exc}") from None


COMMANDS: list[click.Command] = [data_capsule_proxy]
