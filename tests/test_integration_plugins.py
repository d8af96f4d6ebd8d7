"""The installed distributions as a whole: the real `trustflow` command lists every plugin,
including the third-party example, and every backend has a conformance-kit subclass."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

from trustflow_core.manager import get_plugin_manager
from trustflow_core.registry import list_plugins

REPO = Path(__file__).resolve().parents[1]
KIT_CLASSES = {
    "AttesterConformance",
    "VerifierConformance",
    "KeyExchangeConformance",
    "StorageConformance",
    "EnvelopeChannelConformance",
    "TransportChannelConformance",
}
EXPECTED = {
    "core": ("trustflow-core", {("key_exchange", "static"), ("key_exchange", "capsule_manager")}),
    "tee_sim": ("trustflow-tee-sim", {("attester", "sim"), ("verifier", "sim")}),
    "storage_local": ("trustflow-storage-local", {("storage", "local")}),
    "channel_jwe": ("trustflow-channel-jwe", {("channel", "jwe")}),
    "storage_memory": ("trustflow-storage-memory", {("storage", "memory")}),
    "tee_mirage": ("trustflow-tee-mirage", {("attester", "mirage"), ("verifier", "mirage")}),
    "channel_mtls": ("trustflow-channel-mtls", {("channel", "mtls")}),
    "tee_tdx": ("trustflow-tee-tdx", {("attester", "tdx"), ("verifier", "tdx")}),
    "tee_csv": ("trustflow-tee-csv", {("attester", "csv"), ("verifier", "csv")}),
    "storage_oss": ("trustflow-storage-oss", {("storage", "s3"), ("storage", "oss")}),
}
#: Backends that need TEE hardware: on a plain host they must say so, with a reason.
HARDWARE = {("attester", "tdx"), ("attester", "csv")}


def trustflow(*args: str) -> str:
    exe = shutil.which("trustflow", path=str(Path(sys.executable).parent)) or "trustflow"
    done = subprocess.run([exe, *args], capture_output=True, text=True, check=True, timeout=60)
    return done.stdout


def test_trustflow_plugins_json_lists_every_installed_plugin():
    listed = {p["name"]: p for p in json.loads(trustflow("plugins", "--json"))}
    for name, (dist, backends) in EXPECTED.items():
        assert listed[name]["dist"] == dist
        assert {(b["kind"], b["name"]) for b in listed[name]["backends"]} == backends
        for backend in listed[name]["backends"]:
            if (backend["kind"], backend["name"]) in HARDWARE:
                assert backend["viable"] or backend["reason"]
            else:
                assert backend["viable"], backend
        assert listed[name]["error"] is None


def test_trustflow_plugins_text_names_hooks_and_simulation():
    text = trustflow("plugins", "--hook", "trustflow_register_attesters")
    assert "tee_sim  (trustflow-tee-sim" in text
    assert "simulated" in text
    assert "storage_local" not in text


def _kit_subclasses_by_backend() -> dict[str, set[str]]:
    """Backend class names referenced by test modules that subclass a conformance kit."""
    found: dict[str, set[str]] = {}
    for path in [
        *REPO.glob("plugins/*/tests/*.py"),
        *REPO.glob("*/tests/*.py"),
        *REPO.glob("examples/*/tests/*.py"),
    ]:
        tree = ast.parse(path.read_text())
        kits = {
            base.id
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef)
            for base in node.bases
            if isinstance(base, ast.Name) and base.id in KIT_CLASSES
        }
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for name in names:
            found.setdefault(name, set()).update(kits)
    return found


def test_every_installed_backend_has_a_conformance_subclass():
    referenced = _kit_subclasses_by_backend()
    missing = []
    for plugin in list_plugins(get_plugin_manager()):
        for backend in plugin.backends:
            class_name = backend.cls.rsplit(".", 1)[1]
            if not referenced.get(class_name):
                missing.append(f"{plugin.name}: {backend.kind} {backend.name} ({class_name})")
    assert missing == []
