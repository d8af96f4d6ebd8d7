"""Policy engine: rule matching (docs/compat.md#policy-evaluation), CEL constraints, lineage
merge."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trustflow_core.roles.capsule_manager.policy import (
    AccessRequest,
    OpConstraint,
    Rule,
    allows,
    derive_result_policy,
    evaluate,
    evaluation_object,
)

BOB, EVE = "B" * 52, "E" * 52
SGX_ENV = {
    "request_time": "2024-06-01T12:00:00Z",
    "tee": {"platform": "sgx", "sgx": {"mr_enclave": "aa11", "mr_signer": "bb22"}},
}


def req(**kw: object) -> AccessRequest:
    base: dict[str, object] = {
        "resource_uri": "d1",
        "initiator_party_id": BOB,
        "scope": "default",
        "op_name": "psi",
        "columns": ("id",),
        "env": SGX_ENV,
    }
    base.update(kw)
    return AccessRequest(**base)  # type: ignore[arg-type]


def rule(**kw: object) -> Rule:
    base: dict[str, object] = {
        "rule_id": "r",
        "grantee_party_ids": (BOB,),
        "op_constraints": (OpConstraint("psi"),),
        "columns": ("id", "age"),
        "global_constraints": (),
    }
    base.update(kw)
    return Rule(**base)  # type: ignore[arg-type]


def test_basic_grant_and_each_refusal() -> None:
    assert allows([rule()], req())
    assert not allows([rule()], req(initiator_party_id=EVE))  # wrong party
    assert not allows([rule()], req(op_name="xgb"))  # wrong op
    assert not allows([rule()], req(columns=("salary",)))  # column not granted
    assert allows([rule()], req(columns=()))  # no columns requested
    assert allows([rule(columns=("*",))], req(columns=("salary",)))
    assert not allows([rule(op_constraints=())], req())  # no op entries: nothing allowed
    assert not allows([], req())
    assert allows([rule(grantee_party_ids=(EVE,)), rule()], req())  # any rule


def test_op_constraints_and_wildcard() -> None:
    pinned = (OpConstraint("psi", ('r.env.tee.sgx.mr_enclave == "aa11"',)),)
    assert allows([rule(op_constraints=pinned)], req())
    wrong = (OpConstraint("psi", ('r.env.tee.sgx.mr_enclave == "ffff"',)),)
    assert not allows([rule(op_constraints=wrong)], req())
    # "*" entries allow any op and their constraints are not evaluated for a concrete op
    star = (OpConstraint("*", ("false",)),)
    assert allows([rule(op_constraints=star)], req(op_name="anything"))
    blank = (OpConstraint("psi", ("", "  ")),)
    assert allows([rule(op_constraints=blank)], req())  # blank op constraints skipped


def test_global_constraints() -> None:
    assert allows([rule(global_constraints=('r.env.tee.platform == "sgx"',))], req())
    assert not allows([rule(global_constraints=('r.env.tee.platform == "tdx"',))], req())
    assert not allows([rule(global_constraints=("",))], req())  # blank fails closed
    # env absent: member access errors -> rule fails
    assert not allows([rule(global_constraints=('r.env.tee.platform == "sgx"',))], req(env=None))


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('r.op_name == "psi" && r.scope == "default"', True),
        ('r.op_name == "psi" || r.missing.x == 1', True),  # short circuit
        ('!(r.op_name == "psi")', False),
        ('r.columns[0] == "id"', True),
        ('r["scope"] == "default"', True),
        ("1 + 2 * 3 == 7", True),
        ('"ab" + "c" == "abc"', True),
        ('"abc" < "abd"', True),
        ("r.op_name", False),  # not a boolean
        ("r.op_name ==", False),  # does not compile
        ("r.nope.deeper == 1", False),  # error
        ('r.attrs == ""', True),
        ('__import__("os").system("true")', False),  # not Python
    ],
)
def test_cel_expressions(expr: str, expected: bool) -> None:
    assert evaluate(expr, evaluation_object(req())) is expected


def test_evaluation_object_shape() -> None:
    r = evaluation_object(req(attrs='{"k": 1}'))
    assert r["attrs"] == '{"k": 1}'  # kept as a string (docs/compat.md#attrs-raw-string)
    assert r["env"]["tee"]["platform"] == "sgx"
    assert "env" not in evaluation_object(req(env=None))


def test_rule_json_roundtrip() -> None:
    r = rule(global_constraints=("x",), op_constraints=(OpConstraint("psi", ("a", "b")),))
    assert Rule.from_json(r.to_json()) == r
    assert Rule.from_dict(
        {"rule_id": "x", "op_constraints": [{"op_name": "o", "constraints": None}]}
    ).op_constraints == (OpConstraint("o"),)


def test_merge_one_ancestor_copies_with_blank_ids() -> None:
    a = [rule(rule_id="a1"), rule(rule_id="a2", columns=("x",))]
    merged = derive_result_policy([a])
    assert [m.rule_id for m in merged] == ["", ""]
    assert merged[1].columns == ("x",)


def test_merge_two_ancestors() -> None:
    left = [
        rule(
            rule_id="l",
            grantee_party_ids=(BOB, EVE),
            op_constraints=(OpConstraint("psi", ("c1",)), OpConstraint("xgb")),
            columns=("id",),
            global_constraints=("g1",),
        )
    ]
    right = [
        rule(
            rule_id="r",
            grantee_party_ids=(EVE, "Z"),
            op_constraints=(OpConstraint("xgb", ("c2",)),),
            global_constraints=("g2", "g1"),
        ),
        rule(rule_id="r2", grantee_party_ids=(BOB,), op_constraints=(OpConstraint("lr"),)),
    ]
    merged = derive_result_policy([left, right])
    assert len(merged) == 2
    first = merged[0]
    assert first.rule_id == "" and first.grantee_party_ids == (EVE,)
    assert first.op_constraints == (OpConstraint("xgb"),)  # left's constraints only
    assert first.columns == ("*",)
    assert set(first.global_constraints) == {"g1", "g2"}
    assert merged[1].grantee_party_ids == (BOB,) and merged[1].op_constraints == ()
    assert derive_result_policy([]) == []


def test_compat_policy_rules_parse(compat_dir: Path) -> None:
    request = json.loads((compat_dir / "rpc" / "create_data_policy.request.json").read_text())
    rules = [Rule.from_dict(r) for r in request["policy"]["rules"]]
    assert rules and all(r.rule_id for r in rules)
    grantee = rules[0].grantee_party_ids[0]
    op = rules[0].op_constraints[-1].op_name
    # the compat policy requires r.env.tee.platform == "sim"
    sim_env = {"request_time": "2024-06-01T12:00:00Z", "tee": {"platform": "sim", "sim": {}}}
    ok = AccessRequest("u", grantee, "default", op, (), "", sim_env)
    assert allows(rules, ok) is all(
        evaluate(g, evaluation_object(ok)) for g in rules[0].global_constraints
    )


@pytest.mark.parametrize(
    "expr",
    [
        'r.env.tee.platform == "sgx"',
        'r.env.tee.platform=="sgx"',
        'r.env.tee.platform == "tdx"',
        'r.env.tee.sgx.mr_enclave == "aa11"',
        'r.env.tee.sgx.missing == "aa11"',
        'r.env.request_time.x == "a"',  # member of a string: error
        'r.columns == "id"',  # a list is not a string
        'r.scope == ""',
        'r.op_name == "psi"',
        'r.attrs == "psi"',
        'r.nope == "x"',
        ' r.scope  ==  "default" ',
    ],
)
def test_fast_equality_path_matches_cel(expr: str) -> None:
    from trustflow_core.roles.capsule_manager.policy import _simple_equality, evaluate_cel

    for env in (SGX_ENV, None):
        r = evaluation_object(req(env=env))
        fast = _simple_equality(expr, r)
        assert fast is not None, expr
        assert fast is evaluate_cel(expr, r), (expr, env)


def test_fast_path_declines_other_shapes() -> None:
    from trustflow_core.roles.capsule_manager.policy import _simple_equality

    r = evaluation_object(req())
    for expr in ('r.in == "x"', 'r.scope == "a\\"b"', 'r.scope != "x"', 'r["scope"] == "x"'):
        assert _simple_equality(expr, r) is None


# ---- cost bound (constraint_cost, constraint_sandbox) ---------------------------------------

DIGITS = "[0,1,2,3,4,5,6,7,8,9]"
NESTED = f"{DIGITS}.map(a,{DIGITS}.map(b,{DIGITS}.map(c,{DIGITS}.map(d,{DIGITS}.map(e,0)))))!=[]"


@pytest.mark.parametrize(
    ("expr", "comprehension_depth", "in_process"),
    [
        ('r.env.tee.platform == "sgx"', 0, True),
        ('size(r.columns) == 1 && r.scope.startsWith("def") && has(r.env)', 0, True),
        ('r.columns.all(c, c in ["id"])', 1, False),
        (f"{DIGITS}.map(x, x).map(y, y) == {DIGITS}", 1, False),  # chained, not nested
        (f"{DIGITS}.exists(x, {DIGITS}.all(y, y >= 0))", 2, False),
        (NESTED, 5, False),
        ('"a" + "b" == "ab"', 0, False),  # concatenation copies
        ('r.scope.matches("d.*")', 0, False),  # a regular expression
        ("a" + "&&a" * 16, 0, False),  # a name other than r: an error in every operand
        ("&&".join(['r.x == "1"'] * 17), 0, True),  # 16 logical operators
        ("&&".join(['r.x == "1"'] * 18), 0, False),  # 17: exponential when operands fail
    ],
)
def test_constraint_shape(expr: str, comprehension_depth: int, in_process: bool) -> None:
    from trustflow_core.roles.capsule_manager.constraint_cost import parse

    shape = parse(expr).shape
    assert shape is not None
    assert shape.comprehension_depth == comprehension_depth
    assert shape.in_process is in_process
    assert parse("r.op_name ==").shape is None  # does not parse


def test_check_rule_names_rule_constraint_and_limit() -> None:
    from trustflow_core.roles.capsule_manager.policy import check_rule
    from trustflow_core.roles.capsule_manager_protocol.errors import CMError, Kind

    check_rule(rule(global_constraints=('r.env.tee.platform == "sgx"', "r.op_name ==")))
    with pytest.raises(CMError) as err:
        check_rule(rule(rule_id="x", op_constraints=(OpConstraint("psi", ("true", NESTED)),)))
    assert err.value.kind is Kind.INVALID_ARGUMENT
    assert err.value.detail == (
        "rule 'x': constraint 2 of op 'psi' has comprehension nesting depth 5, over the limit of 1"
    )


@pytest.fixture
def sandbox() -> Iterator[Any]:
    from trustflow_core.roles.capsule_manager.constraint_sandbox import Sandbox

    pool = Sandbox(workers=1)
    try:
        yield pool
    finally:
        pool.close()


@pytest.mark.parametrize(
    "expr",
    [
        'r.columns.all(c, c in ["id", "age"])',
        'r.columns.exists(c, c == "salary")',
        '"ab" + "c" == "abc"',
        'r.env.tee.sgx.mr_enclave.matches("^aa")',
        "r.columns.map(c, c)",  # not a boolean
        "r.nope.all(c, true)",  # error
        "",  # does not parse
    ],
)
def test_sandbox_agrees_with_in_process(sandbox: Any, expr: str) -> None:
    from trustflow_core.roles.capsule_manager.constraint_sandbox import Budget
    from trustflow_core.roles.capsule_manager.policy import evaluate_cel

    r = evaluation_object(req())
    assert sandbox.evaluate(expr, r, Budget(60)) is evaluate_cel(expr, r)


def test_sandbox_stops_an_overrun_and_recovers(sandbox: Any) -> None:
    from trustflow_core.roles.capsule_manager.constraint_sandbox import Budget, BudgetExceeded

    r = evaluation_object(req())
    sandbox.evaluate("true", r, Budget(60))  # the worker is up: the next budget is all evaluation
    with pytest.raises(BudgetExceeded):
        sandbox.evaluate(NESTED, r, Budget(0.2))  # 10**5 evaluations: seconds
    assert sandbox.evaluate('r.columns.all(c, c == "id")', r, Budget(60)) is True


def test_exhausted_budget_fails_rules_that_need_evaluation() -> None:
    from trustflow_core.roles.capsule_manager.constraint_sandbox import Budget

    spent = Budget(0)
    constrained = rule(global_constraints=('r.env.tee.platform == "sgx"',))
    assert not allows([constrained], req(), spent)
    assert allows([constrained, rule()], req(), spent)  # no constraint: nothing to evaluate
