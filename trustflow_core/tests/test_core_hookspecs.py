"""Every hookspec is documented: a docstring in hookspecs.py and a section in docs/hooks.md."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from trustflow_core import hookspecs

HOOKS_DOC = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"
SPECS = [
    (name, fn)
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("trustflow_")
]


def test_there_are_hookspecs():
    assert len(SPECS) >= 6


@pytest.mark.parametrize(("name", "fn"), SPECS, ids=[n for n, _ in SPECS])
def test_hookspec_has_a_docstring_and_a_docs_section(name, fn):
    assert (fn.__doc__ or "").strip(), f"{name} has no docstring"
    assert f"## {name}" in HOOKS_DOC.read_text(), f"{name} has no section in docs/hooks.md"


@pytest.mark.parametrize(("name", "fn"), SPECS, ids=[n for n, _ in SPECS])
def test_hookspec_arguments_are_annotated(name, fn):
    params = inspect.signature(fn).parameters.values()
    assert all(p.annotation is not inspect.Parameter.empty for p in params), name
