"""The policy engine (docs/compat.md#policy-evaluation) with constraints in CEL (``cel-python``).

A request for one resource is allowed when **any** rule of the resource's policy matches:

1. the initiator is one of the rule's ``grantee_party_ids`` (exact string);
2. the rule has an ``op_constraints`` entry for ``"*"`` or for the request's ``op_name``;
3. the rule's ``columns`` contain ``"*"`` or every requested column;
4. every non-blank constraint of the entries whose ``op_name`` equals the request op *exactly*
   evaluates to ``true`` (``"*"`` entries are not evaluated for a concrete op --
   docs/compat.md#wildcard-op-skips-constraints);
5. every ``global_constraints`` string (blank ones fail) evaluates to ``true``.

Constraints are CEL expressions over one variable ``r`` (:func:`evaluation_object`); the
upstream Rhai examples (``r.env.tee.platform=="sgx"``, ``&&``, ``||``, ``!``, comparisons,
member access and indexing) are valid CEL with the same meaning. Compile or evaluation errors,
and non-boolean results, make the rule fail. They are never ``eval``-ed.

Cost: :mod:`.constraint_cost` bounds constraints statically (at policy creation); at evaluation,
constraints that are not cheap by construction run in :mod:`.constraint_sandbox`'s worker
processes within the request's :class:`Budget`. A rule whose evaluation runs out of budget fails.

:func:`derive_result_policy` is the lineage merge (docs/compat.md#lineage-merge, reproduced).
"""

from __future__ import annotations

import atexit
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..capsule_manager_protocol.errors import CMError, Kind
from .constraint_cost import MAX_CHARS, parse
from .constraint_eval import evaluate_cel
from .constraint_sandbox import Budget, BudgetExceeded, Sandbox

log = logging.getLogger(__name__)

_SANDBOX = Sandbox()
atexit.register(_SANDBOX.close)


@dataclass(frozen=True)
class OpConstraint:
    op_name: str
    constraints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """A policy rule (``secretflowapis.v2.sdc.capsule_manager.Rule``)."""

    rule_id: str = ""
    grantee_party_ids: tuple[str, ...] = ()
    op_constraints: tuple[OpConstraint, ...] = ()
    columns: tuple[str, ...] = ()
    global_constraints: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "grantee_party_ids": list(self.grantee_party_ids),
            "op_constraints": [
                {"op_name": o.op_name, "constraints": list(o.constraints)}
                for o in self.op_constraints
            ],
            "columns": list(self.columns),
            "global_constraints": list(self.global_constraints),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        def strings(value: Any, what: str) -> tuple[str, ...]:
            if value is None:
                return ()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise CMError(Kind.INVALID_ARGUMENT, f"rule {what} must be a list of strings")
            return tuple(value)

        ops = data.get("op_constraints") or []
        if not isinstance(ops, list) or not all(isinstance(o, Mapping) for o in ops):
            raise CMError(Kind.INVALID_ARGUMENT, "rule op_constraints must be a list of objects")
        rule_id = data.get("rule_id") or ""
        if not isinstance(rule_id, str):
            raise CMError(Kind.INVALID_ARGUMENT, "rule_id must be a string")
        return cls(
            rule_id=rule_id,
            grantee_party_ids=strings(data.get("grantee_party_ids"), "grantee_party_ids"),
            op_constraints=tuple(
                OpConstraint(
                    str(o.get("op_name") or ""), strings(o.get("constraints"), "constraints")
                )
                for o in ops
            ),
            columns=strings(data.get("columns"), "columns"),
            global_constraints=strings(data.get("global_constraints"), "global_constraints"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Rule:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class AccessRequest:
    """One single-resource request. ``env`` is None when absent."""

    resource_uri: str
    initiator_party_id: str
    scope: str
    op_name: str
    columns: tuple[str, ...] = ()
    attrs: str = ""
    env: Mapping[str, Any] | None = field(default=None)


def evaluation_object(req: AccessRequest) -> dict[str, Any]:
    """The object ``r`` constraints see; ``env`` only when present, ``attrs`` the raw
    resource attrs string (docs/compat.md#attrs-raw-string)."""
    obj: dict[str, Any] = {
        "resource_uri": req.resource_uri,
        "columns": list(req.columns),
        "initiator_party_id": req.initiator_party_id,
        "scope": req.scope,
        "op_name": req.op_name,
        "attrs": req.attrs,
    }
    if req.env is not None:
        obj["env"] = dict(req.env)
    return obj


# ``r.a.b == "literal"`` -- the shape of nearly every real constraint -- is decided without the
# CEL interpreter, with exactly CEL's result: a missing member is an error (false), a value of
# another type does not compare to a string (false).
_SIMPLE_EQ = re.compile(r'\s*r((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*==\s*"([^"\\\n]*)"\s*')
_CEL_RESERVED = frozenset(
    [
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ]
)


def _simple_equality(expression: str, r: Mapping[str, Any]) -> bool | None:
    match = _SIMPLE_EQ.fullmatch(expression)
    if match is None:
        return None
    names = match.group(1)[1:].split(".")
    if any(n in _CEL_RESERVED for n in names):
        return None
    value: Any = r
    for name in names:
        if not isinstance(value, Mapping) or name not in value:
            return False
        value = value[name]
    return isinstance(value, str) and value == match.group(2)


def evaluate(expression: str, r: Mapping[str, Any], budget: Budget | None = None) -> bool:
    """True iff ``expression`` compiles and evaluates to the boolean true with ``r`` bound.
    Raises :class:`BudgetExceeded` when ``budget`` (default: a fresh one) runs out first."""

    if len(expression) > MAX_CHARS:
        log.info("constraint longer than %d chars refused", MAX_CHARS)
        return False
    budget = budget if budget is not None else Budget()
    budget.check()
    fast = _simple_equality(expression, r)
    if fast is not None:
        return fast
    shape = parse(expression).shape
    if shape is None:
        log.info("constraint %r does not compile", expression)
        return False
    if shape.in_process:
        return evaluate_cel(expression, r)
    return _SANDBOX.evaluate(expression, r, budget)


def rule_matches(rule: Rule, req: AccessRequest, r: Mapping[str, Any], budget: Budget) -> bool:
    if req.initiator_party_id not in rule.grantee_party_ids:
        return False
    if not any(o.op_name in ("*", req.op_name) for o in rule.op_constraints):
        return False
    if "*" not in rule.columns and not all(c in rule.columns for c in req.columns):
        return False
    constraints = [
        c
        for op in rule.op_constraints
        if op.op_name == req.op_name
        for c in op.constraints
        if c.strip()
    ]
    try:
        return all(evaluate(c, r, budget) for c in [*constraints, *rule.global_constraints])
    except BudgetExceeded as exc:
        if budget.first_report():
            log.warning("%s: rule %r of %s fails", exc, rule.rule_id, req.resource_uri)
        return False


def allows(rules: Sequence[Rule], req: AccessRequest, budget: Budget | None = None) -> bool:
    """Whether any rule (in stored order) allows ``req``. ``budget`` bounds the evaluation of
    constraints (default: a fresh :class:`Budget`); pass one to share it between the resources
    of a request."""
    r = evaluation_object(req)
    budget = budget if budget is not None else Budget()
    return any(rule_matches(rule, req, r, budget) for rule in rules)


def releases_to_app(
    rules: Sequence[Rule],
    resource_uri: str,
    scope: str,
    env: Mapping[str, Any] | None,
    budget: Budget | None = None,
) -> bool:
    """Whether ``rules`` would release ``resource_uri`` to an app attested as ``env`` for some
    request it could make: some rule, for one of its grantees and one of its ops, allows a
    GetDataKeys request without columns or attrs from that app. This is the check on the
    ancestors of a result (CreateResultDataKey names no initiator and no op; in GetDataKeys
    both are the app's own claims, so the attested ``env`` is what identifies the app).
    ``budget`` bounds the evaluation as in :func:`allows`."""
    budget = budget if budget is not None else Budget()
    for rule in rules:
        for grantee in rule.grantee_party_ids:
            for op in rule.op_constraints:
                req = AccessRequest(resource_uri, grantee, scope, op.op_name, env=env)
                if rule_matches(rule, req, evaluation_object(req), budget):
                    return True
    return False


def _merge(left: Sequence[Rule], right: Sequence[Rule]) -> list[Rule]:
    merged = []
    for lrule in left:
        for rrule in right:
            right_ops = {o.op_name for o in rrule.op_constraints}
            globals_ = list(dict.fromkeys(lrule.global_constraints + rrule.global_constraints))
            merged.append(
                Rule(
                    rule_id="",
                    grantee_party_ids=tuple(
                        g for g in lrule.grantee_party_ids if g in rrule.grantee_party_ids
                    ),
                    op_constraints=tuple(o for o in lrule.op_constraints if o.op_name in right_ops),
                    columns=("*",),
                    global_constraints=tuple(globals_),
                )
            )
    return merged


def derive_result_policy(ancestor_rules: Sequence[Sequence[Rule]]) -> list[Rule]:
    """The lineage merge (docs/compat.md#lineage-merge): copy the first ancestor's rules with blank
    ids; merge each further ancestor pairwise (grantee intersection, left op constraints whose op
    the right also names, ``columns=["*"]``, union of global constraints). No ancestors: no
    rules."""
    if not ancestor_rules:
        return []
    result = [
        Rule("", r.grantee_party_ids, r.op_constraints, r.columns, r.global_constraints)
        for r in ancestor_rules[0]
    ]
    for rules in ancestor_rules[1:]:
        result = _merge(result, rules)
    return result


def check_rule(rule: Rule) -> None:
    """Refuse (``INVALID_ARGUMENT``) a rule with a constraint over a limit. Constraints that do
    not parse are accepted as before: they can never hold, so the rule never matches."""
    constraints = [
        (f"constraint {i + 1} of op {op.op_name!r}", c)
        for op in rule.op_constraints
        for i, c in enumerate(op.constraints)
    ]
    constraints += [
        (f"global constraint {i + 1}", c) for i, c in enumerate(rule.global_constraints)
    ]
    for where, expression in constraints:
        if len(expression) > MAX_CHARS:
            _refuse(rule, where, ("characters", len(expression), MAX_CHARS))
        shape = parse(expression).shape
        over = shape.over_limit() if shape is not None else None
        if over is not None:
            _refuse(rule, where, over)


def _refuse(rule: Rule, where: str, over: tuple[str, int, int]) -> None:
    what, value, limit = over
    raise CMError(
        Kind.INVALID_ARGUMENT,
        f"rule {rule.rule_id!r}: {where} has {what} {value}, over the limit of {limit}",
    )
