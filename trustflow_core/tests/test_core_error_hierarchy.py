"""Every exception class of the core and of the installed plugins derives from
:class:`~trustflow_core.errors.TrustflowError`, so ``except TrustflowError`` (the CLI's one-line
errors, the proxies' error mapping) sees every error Trustflow raises on purpose."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from importlib import metadata
from types import ModuleType

from trustflow_core.errors import TrustflowError
from trustflow_core.manager import ENTRY_POINT_GROUP

#: classes outside the hierarchy on purpose, with the reason
EXEMPT = {
    # the storage kit's stand-in for a failure of the caller's own chunk source (not a Trustflow
    # error): a backend under test must let it through untranslated
    "trustflow_core.testing.storage.Boom",
    # the Data Capsule Proxy's cancellation signal, raised by the progress callback inside a
    # worker thread's transfer: no ``except TrustflowError`` on the way may turn it into an error
    "trustflow_core.roles.data_capsule_proxy.transfer._Stopped",
}


def _packages() -> list[ModuleType]:
    """trustflow_core and the top-level package of every installed plugin."""
    names = {"trustflow_core"}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        names.add(ep.value.split(":")[0].split(".")[0])
    return [importlib.import_module(name) for name in sorted(names)]


def _modules(package: ModuleType) -> list[ModuleType]:
    modules = [package]
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        if info.name.startswith("trustflow_core.proto."):  # generated protobuf code
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except ModuleNotFoundError as exc:  # a module of an extra this env does not install
            if exc.name is None or exc.name.startswith("trustflow"):
                raise
    return modules


def exceptions_outside(modules: list[ModuleType]) -> list[str]:
    """Dotted names of the exception classes defined in ``modules`` that are not
    :class:`TrustflowError`\\ s and not exempt."""
    found = []
    for module in modules:
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not issubclass(value, TrustflowError)
            ):
                dotted = f"{module.__name__}.{name}"
                if dotted not in EXEMPT:
                    found.append(dotted)
    return sorted(found)


def test_every_exception_class_is_a_trustflow_error() -> None:
    modules = [m for package in _packages() for m in _modules(package)]
    names = {m.__name__ for m in modules}
    # the scan reaches the roles, the CM's protocol pieces and the plugins
    assert {
        "trustflow_core.roles.gateway.http_proxy",
        "trustflow_core.roles.capsule_manager.migrations",
        "trustflow_core.roles.capsule_manager_protocol.errors",
        "trustflow_tee_sim.plugin",
    } <= names
    assert exceptions_outside(modules) == []


def test_the_scan_finds_an_exception_outside_the_hierarchy() -> None:
    stray = ModuleType("trustflow_core.stray")
    exec(
        "class Outside(RuntimeError):\n    pass\n\n\n"
        "from trustflow_core.errors import TrustflowError\n\n\n"
        "class Inside(TrustflowError, RuntimeError):\n    pass\n",
        stray.__dict__,
    )
    assert exceptions_outside([stray]) == ["trustflow_core.stray.Outside"]
