"""The by-hand how-to pages (docs/howto/*.md) run as written: their marked commands in one
bash session against real processes on 127.0.0.1 (tests/docs_howto.py), so a renamed flag,
a changed default or a changed output breaks this test and not a reader."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from docs_howto import HOWTO_DIR, parse, remap_ports, run

PAGES = sorted(HOWTO_DIR.glob("*.md"))
ROLE_COMMANDS = ("ra-proxy", "gateway", "client", "capsule-manager", "cms", "data-capsule-proxy")


def test_every_scenario_has_a_page() -> None:
    assert {p.stem for p in PAGES} >= {"online", "offline", "interact"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_page_runs_as_written(page: Path, tmp_path: Path) -> None:
    howto = parse(page)
    assert howto.script.strip(), f"{page.name} has no <!-- run --> block"
    assert howto.expected, f"{page.name} promises no output (<!-- expect --> block)"
    assert "trustflow demo" not in howto.script, "a by-hand page must not use the demo"
    outcome = run(howto, tmp_path)
    tail = textwrap.indent(outcome.stderr[-4000:], "    ")
    assert outcome.returncode == 0, f"{page.name} failed ({outcome.returncode}):\n{tail}"
    missing = [line for line in howto.expected if line not in outcome.stdout]
    assert not missing, f"{page.name}: not printed: {missing}\nstdout:\n{outcome.stdout}\n{tail}"


def test_pages_use_the_role_commands() -> None:
    scripts = "\n".join(parse(p).script for p in PAGES)
    for command in ROLE_COMMANDS:
        assert f"trustflow {command} " in scripts, f"no how-to runs 'trustflow {command}'"


def test_a_changed_flag_fails_the_page(tmp_path: Path) -> None:
    """The runner notices a command that no longer exists (what a renamed flag looks like)."""
    page = tmp_path / "broken.md"
    page.write_text(
        "<!-- run -->\n```bash\ntrustflow ra-proxy --no-such-flag --port 8010\n```\n"
        "<!-- expect -->\n```text\nnever\n```\n"
    )
    outcome = run(parse(page), tmp_path)
    assert outcome.returncode != 0
    assert "--no-such-flag" in outcome.stderr


def test_a_marker_without_its_block_is_an_error(tmp_path: Path) -> None:
    page = tmp_path / "bad.md"
    page.write_text("<!-- run -->\n```console\ntrustflow version\n```\n")
    with pytest.raises(ValueError, match="must be ```bash"):
        parse(page)
    page.write_text("<!-- run -->\nsome text\n```bash\ntrustflow version\n```\n")
    with pytest.raises(ValueError, match="not followed by a code block"):
        parse(page)


def test_ports_are_remapped_consistently() -> None:
    script, mapping = remap_ports(
        "trustflow x --port 8010 &\ncurl http://127.0.0.1:8010/health\nendpoints: [127.0.0.1:8000]"
    )
    assert set(mapping) == {8000, 8010}
    assert f"--port {mapping[8010]}" in script
    assert f"127.0.0.1:{mapping[8010]}/health" in script
    assert f"127.0.0.1:{mapping[8000]}]" in script
