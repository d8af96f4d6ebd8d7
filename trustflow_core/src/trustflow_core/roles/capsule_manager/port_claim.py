"""One Capsule Manager per port.

gRPC binds its listening sockets with ``SO_REUSEPORT`` by default, so a second CM started on a
port in use would start silently and the kernel would split the clients between two brokers
with different databases. The CM therefore binds in one of three ways (:data:`Sharing`):

* ``exclusive`` (no ``--workers``): without ``SO_REUSEPORT`` (gRPC option
  ``grpc.so_reuseport=0``): the kernel refuses the bind, atomically, while anything listens
  on the port; a listener that comes later is refused as well.
* ``first`` (the process that starts ``--workers``): the workers must share the port, so
  they bind with ``SO_REUSEPORT``. Before it binds, the first process (1) claims the port by
  binding the abstract Unix socket ``@trustflow-capsule-manager-port-<port>`` — abstract
  sockets live in the network namespace like the port itself, need no file, and the kernel
  releases the claim when the process ends, so two CMs started at once with ``--workers`` on
  one port cannot both pass; and (2) checks that nothing listens on the port, with a probe
  socket bound without ``SO_REUSEPORT``. A CM without workers that comes later is refused by
  the kernel (its socket lacks ``SO_REUSEPORT``).
* ``worker``: binds with ``SO_REUSEPORT`` into the first process's port, without checks.

What remains: a program run by the same user that binds the port with ``SO_REUSEPORT`` itself
(e.g. another gRPC server with default options) can join the workers' port. Nobody else can:
the kernel shares a ``SO_REUSEPORT`` port only between sockets of one user.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Literal

from ...errors import BackendUnavailable

Sharing = Literal["exclusive", "first", "worker"]
CLAIM_NAME = "\0trustflow-capsule-manager-port-{port}"


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


def refusal(host: str, port: int, exc: OSError | None) -> BackendUnavailable:
    """The one-line start-up error for ``host:port``."""
    reason = "gRPC could not bind it"
    if exc is not None:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return BackendUnavailable(f"cannot listen on {host}:{port}: {reason}")


def check_free(host: str, port: int) -> None:
    """Raise :func:`refusal` when something listens on ``host:port`` (other failures, e.g. an
    IPv6 address this host lacks, are left to gRPC's own bind)."""
    exc = bind_error(host, port)
    if exc is not None and exc.errno == errno.EADDRINUSE:
        raise refusal(host, port, exc)


def claim(host: str, port: int) -> socket.socket | None:
    """Claim ``port`` for the processes of this CM (``first``); keep the returned socket open
    while they serve (None where abstract Unix sockets do not exist: no claim, the check
    alone). Raise :class:`BackendUnavailable` when another CM holds the claim."""
    if not sys.platform.startswith("linux"):
        return None
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        held.bind(CLAIM_NAME.format(port=port))
    except OSError:
        held.close()
        raise BackendUnavailable(
            f"cannot listen on {host}:{port}: another Capsule Manager with --workers "
            "serves this port"
        ) from None
    return held
