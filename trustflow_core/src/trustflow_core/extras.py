"""The optional stacks of trustflow-core and the one-line hint when one is missing.

The core itself needs only what the contracts, the plugin machinery, the capsule format and
the local commands (``attest``, ``util``, ``plugins``) use. Each role's stack is an extra of
the ``trustflow-core`` distribution (see its pyproject.toml); this table names, per extra, the
top-level modules a role needs from it, so that a command can say exactly what to install
instead of failing with a traceback at its first import.
"""

from __future__ import annotations

import importlib.util

#: extra name -> modules it provides that the roles import (keep in step with pyproject.toml)
EXTRAS: dict[str, tuple[str, ...]] = {
    "capsule-manager": (
        "grpc",
        "grpc_health",
        "google.protobuf",
        "sqlalchemy",
        "celpy",
        "aiohttp",
        "prometheus_client",
        "jwcrypto",
        "trustflow_channel_jwe",
    ),
    "proxy": (
        "aiohttp",
        "multidict",
        "httptools",
        "google.protobuf",
        "prometheus_client",
        "trustflow_channel_jwe",
    ),
    "data-capsule-proxy": (
        "aiohttp",
        "grpc",
        "google.protobuf",
        "prometheus_client",
        "trustflow_channel_jwe",
    ),
    "all": (
        "grpc",
        "grpc_health",
        "prometheus_client",
        "google.protobuf",
        "sqlalchemy",
        "celpy",
        "aiohttp",
        "multidict",
        "httptools",
        "trustflow_channel_jwe",
        "trustflow_channel_mtls",
        "trustflow_tee_sim",
        "trustflow_storage_local",
    ),
}


def install_command(extra: str) -> str:
    """The ``pip install`` that provides ``extra``."""
    return f"pip install 'trustflow-core[{extra}]'"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a missing parent package of a dotted name
        return False


def missing_extra(extra: str, what: str, modules: tuple[str, ...] | None = None) -> str | None:
    """None when every module of ``extra`` (or only ``modules``, a part of it) is importable,
    else one line: ``what`` needs the missing modules, and the ``pip install`` to run. Never
    raises."""
    missing = [m for m in (modules or EXTRAS[extra]) if not _importable(m)]
    if not missing:
        return None
    return f"{what} needs {', '.join(missing)}: {install_command(extra)}"
