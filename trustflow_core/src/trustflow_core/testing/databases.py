"""Throwaway databases (a SQLite file, or one on the PostgreSQL and MariaDB/MySQL servers) for
the Capsule Manager's tests and benchmarks.

Admin URLs come from ``TRUSTFLOW_CM_POSTGRES_ADMIN_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``) and ``TRUSTFLOW_CM_MYSQL_ADMIN_URL``
(default ``mysql+pymysql://root@127.0.0.1:3306/mysql``). :func:`throwaway_database` creates a
database with a random name, yields its URL and drops it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

ADMIN_URLS = {
    "postgresql": (
        "TRUSTFLOW_CM_POSTGRES_ADMIN_URL",
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    ),
    "mysql": ("TRUSTFLOW_CM_MYSQL_ADMIN_URL", "mysql+pymysql://root@127.0.0.1:3306/mysql"),
}
BACKENDS = ("sqlite", "postgresql", "mysql")


def admin_url(kind: str) -> str:
    env, default = ADMIN_URLS[kind]
    return os.environ.get(env, default)


@contextlib.contextmanager
def throwaway_database(kind: str, tmp_dir: Path | None = None) -> Iterator[str]:
    """Yield the URL of a fresh, empty database of ``kind`` (``sqlite``, ``postgresql``,
    ``mysql``) and drop it afterwards."""
    from sqlalchemy import create_engine, make_url, text

    name = f"trustflow_cm_test_{secrets.token_hex(6)}"
    if kind == "sqlite":
        if tmp_dir is None:
            raise ValueError("sqlite needs tmp_dir")
        yield f"sqlite:///{tmp_dir / (name + '.db')}"
        return
    admin = make_url(admin_url(kind))
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        try:
            yield admin.set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect() as conn:
                if kind == "postgresql":
                    conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                else:
                    conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
    finally:
        engine.dispose()
