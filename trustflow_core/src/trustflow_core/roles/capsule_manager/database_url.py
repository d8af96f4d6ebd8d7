"""The storage URL (SQLAlchemy) as the Capsule Manager shows it: never with its password, and
with the ``trustflow-core`` extra to install when its database driver is missing.

Everything the CM prints about its storage (start-up errors, log lines, ``repr`` of its
settings and store) goes through :func:`redact`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from ...errors import InvalidInput

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

HIDDEN = "***"
#: ``scheme://user:PASSWORD@host``: the password runs to the last ``@`` before the path, so an
#: unencoded ``@`` in it is hidden too.
_USERINFO_PASSWORD = re.compile(r"^([\w+]+://[^:/@?]*:)([^/?]*)@")
#: ``...?password=PASSWORD&...`` (libpq and PyMySQL read it from the query as well).
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd)=)([^&#]*)", re.IGNORECASE)
#: The drivers the extras of trustflow-core install: (dialect, driver) -> extra.
EXTRAS = {
    ("postgresql", "psycopg"): "postgresql",
    ("mysql", "pymysql"): "mysql",
    ("mariadb", "pymysql"): "mysql",
}


def passwords(url: str) -> list[str]:
    """The password(s) in ``url`` as written and percent-decoded (longest first)."""
    found = [m.group(2) for m in (_USERINFO_PASSWORD.match(url),) if m]
    found += [m.group(2) for m in _QUERY_PASSWORD.finditer(url)]
    found += [unquote(p) for p in found]
    return sorted({p for p in found if p}, key=len, reverse=True)


def redact(text: str, url: str) -> str:
    """``text`` (the URL itself, or an error message about it) with every password of
    ``url`` replaced by ``***`` (a garbled message is better than a leaked secret)."""
    text = _USERINFO_PASSWORD.sub(lambda m: m.group(1) + HIDDEN + "@", text)
    text = _QUERY_PASSWORD.sub(lambda m: m.group(1) + HIDDEN, text)
    for secret in passwords(url):
        text = text.replace(secret, HIDDEN)
    return text


def parse(url: str) -> URL:
    """The SQLAlchemy URL; :class:`InvalidInput` (password redacted) when it is malformed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise InvalidInput(
            f"storage URL {redact(url, url)} is not a valid SQLAlchemy URL: "
            f"{redact(str(exc).splitlines()[0], url)}"
        ) from None


def missing_driver(url: URL, exc: ImportError) -> str:
    """A one-line hint for a driver module that cannot be imported: the extra to install, or
    the URL scheme whose driver an extra installs."""
    from sqlalchemy.exc import SQLAlchemyError

    backend = url.get_backend_name()
    try:
        driver = url.get_driver_name()
    except SQLAlchemyError:
        driver = "?"
    module = exc.name or driver
    extra = EXTRAS.get((backend, driver))
    if extra is not None:
        return (
            f"its database driver {module!r} cannot be imported; "
            f"install it with: pip install 'trustflow-core[{extra}]'"
        )
    for (dialect, known), extra in EXTRAS.items():
        if dialect == backend:
            return (
                f"its database driver {module!r} cannot be imported; install that, or use "
                f"{dialect}+{known}://... after: pip install 'trustflow-core[{extra}]'"
            )
    return f"its database driver {module!r} cannot be imported"


def sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for other databases and in-memory SQLite."""
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:") or url.query.get("mode") == "memory":
        return None  # a URI filename: SQLite resolves it
    return Path(database)
