"""The core names no TEE platform: platform knowledge lives on the backend classes.

A new TEE backend must work in every role without a change to the core, so no module of
``trustflow_core`` may use a platform name (``sim``, ``tdx``, ``csv``, ``sgx`` or a report
platform such as ``"SGX_DCAP"``) as a value: not as a default, not in a comparison, not as a
table key. Docstrings and comments may mention platforms as examples; they are not values.

Exempt: the demo package (``demo/*``, outside the roles), which assembles a complete simulated
deployment and names ``sim`` on purpose. Generated protobuf code is not ours to check.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import trustflow_core

PACKAGE = Path(trustflow_core.__file__).parent
PLATFORM_NAMES = {"sim", "tdx", "csv", "sgx", "sgx_dcap"}
EXEMPT = ("demo/", "proto/")


def _modules() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if not p.relative_to(PACKAGE).as_posix().startswith(EXEMPT)
    )


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def platform_literals(source: str) -> list[tuple[int, str]]:
    """``(line, value)`` of every string constant, other than a docstring, whose value is a
    platform name (any case, surrounding blanks ignored)."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and node.value.strip().lower() in PLATFORM_NAMES
    ]


def test_the_scan_covers_the_roles_and_the_core_modules() -> None:
    scanned = {p.relative_to(PACKAGE).as_posix() for p in _modules()}
    for expected in (
        "registry.py",
        "attestation.py",
        "roles/capsule_manager/service.py",
        "roles/capsule_manager_client/client.py",
        "roles/capsule_manager/settings.py",
        "roles/capsule_manager/server.py",
        "roles/ra_proxy/settings.py",
        "roles/data_capsule_proxy/settings.py",
        "roles/client/online.py",
        "testing/attestation.py",
        "harness/data_capsule_proxy.py",
        "harness/capsule_manager.py",
    ):
        assert expected in scanned
    assert not any(p.startswith("demo/") for p in scanned)


@pytest.mark.parametrize(
    "source",
    [
        'plat: str = "sim"',
        'if tee_plat == "TDX": pass',
        'TABLE = {"SGX_DCAP": 1}',
        'f(default=" csv ")',
        "x = 'Sgx'",
    ],
)
def test_the_scan_finds_platform_values(source: str) -> None:
    assert platform_literals(source)


def test_the_scan_ignores_docstrings_and_longer_strings() -> None:
    source = (
        '"""Runs on sim."""\ndef f():\n    """tdx or csv."""\n    return "simulated", "TDX quote"\n'
    )
    assert platform_literals(source) == []


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_core_module_names_no_platform(path: Path) -> None:
    found = platform_literals(path.read_text(encoding="utf-8"))
    assert not found, (
        f"{path.relative_to(PACKAGE)} names TEE platforms {found}: declare platform knowledge "
        "on the backend class (Verifier.tee_name, identity_fields, debug_flag, simulated, "
        "development_default) and ask the registry"
    )
