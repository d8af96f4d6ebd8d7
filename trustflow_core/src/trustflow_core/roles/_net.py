"""One readable line for a failed network call, for the roles' command-line clients
(``trustflow client``, ``trustflow cms``): what was called, and why it failed in plain words
(connection refused, unknown host, TLS handshake, timeout, connection closed) instead of the
library's exception repr (``ClientConnectorError(ConnectionKey(...))``) or gRPC's status text.

Neither aiohttp nor grpc is imported here: the callers hand over their exception, which is
recognized by its type's module and attributes, so each role needs only its own stack.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from typing import Any

#: gRPC UNAVAILABLE details, by what they say, and the plain words for them.
_GRPC_UNAVAILABLE = (
    (re.compile(r"connection refused", re.I), "connection refused"),
    (re.compile(r"domain name not found|dns|resolv|lookup", re.I), "unknown host"),
    (re.compile(r"handshake|ssl|tls|certificate", re.I), "TLS handshake failed"),
    (re.compile(r"timed? ?out|deadline", re.I), "connection timed out"),
    (re.compile(r"network is unreachable|no route to host", re.I), "network unreachable"),
    (re.compile(r"connection reset|socket closed|broken pipe", re.I), "connection closed"),
)


def _os_reason(error: BaseException | None) -> str:
    """Plain words for a socket-level error."""
    if isinstance(error, socket.gaierror):
        return "unknown host"
    if isinstance(error, ssl.SSLError):
        reason = getattr(error, "reason", None) or getattr(error, "verify_message", None)
        return f"TLS handshake failed ({reason or error})"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, (TimeoutError, asyncio.TimeoutError)):
        return "connection timed out"
    if isinstance(error, OSError):
        return (error.strerror or str(error) or type(error).__name__).rstrip(".").lower()
    return str(error) if error is not None else "connection failed"


def http_failure(exc: BaseException, target: str, action: str, timeout: float | None = None) -> str:
    """``<target> is unreachable: connection refused (<action>)`` and the like, for an aiohttp
    client error or a timeout raised while doing ``action`` (e.g. ``POST /RaProxy/GetRaCert``)
    against ``target`` (e.g. ``gateway http://127.0.0.1:50001``)."""
    name = type(exc).__name__
    # asyncio.TimeoutError is TimeoutError from Python 3.11 on, a class of its own on 3.10
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or name in (
        "ServerTimeoutError",
        "ConnectionTimeoutError",
    ):
        within = f" within {timeout:g} s" if timeout else ""
        return f"{target}: no answer{within} ({action})"
    os_error: Any = getattr(exc, "os_error", None)  # aiohttp.ClientConnectorError and subclasses
    if os_error is not None or name.startswith("ClientConnector"):
        if "Certificate" in name or "SSL" in name:
            reason = f"TLS handshake failed ({_first_line(exc)})"
        else:
            reason = _os_reason(os_error)
        return f"{target} is unreachable: {reason} ({action})"
    if name == "ServerDisconnectedError":
        return f"{target} closed the connection without an answer ({action})"
    if name.startswith("InvalidUrl") or name == "InvalidURL":
        return f"{target}: not a valid URL ({action})"
    return f"{target}: {_first_line(exc) or name} ({action})"


def grpc_failure(target: str, method: str, code: str, details: str | None) -> str:
    """``capsule manager <target> is unreachable: connection refused`` and the like, for a
    gRPC call ``method`` that ended with status ``code`` (its name) and ``details``."""
    details = (details or "").strip()
    if code == "UNAVAILABLE":
        for pattern, words in _GRPC_UNAVAILABLE:
            if pattern.search(details):
                return f"capsule manager {target} is unreachable: {words} ({method})"
        return f"capsule manager {target} is unavailable: {_first_line(details)} ({method})"
    if code == "DEADLINE_EXCEEDED":
        return f"capsule manager {target}: no answer to {method} in time"
    return f"capsule manager {target}: {method} failed: {code} {_first_line(details)}".strip()


def grpc_reason(code: str, details: str | None) -> str:
    """Why a gRPC call failed in plain words (``connection refused``, ``no answer in time``,
    ...), without the target and method :func:`grpc_failure` adds."""
    details = (details or "").strip()
    if code == "UNAVAILABLE":
        for pattern, words in _GRPC_UNAVAILABLE:
            if pattern.search(details):
                return words
        return f"unavailable: {_first_line(details)}".rstrip(": ")
    if code == "DEADLINE_EXCEEDED":
        return "no answer in time"
    return f"{code} {_first_line(details)}".strip()


def _first_line(value: object) -> str:
    lines = str(value).strip().splitlines()
    return lines[0] if lines else ""
