"""One name, one concept: "storage" is the object-store contract (:mod:`trustflow_core.storage`,
its conformance kit and the ``storage_*`` plugins); the Capsule Manager's SQL store is its
database (``database``, ``db_models``, ``database_url``)."""

from __future__ import annotations

from pathlib import Path

import trustflow_core

PACKAGE = Path(trustflow_core.__file__).parent
#: the object-store contract and its conformance kit
OBJECT_STORE_MODULES = {"storage.py", "testing/storage.py"}


def test_only_the_object_store_contract_is_named_storage() -> None:
    named = {
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if p.stem.startswith("storage") and "proto" not in p.relative_to(PACKAGE).parts
    }
    assert named == OBJECT_STORE_MODULES
