"""``trustflow data-capsule-proxy``: the Data Capsule Proxy server (upstream flags accepted in
both spellings, plus confinement and key-exchange options)."""

from __future__ import annotations

from pathlib import Path

import click

from .._options import log_options


@click.command("data-capsule-proxy")
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
@click.option("--port", type=click.IntRange(0, 65535), default=8010, show_default=True)
@click.option(
    "--cm-endpoint",
    "--cm_endpoint",
    "cm_endpoint",
    default="127.0.0.1:8888",
    show_default=True,
    help="Default Capsule Manager endpoint (host:port).",
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
    required=True,
    type=click.Path(file_okay=False, exists=True, resolve_path=False),
    help="Directory request paths must resolve into (repeatable, required).",
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
    "object_store_backends",
    multiple=True,
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
@log_options
def data_capsule_proxy(
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
    object_store_backends: tuple[str, ...],
    result_format: str,
    cm_init_config: Path | None,
    log_path: str | None,
    log_level: str,
    log_levels_for: tuple[tuple[str, str], ...],
) -> None:
    """Serve POST /DataCapsuleProxy/GetInputData and /DataCapsuleProxy/PutResultData (decrypt
    inputs with released keys; encrypt, store and register results) and GET /health.
    A start-up failure (bad settings, TLS asset refused) is one line on stderr and exit 1."""
    import os

    from ...errors import TrustflowError
    from ...fileio import load_mapping
    from ...manager import get_plugin_manager
    from .._server import AppServer, run, setup_logging
    from .app import create_app
    from .cm_init import load_cm_init
    from .settings import OBJECT_STORES, DataCapsuleProxySettings

    setup_logging(log_path, log_level, log_levels_for)
    try:
        cm_init = load_cm_init(cm_init_config) if cm_init_config else None
        settings = DataCapsuleProxySettings(
            cert_path=cert_path,
            private_key_path=private_key_path,
            allowed_roots=tuple(os.path.abspath(r) for r in allowed_roots),
            plat=plat,
            key_exchange=key_exchange,
            key_exchange_settings=(
                load_mapping(key_exchange_settings, "key exchange settings")
                if key_exchange_settings
                else {}
            ),
            cm_endpoint=cm_endpoint,
            allowed_cm_endpoints=allowed_cm_endpoints,
            allowed_object_store_endpoints=allowed_object_store_endpoints,
            local_storage=local_storage,
            object_stores={**OBJECT_STORES, **_pairs(object_store_backends)},
            result_format=result_format,
            host=host,
            port=port,
            cm_init=cm_init,
        )
        app = create_app(settings, get_plugin_manager())
        run(lambda: AppServer("data-capsule-proxy", app, host, port))
    except TrustflowError as exc:  # one line, whatever the cause's message holds
        raise click.ClickException(f"data-capsule-proxy: {' '.join(str(exc).split())}") from None
    except OSError as exc:
        raise click.ClickException(f"data-capsule-proxy: {exc.strerror or exc}") from None


def _pairs(values: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for value in values:
        kind, sep, name = value.partition("=")
        if not sep or not kind or not name:
            raise click.BadParameter(
                f"expected TYPE=NAME, got {value!r}", param_hint="--object-store-backend"
            )
        pairs[kind.strip().lower()] = name.strip()
    return pairs


COMMANDS: list[click.Command] = [data_capsule_proxy]
