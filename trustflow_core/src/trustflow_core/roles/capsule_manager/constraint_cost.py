"""The static cost of a CEL constraint: parse once, measure the tree, bound it.

:func:`parse` parses an expression with ``cel-python``'s parser (once per distinct expression;
cached) and measures its tree (:class:`Shape`). Two uses:

* :meth:`Shape.over_limit` -- at policy creation (``CreateDataPolicy``, ``AddDataRule``;
  :func:`.policy.check_rule`): a constraint over a limit is refused with ``INVALID_ARGUMENT``
  naming the rule, the constraint and the limit.
* :attr:`Shape.in_process` -- at evaluation: whether the expression is cheap enough by
  construction to evaluate in the server process. Everything else goes to the run-time budget
  (:mod:`.constraint_sandbox`): expressions with comprehensions, concatenation (``+`` on strings
  or lists copies), functions outside :data:`IN_PROCESS_FUNCTIONS` (``matches`` is a regular
  expression, so it can backtrack exponentially), or over a limit (stored before the limits existed,
  or written into the database directly).

The limits and why they are what they are: docs/capsule-manager.md, "Policy engine".
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

MAX_CHARS = 4096
MAX_NODES = 2000
MAX_DEPTH = 100
MAX_COMPREHENSION_DEPTH = 1
#: Logical operators (``&&``, ``||``, ``?:``) an expression may have and still be evaluated in
#: the server process: cel-python's evaluator is exponential in the length of such a chain when
#: its operands are errors (an undeclared name, a missing member).
MAX_IN_PROCESS_LOGIC = 16

COMPREHENSIONS = frozenset(["map", "filter", "all", "exists", "exists_one", "reduce"])
IN_PROCESS_FUNCTIONS = frozenset(
    [
        "size",
        "has",
        "contains",
        "startsWith",
        "endsWith",
        "int",
        "uint",
        "double",
        "string",
        "bool",
        "dyn",
        "type",
    ]
)
_CALLS = ("member_dot_arg", "ident_arg", "dot_ident_arg")
_LOGICAL = ("conditionaland", "conditionalor", "expr")  # expr with 3 children: ?:
_PARSE_LOCK = threading.Lock()  # the lark parser is not thread-safe


@dataclass(frozen=True)
class Shape:
    """What the parse tree of one expression costs."""

    nodes: int
    depth: int
    comprehension_depth: int
    functions: frozenset[str]
    concatenates: bool
    logical_operators: int = 0
    names: frozenset[str] = frozenset()

    def over_limit(self) -> tuple[str, int, int] | None:
        """``(what, value, limit)`` of the first limit this shape exceeds, or None."""
        for what, value, limit in (
            ("parse-tree nodes", self.nodes, MAX_NODES),
            ("parse-tree depth", self.depth, MAX_DEPTH),
            ("comprehension nesting depth", self.comprehension_depth, MAX_COMPREHENSION_DEPTH),
        ):
            if value > limit:
                return what, value, limit
        return None

    @property
    def in_process(self) -> bool:
        """Cheap by construction: no comprehension, no concatenation, only functions of
        :data:`IN_PROCESS_FUNCTIONS`, no name but ``r``, at most :data:`MAX_IN_PROCESS_LOGIC`
        logical operators, within every limit -- its cost is then small whatever the request
        holds."""
        return (
            self.comprehension_depth == 0
            and not self.concatenates
            and self.functions <= IN_PROCESS_FUNCTIONS
            and self.names <= {"r"}
            and self.logical_operators <= MAX_IN_PROCESS_LOGIC
            and self.over_limit() is None
        )


@dataclass(frozen=True)
class Parsed:
    """A parsed expression: the tree (None when it does not parse) and its shape."""

    tree: Any
    shape: Shape | None


@functools.lru_cache(maxsize=4096)
def parse(expression: str) -> Parsed:
    """Parse and measure ``expression`` (callers bound its length first)."""
    import celpy

    try:
        with _PARSE_LOCK:
            tree = celpy.Environment().compile(expression)
    except Exception:  # any parse failure: the constraint can never hold
        return Parsed(None, None)
    return Parsed(tree, _measure(tree))


def _measure(tree: Any) -> Shape:
    """Walk the tree without recursion (its depth is not bounded yet)."""
    import lark

    nodes = depth = comprehension_depth = logical_operators = 0
    functions: set[str] = set()
    names: set[str] = set()
    concatenates = False
    stack: list[tuple[Any, int, int]] = [(tree, 1, 0)]
    while stack:
        node, level, nesting = stack.pop()
        nodes += 1
        depth = max(depth, level)
        comprehension_depth = max(comprehension_depth, nesting)
        concatenates = concatenates or node.data == "addition_add"
        if node.data in _LOGICAL and len(node.children) > 1:
            logical_operators += 1
        if node.data == "ident":
            names.update(str(t) for t in node.children if isinstance(t, lark.Token))
        name = _called(node)
        if name is not None:
            functions.add(name)
        for index, child in enumerate(node.children):
            if isinstance(child, lark.Tree):
                # a comprehension's arguments run once per element: one level deeper
                deeper = name in COMPREHENSIONS and node.data == "member_dot_arg" and index == 2
                stack.append((child, level + 1, nesting + 1 if deeper else nesting))
    return Shape(
        nodes,
        depth,
        comprehension_depth,
        frozenset(functions),
        concatenates,
        logical_operators,
        frozenset(names),
    )


def _called(node: Any) -> str | None:
    """The function or macro name of a call node, else None."""
    import lark

    if node.data not in _CALLS:
        return None
    for child in node.children:
        if isinstance(child, lark.Token) and child.type == "IDENT":
            return str(child)
    return None
