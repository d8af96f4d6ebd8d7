"""Hook implementations only; importing this module is cheap."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trustflow_core import hookimpl

if TYPE_CHECKING:
    from trustflow_core.hookspecs import Register
    from trustflow_core.storage import Storage


@hookimpl
def trustflow_register_storages(register: Register[type[Storage]]) -> None:
    from .backend import MemoryStorage

    register(MemoryStorage)
