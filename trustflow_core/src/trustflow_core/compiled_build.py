"""Whether modules run compiled: the check behind each compiled list's ``build()`` (the
gateway's request path in ``roles/gateway/compiled.py``, a plugin's own, e.g. the ``jwe``
channel's). A module compiled by mypyc is a C extension beside its source, imported in its
place. docs/packaging.md#the-compiled-gateway
"""

from __future__ import annotations

import importlib
import importlib.machinery
from collections.abc import Iterable


def is_compiled(module: str) -> bool:
    """Whether ``module`` was imported from a C extension."""
    origin = importlib.import_module(module).__file__ or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def build_of(modules: Iterable[str]) -> str:
    """``"compiled"`` when every one of ``modules`` runs compiled, ``"interpreted"`` when none
    does, else ``"mixed"`` (a stale extension beside newer sources, say)."""
    compiled = [is_compiled(module) for module in modules]
    if all(compiled):
        return "compiled"
    return "mixed" if any(compiled) else "interpreted"
