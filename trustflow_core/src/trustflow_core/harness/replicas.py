"""Capsule Manager replicas on one machine, for tests and benchmarks: the files of one shared
identity (the CM key pair and the storage key, as every replica of a deployment shares them)
and whether a database server answers (docs/replica-state.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..testing.databases import admin_url


def shared_identity(root: Path) -> list[str]:
    """Create the CM key pair (``cm.key`` 0600, ``cm.crt``) and the storage key
    (``storage.key`` 0600) in ``root``; return the ``trustflow capsule-manager`` flags that
    make a replica use them."""
    from ..roles.capsule_manager import identity_keys
    from ..roles.capsule_manager.sealing import write_key

    key_file, cert_file, storage_key = root / "cm.key", root / "cm.crt", root / "storage.key"
    identity_keys.load_or_create(key_file, cert_file)
    write_key(storage_key, os.urandom(32))
    return [
        *("--private-key-file", str(key_file)),
        *("--cert-file", str(cert_file)),
        *("--storage-key-file", str(storage_key)),
    ]


def unreachable(kind: str) -> str | None:
    """Why the ``kind`` (``postgresql``, ``mysql``) server of
    :func:`~.databases.admin_url` cannot be used here (driver missing, no answer), or None."""
    from sqlalchemy import create_engine, text

    module = {"postgresql": "psycopg", "mysql": "pymysql"}[kind]
    try:
        __import__(module)
    except ImportError as exc:
        return f"its driver {module} cannot be imported: {exc}"
    engine = create_engine(admin_url(kind), connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # no server on this machine, refused login, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"{kind} at {engine.url.host}:{engine.url.port} is not reachable: {first}"
    finally:
        engine.dispose()
    return None
