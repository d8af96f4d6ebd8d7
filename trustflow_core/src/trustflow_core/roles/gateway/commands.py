"""``trustflow gateway``: the reverse proxy with the JWE filter (the Trustflow Envoy role)."""

from __future__ import annotations

from pathlib import Path

import click

from .._options import (
    admin_options,
    check_config_option,
    config_option,
    key_value_pairs,
    log_options,
    role_command,
)


@role_command
@click.command("gateway")
@config_option(required=True, help="Native gateway YAML or an Envoy static config (envoy.yml).")
@click.option(
    "--map-address",
    multiple=True,
    callback=key_value_pairs,
    metavar="FROM=TO",
    help="Rewrite an address of the config, e.g. ra-proxy:50002=127.0.0.1:50002 or "
    "0.0.0.0=127.0.0.1 (repeatable).",
)
@click.option(
    "--map-path",
    multiple=True,
    callback=key_value_pairs,
    metavar="OLD=NEW",
    help="Rewrite a file path prefix of the config, e.g. /shared/deploy=./deploy (repeatable).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes sharing the listening ports (SO_REUSEPORT), like Envoy's worker threads; "
    "e.g. the number of cores.",
)
@click.option(
    "--tls-reload-interval",
    type=click.FloatRange(0.05, 3600),
    default=1.0,
    show_default=True,
    help="Seconds between checks of the mTLS asset files (tls.crt / tls.key); changed files "
    "are reloaded without closing a listener.",
)
@click.option(
    "--envelope-channel",
    default=None,
    help="Envelope channel backend of the JWE filters (see 'trustflow plugins'). "
    "Default: the config's envelope_channel, else jwe.",
)
@click.option(
    "--transport-channel",
    default=None,
    help="Transport channel backend of TLS listeners and clusters. "
    "Default: the config's transport_channel, else mtls.",
)
@check_config_option
@admin_options
@log_options
def gateway(
    config_file: Path,
    map_address: dict[str, str],
    map_path: dict[str, str],
    workers: int,
    tls_reload_interval: float,
    envelope_channel: str | None,
    transport_channel: str | None,
    check_config: bool,
    admin_host: str,
    admin_port: int | None,
    log_path: str | None,
    log_level: str,
    log_levels_for: tuple[tuple[str, str], ...],
    log_format: str,
) -> None:
    """Serve the listeners of CONFIG: prefix routes to clusters, the JWE filter (opens client
    envelopes, seals app replies), TCP proxying, mTLS ingress listeners and egress clusters
    (group TLS asset, mtls channel); GET /healthz on HTTP listeners; metrics, probes and
    /-/plugins on the admin listener (--admin-port).
    A missing, tampered or mismatched TLS asset is refused before anything listens."""
    import dataclasses
    import functools

    from .._logging import setup_logging
    from .._options import command_plugin_manager, config_ok
    from .._server import relay_process, run
    from .config import load_config
    from .preflight import check
    from .server import gateway_service, shared_replay_caches

    config = load_config(
        config_file,
        address_map=map_address,
        path_map={old: str(Path(new).resolve()) for old, new in map_path.items()},
    )
    config = dataclasses.replace(
        config,
        envelope_channel=envelope_channel or config.envelope_channel,
        transport_channel=transport_channel or config.transport_channel,
    )

    check(config, command_plugin_manager())  # one clear error before any worker starts
    if check_config:
        config_ok()
        return
    setup_logging(log_path, log_level, log_levels_for, log_format, "gateway")

    shared = shared_replay_caches(config) if workers > 1 else None
    service = functools.partial(
        gateway_service, config, tls_reload_interval, admin_host, admin_port, shared
    )
    run(service, workers=workers, prepare=relay_process)  # uvloop, malloc settings


COMMANDS: list[click.Command] = [gateway]
