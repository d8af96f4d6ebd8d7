"""The documentation site (mkdocs.yml, docs/) stands alone and its schemas are real:

* no user-facing page links or points outside the repository (the site must be readable from
  a clone with no sibling folders): every relative link resolves to a page or file inside
  ``docs/``, and no page names a path that climbs out of the repo;
* every page under ``docs/`` is in the site's navigation;
* the configuration examples of ``docs/reference/config.md`` load with the loaders the roles
  use, so a renamed or removed key breaks this test rather than a reader's deployment.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
#: Pages outside docs/ that users read first (the site links none of them).
USER_FACING = [
    REPO / "README.md",
    *sorted((REPO / "examples").glob("*/README.md")),
    *sorted((REPO / "trustflow_core" / "src").rglob("README.md")),
]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
#: Text that names a place outside the repository: a sibling folder of the clone.
_OUTSIDE = re.compile(r"\.\./shared\b|\bshared/(?:spec|testdata)\b|\.\./\.\./\.\.")
_SCHEMA = re.compile(r"<!--\s*schema:\s*([\w-]+)\s*-->\s*\n```yaml\n(.*?)\n```", re.DOTALL)


def _links(text: str) -> list[str]:
    """Markdown link targets outside code spans and fenced blocks."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return _LINK.findall(text)


def outside_links(page: Path, root: Path) -> list[str]:
    """Links of ``page`` that do not resolve to an existing file inside ``root``."""
    bad = []
    for target in _links(page.read_text()):
        if target.startswith("#") or re.match(r"https?://|mailto:", target):
            continue
        path = target.split("#", 1)[0]
        resolved = (page.parent / path).resolve()
        if root.resolve() not in resolved.parents or not resolved.exists():
            bad.append(target)
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_site_pages_link_only_inside_the_site(page: Path) -> None:
    assert not outside_links(page, DOCS)
    assert not _OUTSIDE.findall(page.read_text())


@pytest.mark.parametrize("page", USER_FACING, ids=lambda p: str(p.relative_to(REPO)))
def test_user_facing_readmes_stay_inside_the_repo(page: Path) -> None:
    assert not outside_links(page, REPO)
    assert not _OUTSIDE.findall(page.read_text())


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    site = tmp_path / "docs"
    site.mkdir()
    (site / "a.md").write_text("ok")
    page = site / "index.md"
    sibling = "../../shared/" + "spec/README.md"  # split: the repo must not name it whole
    page.write_text(
        "[fine](a.md#x) [anchor](#y) [web](https://example.org) `[code](../x.md)`\n"
        f"[up]({sibling}) [missing](b.md)\n"
    )
    assert outside_links(page, site) == [sibling, "b.md"]
    assert _OUTSIDE.findall(f"see {sibling}")


def test_every_page_is_in_the_navigation() -> None:
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]

    def files(node: Any) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [f for item in node for f in files(item)]
        return [f for value in node.values() for f in files(value)]

    listed = set(files(nav))
    assert listed == {str(p.relative_to(DOCS)) for p in PAGES}


def _schemas() -> dict[str, str]:
    found = _SCHEMA.findall((DOCS / "reference" / "config.md").read_text())
    return dict(found)


def test_config_reference_shows_every_schema() -> None:
    assert set(_schemas()) == {"capsule-manager", "gateway", "cm-init", "cms", "key-exchange"}


def test_capsule_manager_schema_loads(tmp_path: Path) -> None:
    from trustflow_core.roles.capsule_manager.settings import load_settings

    path = tmp_path / "cm.yaml"
    path.write_text(_schemas()["capsule-manager"])
    settings = load_settings(path)
    assert settings.port == 8888
    assert settings.tls is not None and settings.tls.client_ca_file is not None
    assert settings.replicas is not None and settings.replicas.join == ("cm-0.cm:8888",)


def test_gateway_schema_loads(tmp_path: Path) -> None:
    from trustflow_core.roles.gateway.config import parse_config

    config = parse_config(yaml.safe_load(_schemas()["gateway"]), base=tmp_path)
    assert [listener.name for listener in config.listeners] == ["public", "egress", "mtls_ingress"]
    assert set(config.clusters) == {"ra_proxy", "teeapp", "peer"}


def test_cm_init_schema_loads(tmp_path: Path) -> None:
    from trustflow_core.roles.data_capsule_proxy.cm_init import load_cm_init

    path = tmp_path / "cm_init.yaml"
    path.write_text(_schemas()["cm-init"])
    assert load_cm_init(path).op_name == "interact"


def test_key_exchange_schema_builds_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented capsule_manager settings, every key given, build the backend."""
    from trustflow_core.cli.util import generate_self_signed
    from trustflow_core.roles.capsule_manager_client.keyexchange import (
        CapsuleManagerKeyExchange,
    )

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRUSTFLOW_SIM_DIR", str(tmp_path / "sim"))
    key_pem, cert_pem, _ = generate_self_signed(days=1)
    (tmp_path / "app.key").write_bytes(key_pem)
    (tmp_path / "app.crt").write_bytes(cert_pem)
    settings = yaml.safe_load(_schemas()["key-exchange"])
    backend = CapsuleManagerKeyExchange.from_settings(settings)
    assert backend.attester is not None


def test_cms_schema_has_a_section_per_command(tmp_path: Path) -> None:
    """The documented owner YAML passes the cms reader (every key known, both rules parse)
    and has a section for every command that reads one."""
    from trustflow_core.roles.capsule_manager_client.cms_cli import (
        cms,
        load_config,
        rule_from_config,
    )

    path = tmp_path / "owner.yaml"
    path.write_text(_schemas()["cms"])
    root = load_config(path)
    assert root.get("host").string()
    assert rule_from_config(root.get("register_data_policy").get("rules").elements()[0]).rule_id
    assert rule_from_config(root.get("add_data_rule").get("rule")).rule_id == "r2"
    # init writes the file; audit takes its filters as options only
    without_section = {"get-public-key", "register-cert", "init", "audit"}
    commands = {name.replace("-", "_") for name in set(cms.commands) - without_section}
    assert commands <= set(root.value), f"undocumented sections: {commands - set(root.value)}"


def _pb2_modules() -> dict[str, Any]:
    """proto file (relative to proto/) -> its generated module."""
    import importlib

    modules = {}
    for proto in sorted((REPO / "proto").rglob("*.proto")):
        relative = proto.relative_to(REPO / "proto").with_suffix("")
        name = "trustflow_core.proto." + ".".join(relative.parts) + "_pb2"
        modules[str(relative) + ".proto"] = importlib.import_module(name)
    return modules


def test_grpc_reference_covers_every_message_field_and_rpc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The generated gRPC page (scripts/mkdocs_hooks.py) lists exactly what the compiled
    descriptors hold: every message with its fields and numbers, every enum value, every rpc."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "scripts/mkdocs_hooks.py")
    assert spec and spec.loader
    hooks = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "docs_hooks", hooks)
    monkeypatch.delitem(sys.modules, "trustflow_docs_cli", raising=False)
    spec.loader.exec_module(hooks)
    for relative, module in _pb2_modules().items():
        package, blocks = hooks.parse_proto((REPO / "proto" / relative).read_text())
        file = module.DESCRIPTOR
        assert package == file.package
        parsed = {(b.kind, b.name): b for b in blocks}

        def walk(messages: Any, prefix: str = "") -> dict[str, Any]:
            found = {}
            for message in messages:
                if message.GetOptions().map_entry:  # map<K, V>: not declared in the file
                    continue
                found[prefix + message.name] = message
                found |= walk(message.nested_types, prefix + message.name + ".")
            return found

        messages = walk(file.message_types_by_name.values())
        assert {n for k, n in parsed if k == "message"} == set(messages), relative
        for name, message in messages.items():
            rows = {(r[0], int(r[2])) for r in parsed["message", name].rows}
            assert rows == {(f.name, f.number) for f in message.fields}, f"{relative} {name}"
        enums = {e.full_name.removeprefix(file.package + "."): e for e in _all_enums(file)}
        assert {n for k, n in parsed if k == "enum"} == set(enums), relative
        for name, enum in enums.items():
            values = {(r[0], int(r[1])) for r in parsed["enum", name].rows}
            assert values == {(v.name, v.number) for v in enum.values}
        for service in file.services_by_name.values():
            rpcs = {
                (r[0], r[1].split(".")[-1], r[2].split(".")[-1])
                for r in parsed["service", service.name].rows
            }
            assert rpcs == {
                (m.name, m.input_type.name, m.output_type.name) for m in service.methods
            }


def _all_enums(file: Any) -> list[Any]:
    found = list(file.enum_types_by_name.values())
    stack = list(file.message_types_by_name.values())
    while stack:
        message = stack.pop()
        found += message.enum_types
        stack += message.nested_types
    return found


def test_online_envoy_example_is_the_native_one(tmp_path: Path) -> None:
    """examples/online/envoy.yml (the Envoy form the docs point at) loads with the gateway's
    parser and describes the same gateway as the native YAML of docs/howto/online.md."""
    from trustflow_core.roles.gateway.config import load_config, parse_config

    envoy = load_config(REPO / "examples/online/envoy.yml", path_map={"/deploy": str(tmp_path)})
    page = (DOCS / "howto" / "online.md").read_text()
    native_yaml = re.search(r"cat > gateway.yaml <<'EOF'\n(.*?)\nEOF", page, re.DOTALL)
    assert native_yaml, "the online how-to writes gateway.yaml"
    native = parse_config(yaml.safe_load(native_yaml.group(1)), base=tmp_path)
    for config in (envoy, native):
        [listener] = config.listeners
        assert str(listener.address) == "127.0.0.1:50001"
        assert [(r.prefix, r.cluster) for r in listener.routes] == [
            ("/RaProxy", "ra_proxy"),
            ("/teeapp", "teeapp"),
        ]
        assert listener.jwe is not None
        assert listener.jwe.cert_path == tmp_path / "app.crt"
        assert {n: [str(a) for a in c.endpoints] for n, c in config.clusters.items()} == {
            "ra_proxy": ["127.0.0.1:50002"],
            "teeapp": ["127.0.0.1:8000"],
        }
