"""The roles' logging: one setup for every role, ``text`` or ``json`` lines, and the request id.

Every role process calls :func:`setup_logging` once (``--log-path``, ``--log-level``,
``--log-level-for``, ``--log-format``). Both formats carry the same fields:

* ``text``: ``<time> [<LEVEL>] [<logger>] [req <id>] <message>`` (``[req <id>]`` only on the
  lines of a request);
* ``json``: one JSON object per line: ``time`` (UTC, RFC 3339 with milliseconds), ``level``,
  ``logger``, ``message``, ``request_id`` (on the lines of a request), ``role`` (when the
  command named one), ``pid`` and ``exception`` (the formatted traceback, when one is logged).

The request id of the request being served lives in a context variable: the HTTP roles take it
from the incoming ``x-request-id`` header (or make a new one) when a request arrives
(:func:`accept_request_id`), the gateway passes it on to the app in that header, the Capsule
Manager client sends it as ``x-request-id`` gRPC metadata, and the Capsule Manager takes it from
there. ``asyncio.to_thread`` copies the context, so work done in threads for a request logs
with its id too.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone

# re-exported: the roles take request ids from here (compiled with the gateway in _request_ids)
from ._request_ids import accept_request_id as accept_request_id
from ._request_ids import new_request_id as new_request_id

#: Header (HTTP) and metadata key (gRPC) carrying the request id; lower case, as gRPC needs.
REQUEST_ID_HEADER = "x-request-id"
LOG_FORMATS = ("text", "json")
#: Level of the loggers outside the project (grpc, SQLAlchemy, the CEL library, aiohttp, ...):
#: at DEBUG the CEL library alone logs its evaluation internals, gigabytes for a few requests.
LIBRARY_LEVEL = "WARNING"
TEXT_FORMAT = "%(asctime)s [%(levelname)s] [%(name)s]%(request_tag)s %(message)s"
_HANDLER_FLAG = "_trustflow_role_handler"

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "trustflow_request_id", default=None
)

LoggingArgs = tuple[str | None, str, tuple[tuple[str, str], ...], str, str | None]
_logging_args: LoggingArgs | None = None


# ---- request ids -------------------------------------------------------------------------


def current_request_id() -> str | None:
    """The id of the request being served in this context, None outside a request."""
    return _request_id.get()


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[str]:
    """Log every line of the block (and of the tasks and threads it starts) with
    ``request_id``; restore the previous id afterwards."""
    token = _request_id.set(request_id)
    try:
        yield request_id
    finally:
        _request_id.reset(token)


# ---- formatting --------------------------------------------------------------------------


class _RequestIdFilter(logging.Filter):
    """Add ``request_id`` and ``request_tag`` (`` [req <id>]`` or empty) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = _request_id.get()
        record.request_id = rid
        record.request_tag = f" [req {rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record (fields in the module docstring)."""

    def __init__(self, role: str | None = None) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, timezone.utc)
        line: dict[str, object] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            line["request_id"] = rid
        if self.role:
            line["role"] = self.role
        line["pid"] = record.process
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


def make_formatter(log_format: str, role: str | None = None) -> logging.Formatter:
    """The formatter of ``log_format`` (``text`` or ``json``)."""
    if log_format == "json":
        return JsonFormatter(role)
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format must be one of {LOG_FORMATS}, got {log_format!r}")


# ---- setup -------------------------------------------------------------------------------


def project_loggers() -> set[str]:
    """The top-level logger names of the project: ``trustflow``, ``trustflow_core`` and the
    top-level package of every installed ``trustflow`` plugin entry point."""
    from importlib import metadata

    from ..manager import ENTRY_POINT_GROUP

    names = {"trustflow", "trustflow_core"}
    names.update(ep.module.split(".")[0] for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
    return names


def logging_args() -> LoggingArgs | None:
    """The arguments of the last :func:`setup_logging` call (None: not called), so that worker
    processes set up their logging the same way (``setup_logging(*logging_args())``)."""
    return _logging_args


def setup_logging(
    log_path: str | None,
    level: str = "info",
    levels_for: Iterable[tuple[str, str]] = (),
    log_format: str = "text",
    role: str | None = None,
) -> None:
    """Log to ``log_path`` (appending) or, when None, to stderr, in ``log_format`` (``text``
    or ``json``, see the module docstring; ``role`` is the ``role`` field of JSON lines): the
    project's loggers (:func:`project_loggers`) at ``level``, every other logger at
    :data:`LIBRARY_LEVEL`, and the loggers named in ``levels_for`` (``(name, level)`` pairs)
    at their own level.

    Calling it again replaces the handler it installed before."""
    global _logging_args
    formatter = make_formatter(log_format, role)
    levels_for = tuple(levels_for)
    _logging_args = (log_path, level, levels_for, log_format, role)
    handler: logging.Handler = (
        logging.FileHandler(log_path, encoding="utf-8") if log_path else logging.StreamHandler()
    )
    handler.setFormatter(formatter)
    handler.addFilter(_RequestIdFilter())
    setattr(handler, _HANDLER_FLAG, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_FLAG, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LIBRARY_LEVEL)
    for name in project_loggers():
        logging.getLogger(name).setLevel(level.upper())
    for name, named_level in levels_for:
        logging.getLogger(name).setLevel(named_level.upper())
