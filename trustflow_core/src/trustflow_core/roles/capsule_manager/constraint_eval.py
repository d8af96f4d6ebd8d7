"""Evaluating one CEL constraint in this process, with the CEL interpreter: no fast path and no
budget (:mod:`.policy` adds both; :mod:`.constraint_sandbox`'s workers run this)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from .constraint_cost import parse

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4096)
def _compiled(expression: str) -> Any:
    import celpy

    tree = parse(expression).tree
    if tree is None:
        raise ValueError("does not compile")
    return celpy.Environment().program(tree)


def evaluate_cel(expression: str, r: Mapping[str, Any]) -> bool:
    """Evaluate with the CEL interpreter, in this process (no fast path, no budget)."""
    import celpy

    try:
        program = _compiled(expression)
        result = program.evaluate({"r": celpy.json_to_cel(dict(r))})
    except Exception as exc:  # any CEL failure makes the rule fail
        log.info("constraint %r failed: %s", expression, exc)
        return False
    return isinstance(result, celpy.celtypes.BoolType) and bool(result)
