"""MkDocs hooks of the documentation site (mkdocs.yml): reference pages generated from the code.

* **CLI.** ``trustflow`` is assembled at run time from the core's and the installed plugins'
  commands (``trustflow_core.cli.build_cli``), so there is no module attribute for mkdocs-click
  to import. Loading this file builds the group once and publishes it as
  ``trustflow_docs_cli.cli``; ``docs/reference/cli.md`` names that module.
* **gRPC API.** A page line ``<!-- proto: secretflowapis/v2/sdc/ra_proxy/ra_proxy.proto -->``
  is replaced by the services, messages and enums of that file under ``proto/`` (fields,
  numbers, labels and the comments above each), so the reference cannot drift from the protos
  the code is generated from (``scripts/gen_proto.py --check``).
"""

from __future__ import annotations

import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustflow_core.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
_MARKER = re.compile(r"^<!-- proto: (\S+\.proto) -->$", re.MULTILINE)

_cli_module = types.ModuleType("trustflow_docs_cli", "The trustflow CLI for mkdocs-click.")
_cli_module.cli = build_cli()  # type: ignore[attr-defined]
sys.modules["trustflow_docs_cli"] = _cli_module


@dataclass
class _Block:
    """A message, enum or service: its kind, name, comment and rows (one per member)."""

    kind: str
    name: str
    comment: str
    rows: list[tuple[str, ...]] = field(default_factory=list)


_FIELD = re.compile(
    r"^(?:(repeated|optional)\s+)?(map<[^>]+>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*(?:\[[^\]]*\])?;"
)
_ENUM_VALUE = re.compile(r"^(\w+)\s*=\s*(-?\d+)\s*;")
_RPC = re.compile(
    r"^rpc\s+(\w+)\s*\(\s*(stream\s+)?([\w.]+)\s*\)\s*returns\s*\(\s*(stream\s+)?([\w.]+)\s*\)"
)
_OPEN = re.compile(r"^(message|enum|service|oneof)\s+(\w+)\s*\{")


def parse_proto(text: str) -> tuple[str, list[_Block]]:
    """The package and the blocks of a proto3 file, nested messages named ``Outer.Inner``.
    A comment is the run of ``//`` lines right above a declaration, or its trailing ``//``."""
    package = ""
    blocks: list[_Block] = []
    stack: list[_Block | None] = []  # None: a oneof (its fields belong to the message)
    comment: list[str] = []
    pending = ""  # a declaration continued on the next line
    for raw in text.splitlines():
        line, _, trailing = raw.strip().partition("//")
        line = f"{pending} {line.strip()}".strip() if line.strip() else line.strip()
        if line and not line.endswith((";", "{", "}")):
            pending = line
            continue
        pending = ""
        if not line:
            if raw.strip().startswith("//"):
                comment.append(trailing.strip())
            else:
                comment = []
            continue
        note = " ".join([*comment, trailing.strip()]).strip()
        comment = []
        if line.startswith("package "):
            package = line.removeprefix("package ").rstrip(";").strip()
            continue
        opened = _OPEN.match(line)
        if opened:
            kind, name = opened.groups()
            if kind == "oneof":
                stack.append(None)
                continue
            outer = [b.name for b in stack if b is not None]
            block = _Block(kind, ".".join([*outer[-1:], name]) if outer else name, note)
            blocks.append(block)
            stack.append(block)
            if line.endswith("}"):
                stack.pop()
            continue
        if line.startswith("}"):
            if stack:
                stack.pop()
            continue
        current = next((b for b in reversed(stack) if b is not None), None)
        if current is None:
            continue
        if current.kind == "message" and (m := _FIELD.match(line)):
            label, type_, name, number = m.groups()
            oneof = stack[-1] is None
            label = label or ("oneof" if oneof else "")
            current.rows.append((name, type_, number, label, note))
        elif current.kind == "enum" and (m := _ENUM_VALUE.match(line)):
            current.rows.append((m.group(1), m.group(2), note))
        elif current.kind == "service" and (m := _RPC.match(line)):
            name, _, request, _, response = m.groups()
            current.rows.append((name, request, response, note))
    return package, blocks


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_proto(relative: str) -> str:
    """Markdown for one proto file (a path under ``proto/``)."""
    path = (PROTO_DIR / relative).resolve()
    if PROTO_DIR not in path.parents or not path.is_file():
        raise ValueError(f"no proto file {relative} under proto/")
    package, blocks = parse_proto(path.read_text())
    out = [f"Package `{package}` (`proto/{relative}`).", ""]
    for block in blocks:
        out.append(f"#### {block.kind} `{block.name}`")
        out.append("")
        if block.comment:
            out += [block.comment, ""]
        if block.kind == "service":
            out += ["| rpc | request | response | notes |", "|---|---|---|---|"]
            for name, request, response, note in block.rows:
                path_ = f"/{package}.{block.name}/{name}"
                out.append(f"| `{name}` (`{path_}`) | `{request}` | `{response}` | {_cell(note)} |")
        elif block.kind == "enum":
            out += ["| value | number | notes |", "|---|---|---|"]
            out += [f"| `{n}` | {v} | {_cell(c)} |" for n, v, c in block.rows]
        elif block.rows:
            out += ["| field | type | # | label | notes |", "|---|---|---|---|---|"]
            out += [
                f"| `{n}` | `{_cell(t)}` | {num} | {lab} | {_cell(c)} |"
                for n, t, num, lab, c in block.rows
            ]
        else:
            out.append("No fields.")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Expand every ``<!-- proto: FILE -->`` line of a page."""
    return _MARKER.sub(lambda m: render_proto(m.group(1)), markdown)
