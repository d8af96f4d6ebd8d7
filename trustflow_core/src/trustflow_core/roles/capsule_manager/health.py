"""The Capsule Manager's health: the standard gRPC health service (``grpc.health.v1.Health``)
on the CM's own port, reflecting whether its database answers.

Every ``interval`` seconds (and at start) the database is read once (:meth:`Database.ping`);
the overall status (service ``""``) and the CM service's status
(``secretflowapis.v2.sdc.capsule_manager.CapsuleManager``) become ``SERVING`` when it answered
and ``NOT_SERVING`` when it did not. ``trustflow_db_up`` follows, and each change is logged once
(the database URL redacted). On shutdown both become ``NOT_SERVING`` for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .. import _metrics
from . import database_url
from .database import Database

log = logging.getLogger(__name__)
CM_SERVICE = "secretflowapis.v2.sdc.capsule_manager.CapsuleManager"
SERVICES = ("", CM_SERVICE)
#: Seconds between two database checks.
DEFAULT_INTERVAL = 5.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DatabaseHealth:
    """The health servicer and the task that keeps it up to date (module docstring)."""

    def __init__(self, store: Database, url: str, interval: float = DEFAULT_INTERVAL) -> None:
        self.store = store
        self.url = url
        self.interval = interval
        self.servicer = health.aio.HealthServicer()
        self.problem: str | None = "not checked yet"
        self._task: asyncio.Task[None] | None = None

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register ``grpc.health.v1.Health`` on ``server`` (before it starts)."""
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def check(self) -> str | None:
        """Read the database once, update the statuses; None when it answered, else the
        (redacted) reason."""
        problem = await asyncio.to_thread(self.store.ping)
        if problem is not None:
            problem = database_url.redact(problem, self.url)
        if problem != self.problem:
            if problem is None:
                log.info("database reachable: serving")
            else:
                log.warning("database unreachable, not serving: %s", problem)
        self.problem = problem
        _metrics.DB_UP.set(0 if problem else 1)
        for service in SERVICES:
            await self.servicer.set(service, NOT_SERVING if problem else SERVING)
        return problem

    async def readiness(self) -> str | None:
        """A readiness check of the admin listener: the database answers now."""
        problem = await self.check()
        return None if problem is None else f"database: {problem}"

    async def start(self) -> None:
        """Check once, then every ``interval`` seconds in the background."""
        await self.check()
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def stop(self) -> None:
        """Stop checking; report ``NOT_SERVING`` from now on."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.servicer.enter_graceful_shutdown()
