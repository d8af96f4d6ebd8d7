"""Comments and docs are self-contained: no file cites the external upstream spec by section
(``§``), by quirk number or by spec file name, and every ``compat.md#anchor`` (and every other
``docs/<page>.md#anchor``) they cite exists. Upstream facts live in ``docs/compat.md``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
SUFFIXES = {".py", ".pyi", ".md", ".proto", ".yml", ".yaml", ".toml", ".ini", ".sh", ".cfg"}
SKIP_DIRS = {".git", ".tox", ".venv", "venv", "build", "dist", "node_modules"}

#: ``§`` is fine after the name of a public standard (RFC 9110 §7.6.1, GB/T 32918.2 §5.5).
_STANDARD_BEFORE_SECTION = re.compile(r"(RFC \d+|GB/T [\d.]+) $")
_QUIRK = re.compile(r"\bquirks?[ _-]?\d", re.IGNORECASE)
_SPEC_FILE = re.compile(
    r"\b(wire-formats|crypto-formats|attestation-sim|tdx-attestation|csv-attestation"
    r"|sgx-tdx-collateral)\b|(?<![\w/.-])(scenarios|proxies|cli|quirks)\.md\b"
)
_SPEC_DIR = "shared/" + "spec"
#: ``docs/compat.md#x``, ``compat.md#x`` (a link inside docs/), ``docs/tls-asset.md#x``.
_DOC_ANCHOR = re.compile(r"(?:docs/)?\b([\w-]+\.md)#([\w-]+)")
_LOCAL_ANCHOR = re.compile(r"\]\(#([\w-]+)\)")


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def mkdocs_slug(heading: str) -> str:
    """The anchor mkdocs (Python-Markdown's ``toc``) gives a Markdown heading."""
    text = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """Explicit ``<a id="...">`` anchors of a Markdown page, and the heading slugs that GitHub
    and mkdocs agree on (``-c CONFIG`` gives ``--c-config`` on one and ``-c-config`` on the
    other, so a link to it breaks on one of the two)."""
    text = page.read_text(encoding="utf-8")
    headings = [m.group(1) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)]
    found = {slug(h) for h in headings if slug(h) == mkdocs_slug(h)}
    found |= set(re.findall(r'<a id="([\w-]+)"', text))
    return found


def problems(path: str, text: str, doc_anchors: dict[str, set[str]]) -> Iterator[str]:
    """Every spec citation and every dangling doc anchor in ``text`` (from file ``path``)."""
    for no, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{no}"
        for m in re.finditer("§", line):
            if not _STANDARD_BEFORE_SECTION.search(line[: m.start()]):
                yield f"{where}: cites a spec section: {line.strip()}"
        if _QUIRK.search(line):
            yield f"{where}: cites a quirk number: {line.strip()}"
        if _SPEC_FILE.search(line):
            yield f"{where}: cites a spec file: {line.strip()}"
        if _SPEC_DIR in line and path != "README.md":
            yield f"{where}: points at the external spec folder: {line.strip()}"
        for page, anchor in _DOC_ANCHOR.findall(line):
            if (page == "compat.md" or page in doc_anchors) and anchor not in doc_anchors.get(
                page, set()
            ):
                yield f"{where}: {page}#{anchor} does not exist"
        if path.endswith(".md") and Path(path).name in doc_anchors:
            for anchor in _LOCAL_ANCHOR.findall(line):
                if anchor not in doc_anchors[Path(path).name]:
                    yield f"{where}: #{anchor} does not exist in this page"


def source_files() -> Iterator[Path]:
    """The repository's text files that carry comments, docstrings or docs (but this one, which
    names what it looks for)."""
    for path in sorted(REPO.rglob("*")):
        rel = path.relative_to(REPO)
        if any(
            part in SKIP_DIRS or part.startswith(".") or part.endswith(".egg-info")
            for part in rel.parts[:-1]
        ):
            continue
        if path.suffix in SUFFIXES and path.is_file() and path != Path(__file__).resolve():
            yield path


def doc_pages() -> dict[str, set[str]]:
    return {page.name: anchors(page) for page in DOCS.glob("*.md")}


def test_no_file_needs_the_external_spec() -> None:
    pages = doc_pages()
    found = [
        problem
        for path in source_files()
        for problem in problems(
            path.relative_to(REPO).as_posix(), path.read_text(encoding="utf-8"), pages
        )
    ]
    assert not found, "cite docs/compat.md#<anchor> instead:\n" + "\n".join(found)


def test_compat_anchors_are_unique_and_cited_entries_exist() -> None:
    text = (DOCS / "compat.md").read_text(encoding="utf-8")
    headings = [slug(h) for h in re.findall(r"^### (.+)$", text, re.MULTILINE)]
    assert len(headings) == len(set(headings)), "duplicate anchors in docs/compat.md"
    assert {"jwe-aad-is-the-aad-member", "report-binding", "lineage-merge"} <= set(headings)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("# the header is not authenticated (quirk 1)", "quirk number"),
        ('"""Lineage merge (capsule-manager.md §6.5)."""', "spec section"),
        ("see crypto-formats for the JWE dialect", "spec file"),
        ("# see /work/" + _SPEC_DIR + "/README.md", "external spec folder"),
        ("# docs/compat.md#no-such-anchor", "does not exist"),
        ("see [there](compat.md#no-such-anchor)", "does not exist"),
    ],
)
def test_the_check_finds_each_kind_of_citation(line: str, kind: str) -> None:
    found = list(problems("x.py", line, doc_pages()))
    assert len(found) == 1 and kind in found[0], found


@pytest.mark.parametrize(
    "line",
    [
        "# headers named in Connection (RFC 9110 §7.6.1) are dropped",
        "Z_A = SM3(...) (GB/T 32918.2 §5.5)",
        "# the header is not authenticated (docs/compat.md#jwe-aad-is-the-aad-member)",
        "issuer secret (docs/tls-asset.md#4-threat-model)",
        "a test named test_quirky_input",
    ],
)
def test_the_check_accepts_standards_and_existing_anchors(line: str) -> None:
    assert not list(problems("x.py", line, doc_pages()))
