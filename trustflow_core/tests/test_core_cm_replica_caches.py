"""Everything the Capsule Manager keeps in process memory across requests was reviewed for
replicas (issue 16, docs/replica-state.md "What a replica keeps in memory"): a cache must be
keyed by immutable content (text or bytes -> the value parsed from them), never by a mutable
identity (a data_uuid -> its policy), because another replica may change what that identity
names at any moment. This test finds every cache-like thing in the CM's modules
(``functools`` caches, module-level and instance containers) and fails on one that is not in
:data:`REVIEWED` with its reason and in the document: a new cache gets reviewed, not merged
by accident."""

from __future__ import annotations

import ast
from pathlib import Path

import trustflow_core.roles as roles

DOC = Path(__file__).resolve().parents[2] / "docs" / "replica-state.md"
PACKAGES = ("capsule_manager", "capsule_manager_protocol")
CONTAINERS = {"dict", "set", "list", "OrderedDict", "defaultdict", "deque"}
CACHE_DECORATORS = {"lru_cache", "cache", "cached_property"}

#: name -> why it stays correct when another replica writes.
REVIEWED = {
    "capsule_manager.access_reads._statements": "SQL text by placeholder style and counts",
    "capsule_manager.constraint_cost.parse": "CEL expression text -> parse tree",
    "capsule_manager.constraint_eval._compiled": "CEL expression text -> program",
    "capsule_manager.database._rule": "rule JSON text -> parsed immutable Rule",
    "capsule_manager.envelope.recipient_from_cert_pem": "certificate PEM text -> its RSA key",
    "capsule_manager.service._cert_sha256": "certificate PEM text -> fingerprint",
    "capsule_manager.server.CapsuleManager._verifiers": "platform -> verifier built from "
    "this replica's settings (configuration, not data)",
    "capsule_manager.audit_log.AuditLog._good_head": "the last stored head whose signature "
    "verified, by its content (size, root, time, signature)",
    "capsule_manager_protocol.merkle.Tree._levels": "the audit log's verified prefix: leaf "
    "hashes of rows read back from the database (append-only; rows other replicas append are "
    "read and MAC-checked before they join it)",
    "capsule_manager.audit_appends._sql": "SQL text by statement, placeholder style, counts",
    "capsule_manager.audit_appends._one_statement_sql": "SQL text by counts",
    "capsule_manager.audit_appends._SHARE_LOCK": "constant",
    "capsule_manager.constraint_sandbox.Sandbox._all": "this process's CEL worker processes",
    "capsule_manager.worker_threads.WorkerThreads._threads": "this process's worker threads",
    "capsule_manager.commands.COMMANDS": "constant",
    "capsule_manager.database_url.EXTRAS": "constant",
    "capsule_manager.envelope.KEY_ALGS": "constant",
    "capsule_manager.envelope.OTHER_RFC_ALGS": "constant",
    "capsule_manager.envelope.ENCS": "constant",
    "capsule_manager.envelope.UNSUPPORTED_ENCS": "constant",
    "capsule_manager.envelope.JWS_ALGS": "constant",
    "capsule_manager.migrations.STEPS": "constant",
    "capsule_manager.settings.TOP_KEYS": "constant",
    "capsule_manager.settings.REPLICA_KEYS": "constant",
    "capsule_manager.settings.CMSettings.attester": "settings (frozen)",
    "capsule_manager.settings.CMSettings.verifiers": "settings (frozen)",
}


def _container(value: ast.expr) -> bool:
    if isinstance(value, ast.Dict | ast.Set | ast.List | ast.DictComp | ast.SetComp):
        return True
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    if name in CONTAINERS:
        return True
    return name == "field" and any(
        kw.arg == "default_factory" and isinstance(kw.value, ast.Name) and kw.value.id in CONTAINERS
        for kw in value.keywords
    )


def _targets(node: ast.stmt) -> list[ast.expr]:
    if isinstance(node, ast.Assign) and _container(node.value):
        return list(node.targets)
    if isinstance(node, ast.AnnAssign) and node.value is not None and _container(node.value):
        return [node.target]
    return []


def found() -> set[str]:
    """The cache-like names in the CM's modules (``package.module[.Class].name``)."""
    names = set()
    for package in PACKAGES:
        for path in sorted((Path(roles.__file__).parent / package).glob("*.py")):
            tree = ast.parse(path.read_text())
            module = f"{package}.{path.stem}"
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    for deco in node.decorator_list:
                        target = deco.func if isinstance(deco, ast.Call) else deco
                        name = getattr(target, "attr", None) or getattr(target, "id", "")
                        if name in CACHE_DECORATORS:
                            names.add(f"{module}.{node.name}")
            for node in tree.body:
                names |= {f"{module}.{t.id}" for t in _targets(node) if isinstance(t, ast.Name)}
                if not isinstance(node, ast.ClassDef):
                    continue
                for sub in ast.walk(node):
                    for t in _targets(sub) if isinstance(sub, ast.stmt) else []:
                        if isinstance(t, ast.Attribute) and getattr(t.value, "id", "") == "self":
                            names.add(f"{module}.{node.name}.{t.attr}")
                        elif isinstance(t, ast.Name) and sub in node.body:
                            names.add(f"{module}.{node.name}.{t.id}")
    return names


def test_every_cache_was_reviewed_for_replicas() -> None:
    unreviewed = found() - set(REVIEWED)
    assert unreviewed == set(), "review for replicas (docs/replica-state.md)"


def test_every_reviewed_cache_is_documented() -> None:
    text = DOC.read_text()
    missing = [
        name
        for name, why in REVIEWED.items()
        if why not in ("constant", "settings (frozen)") and name.rsplit(".", 1)[1] not in text
    ]
    assert missing == []


def test_the_scan_finds_a_cache_keyed_by_identity(tmp_path: Path) -> None:
    """The scanner sees the kind of cache that breaks replicas (a policy per data_uuid)."""
    source = (
        "import functools\n"
        "class Store:\n"
        "    def __init__(self):\n"
        "        self._policies: dict[str, object] = {}\n"
        "@functools.lru_cache\n"
        "def policy_of(data_uuid): ...\n"
    )
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    init = cls.body[0]
    assert isinstance(init, ast.FunctionDef)
    assert [ast.unparse(t) for t in _targets(init.body[0])] == ["self._policies"]
