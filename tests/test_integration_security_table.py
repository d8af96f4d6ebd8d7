"""docs/security.md names, for every trust decision, the test that proves it: each named test
must exist, so the table cannot drift from the suite."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "security.md"
REFERENCE = re.compile(r"`([\w./-]+\.py)(?:::(\w+))?")


def _references() -> list[tuple[str, str | None]]:
    text = TABLE.read_text()
    table = text[text.index("## Trust decisions") :]
    return [(m.group(1), m.group(2)) for m in REFERENCE.finditer(table)]


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def test_every_test_named_in_the_trust_table_exists() -> None:
    refs = _references()
    assert len(refs) > 40, "the table lost its references"
    missing = []
    for file, name in refs:
        path = ROOT / file
        if not file.startswith(("tests/", "trustflow_core/tests/", "plugins/", "examples/")):
            continue  # a source file named in "enforced in" (a module path, not a test)
        if not path.is_file():
            missing.append(file)
        elif name is not None and name not in _test_names(path):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"
