"""Building the plugin manager.

Environment switches (comma-separated entry-point names):

* ``TRUSTFLOW_DISABLE_PLUGINS`` — never load these plugins.
* ``TRUSTFLOW_LOAD_PLUGINS`` — load only these (plus the core itself).
* ``TRUSTFLOW_DISABLE_PLUGIN_AUTOLOAD`` — load no entry points at all.
* ``TRUSTFLOW_TRACE_PLUGINS`` — log every hook call at DEBUG level.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from importlib import metadata

import pluggy

from . import hookspecs
from .errors import PluginError

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "trustflow"
CORE_PLUGIN_NAME = "core"
#: The core's own plugin (its ``core`` entry point): the built-in backends and every command,
#: the roles' included. It is loaded by name, as entry points are, so that the plugin machinery
#: never imports the roles (an import contract in the root pyproject.toml holds it to that).
CORE_PLUGIN_MODULE = "trustflow_core.builtin"


@dataclass(frozen=True)
class PluginSource:
    """Where a loaded plugin came from."""

    dist: str
    version: str


@dataclass(frozen=True)
class LoadFailure:
    """An entry point that could not be loaded (recorded only by lenient loading)."""

    name: str
    dist: str
    version: str
    error: str


class TrustflowPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers where each plugin came from and, with lenient
    loading, which entry points failed."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.sources: dict[str, PluginSource] = {}
        self.load_failures: list[LoadFailure] = []


def env_list(variable: str) -> list[str]:
    """Split a comma-separated environment variable into names."""
    return [n.strip() for n in os.environ.get(variable, "").split(",") if n.strip()]


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def get_plugin_manager(
    *, load_entrypoints: bool = True, lenient: bool = False
) -> TrustflowPluginManager:
    """Return a new plugin manager with the core's hookspecs and built-in plugin registered.

    With ``load_entrypoints`` the ``trustflow`` entry points are loaded, honouring the
    environment switches. A plugin that fails to import raises :class:`PluginError`, unless
    ``lenient`` is set (for ``trustflow plugins``): then failures are kept in
    ``pm.load_failures``.
    """
    pm = TrustflowPluginManager()
    pm.add_hookspecs(hookspecs)
    pm.register(importlib.import_module(CORE_PLUGIN_MODULE), name=CORE_PLUGIN_NAME)
    pm.sources[CORE_PLUGIN_NAME] = _source_of_distribution("trustflow-core")
    if load_entrypoints and not os.environ.get("TRUSTFLOW_DISABLE_PLUGIN_AUTOLOAD"):
        blocked = set(env_list("TRUSTFLOW_DISABLE_PLUGINS"))
        only = set(env_list("TRUSTFLOW_LOAD_PLUGINS"))
        eps = {ep.name: ep for ep in _entry_points() if ep.name != CORE_PLUGIN_NAME}
        missing = sorted(only - set(eps))
        if missing:
            raise PluginError(
                f"TRUSTFLOW_LOAD_PLUGINS names plugin(s) {missing} that are not installed; "
                f"installed: {sorted(eps)}"
            )
        for name, ep in eps.items():
            if name in blocked or (only and name not in only):
                pm.set_blocked(name)
                continue
            _load(pm, ep, lenient)
    if os.environ.get("TRUSTFLOW_TRACE_PLUGINS"):
        pm.trace.root.setwriter(log.debug)
        pm.enable_tracing()
    pm.check_pending()
    return pm


def _source_of_distribution(name: str) -> PluginSource:
    try:
        return PluginSource(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        return PluginSource(name, "unknown")


def _load(pm: TrustflowPluginManager, ep: metadata.EntryPoint, lenient: bool) -> None:
    dist = ep.dist
    source = PluginSource(dist.metadata["Name"], dist.version) if dist else PluginSource("?", "?")
    try:
        pm.register(ep.load(), name=ep.name)
        pm.sources[ep.name] = source
    except Exception as exc:
        message = f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
        if not lenient:
            raise PluginError(message) from exc
        pm.load_failures.append(LoadFailure(ep.name, source.dist, source.version, message))
