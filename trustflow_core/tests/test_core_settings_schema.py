"""``trustflow_core.settings_schema``: the one validating reader of config files and backend
settings (file + dotted key path in every error, secrets never echoed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustflow_core.errors import InvalidInput, TrustflowError
from trustflow_core.settings_schema import REQUIRED, ConfigError, Node, load_yaml_file


def message(call) -> str:
    with pytest.raises(ConfigError) as caught:
        call()
    assert isinstance(caught.value, InvalidInput) and isinstance(caught.value, TrustflowError)
    return str(caught.value)


def test_key_paths_of_mappings_lists_and_odd_keys() -> None:
    root = Node({"a": {"b": [{"c": "x"}], "d.e": {"f": 1}}}, "f.yaml")
    assert message(lambda: root.get("a").get("b").elements()[0].get("c").integer()) == (
        "f.yaml: a.b[0].c: expected an integer, got 'x'"
    )
    assert message(lambda: root.get("a").get("d.e").get("f").string()) == (
        "f.yaml: a['d.e'].f: expected a non-empty string, got 1"
    )
    assert message(lambda: root.get("a").get("missing").port()) == (
        "f.yaml: a.missing: missing (an integer is required)"
    )
    assert message(lambda: root.get("a").mapping({"b"})) == (
        "f.yaml: a: unknown key(s) d.e; known: b"
    )
    assert message(lambda: root.mapping({"a", "z"}, required=("z",))) == (
        "f.yaml: missing required key(s) z"
    )


def test_defaults_and_required() -> None:
    node = Node({"n": None}, "s")
    assert node.get("n").integer(7) == 7  # null = absent
    assert node.get("absent").path(None) is None
    assert node.get("absent").boolean(True) is True
    with pytest.raises(ConfigError, match="missing"):
        node.get("absent").string(REQUIRED)


@pytest.mark.parametrize(
    ("value", "seconds"), [(1, 1.0), (0.25, 0.25), ("0.25s", 0.25), ("250ms", 0.25), ("2s", 2.0)]
)
def test_durations(value: object, seconds: float) -> None:
    assert Node({"t": value}, "s").get("t").duration() == seconds


@pytest.mark.parametrize("value", [0, -1, "0s", "fast", True, float("nan"), float("inf"), 10**400])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^s: t: expected a duration"):
        Node({"t": value}, "s").get("t").duration()
    if value in (0, "0s"):
        assert Node({"t": value}, "s").get("t").duration(zero_is_off=True) == 0


def test_secrets_are_never_echoed() -> None:
    root = Node(
        {
            "access_key_secret": 5,
            "storage": {"url": ["postgresql://u:pw@h/db"]},
            "token": "hunter2",
        },
        "f.yaml",
    )
    text = message(lambda: root.get("token").integer())
    assert "hunter2" not in text and text.endswith("got a string (not shown)")
    assert "pw" not in message(lambda: root.get("storage").get("url").string())


def test_backend_errors_are_rooted_under_the_file_and_key() -> None:
    def backend(settings: object) -> None:
        Node.settings(settings, "demo backend settings").get("timeout").number(zero_ok=False)

    assert message(lambda: backend({"timeout": 0})) == (
        "demo backend settings: timeout: expected a positive number, got 0"
    )
    node = Node({"backends": {"demo": {"timeout": 0}}}, "role.yaml").get("backends").get("demo")
    assert message(lambda: node.build(backend)) == (
        "role.yaml: backends.demo.timeout: expected a positive number, got 0"
    )

    def plain(_: object) -> None:
        raise InvalidInput("not a PEM key")

    assert message(lambda: node.build(plain)) == "role.yaml: backends.demo: not a PEM key"


def test_files(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a:\n  b: [1,\n")
    assert message(lambda: load_yaml_file(path)).startswith(
        f"{path}: not valid YAML: line 3, column 1: "
    )
    path.write_text("- 1\n")
    assert message(lambda: load_yaml_file(path)) == (
        f"{path}: expected a mapping at the top, got a list"
    )
    path.write_text("")
    assert load_yaml_file(path).value == {}
    path.write_text("cert: app.crt\n")
    assert load_yaml_file(path).get("cert").path() == tmp_path / "app.crt"
    assert load_yaml_file(path, relative_to_file=False).get("cert").path() == Path("app.crt")
    assert message(lambda: load_yaml_file(tmp_path / "none.yaml")) == (
        f"{tmp_path / 'none.yaml'}: cannot read: No such file or directory"
    )
