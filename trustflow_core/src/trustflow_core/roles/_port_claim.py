"""One server per port, for every role.

gRPC binds its listening sockets with ``SO_REUSEPORT`` by default, and the processes of a
role started with ``--workers`` must share their ports with it; either way a second server
started on a port in use could start silently and the kernel would split the clients between
two servers (for the Capsule Manager: two brokers with different databases). So every listener
is bound in one of three ways (:data:`Sharing`, chosen by :mod:`._server`):

* ``exclusive`` (no ``--workers``): without ``SO_REUSEPORT``: the kernel refuses the bind,
  atomically, while anything listens on the port; a listener that comes later is refused too.
* ``first`` (the process that starts ``--workers``): the workers must share the port, so they
  bind with ``SO_REUSEPORT``. Before it binds, the first process (1) claims the port by binding
  the abstract Unix socket ``@trustflow-port-<port>`` -- abstract sockets live in the network
  namespace like the port itself, need no file, and the kernel releases the claim when the
  process ends, so two servers started at once with ``--workers`` on one port cannot both
  pass; and (2) checks that nothing listens on the port, with a probe socket bound without
  ``SO_REUSEPORT``. A server without workers that comes later is refused by the kernel (its
  socket lacks ``SO_REUSEPORT``).
* ``worker``: binds with ``SO_REUSEPORT`` into the first process's port, without checks.

What remains: a program run by the same user that binds the port with ``SO_REUSEPORT`` itself
(e.g. another gRPC server with default options) can join the workers' port. Nobody else can:
the kernel shares a ``SO_REUSEPORT`` port only between sockets of one user.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Literal

from ..errors import BackendUnavailable

Sharing = Literal["exclusive", "first", "worker"]
CLAIM_NAME = "\0trustflow-port-{port}"


def bind_error(host: str, port: int) -> OSError | None:
    """Why a socket without ``SO_REUSEPORT`` cannot listen on ``host:port`` now (every
    address ``host`` resolves to), or None when it can."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return OSError(errno.EADDRNOTAVAIL, exc.strerror)
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no use
            try:
                probe.bind(address)
                probe.listen(1)
            except OSError as exc:
                return exc
    return None


def check_free(host: str, port: int) -> None:
    """Raise :class:`OSError` (``EADDRINUSE``) when something listens on ``host:port``. Other
    failures, e.g. an IPv6 address this host lacks, are left to the listener's own bind."""
    exc = bind_error(host, port)
    if exc is not None and exc.errno == errno.EADDRINUSE:
        raise exc


def claim(host: str, port: int) -> socket.socket | None:
    """Claim ``port`` for the processes of one server (``first``); keep the returned socket
    open while they serve (None where abstract Unix sockets do not exist: no claim, the check
    alone). Raise :class:`BackendUnavailable` when another server with workers holds it."""
    if not sys.platform.startswith("linux"):
        return None
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        held.bind(CLAIM_NAME.format(port=port))
    except OSError:
        held.close()
        raise BackendUnavailable(
            f"cannot listen on {host}:{port}: another trustflow server with --workers "
            "serves this port"
        ) from None
    return held
