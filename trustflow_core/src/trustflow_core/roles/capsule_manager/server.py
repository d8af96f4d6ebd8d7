"""Assembling and running the Capsule Manager: identity, store, channel, attester, verifiers,
and the ``grpc.aio`` server."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from sqlalchemy.exc import SQLAlchemyError

from ...attestation import Attester, Verifier
from ...channel import EnvelopeChannel
from ...errors import BackendUnavailable, InvalidInput
from ...manager import get_plugin_manager
from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2_grpc as cm_grpc
from ...proto.trustflowapis.audit.v1 import audit_pb2_grpc as audit_grpc
from ...registry import (
    ENVELOPE_CHANNEL,
    VERIFIER,
    attester_class,
    backend_class,
    backends_of,
    verifier_for_platform,
)
from ..capsule_manager_protocol.errors import CMError
from . import database_url, identity_keys, port_claim, private_files
from .audit_log import AuditLog, mac_key
from .audit_service import AuditLogService
from .database import Database
from .envelope import Envelopes
from .sealing import Sealer, load_or_create_key
from .service import CapsuleManagerService
from .settings import CMSettings

log = logging.getLogger(__name__)
NO_ATTESTER = ("none", "")


class LogSettings(NamedTuple):
    """The arguments of :func:`roles._server.setup_logging`, handed to ``--workers``."""

    log_path: str | None = None
    level: str = "warning"
    levels_for: tuple[tuple[str, str], ...] = ()


class CapsuleManager:
    """A running Capsule Manager. ``await start()`` returns the bound port; ``await stop()``.

    ``pm`` is the plugin manager to take backends from (default: all installed plugins).
    ``sharing`` says how the port is bound (:mod:`.port_claim`): ``exclusive`` (the default:
    start fails while anything listens there), ``first`` of several ``--workers`` processes
    or a ``worker`` joining it.
    """

    def __init__(
        self, settings: CMSettings, *, pm: Any = None, sharing: port_claim.Sharing = "exclusive"
    ) -> None:
        self.settings = settings
        self.sharing = sharing
        self._claim: socket.socket | None = None
        self.pm = pm if pm is not None else get_plugin_manager()
        self.server: grpc.aio.Server | None = None
        self.store: Database | None = None
        self.port: int | None = None
        self._verifiers: dict[str, Verifier] = {}

    # ---- parts -----------------------------------------------------------------------------

    def _attester_class(self) -> type[Attester] | None:
        """The configured attester; None for ``plat: none``, and for an unset ``plat`` when no
        development default is installed (then GetRaCert returns no report, as upstream
        simulation CMs do)."""
        plat = self.settings.plat
        if plat in NO_ATTESTER:
            return None
        cls = attester_class(self.pm, plat)
        if cls is None:
            log.warning("no attester configured or installed as default: GetRaCert has no report")
        return cls

    def _verifier_for(self, platform: str) -> Verifier:
        verifier = self._verifiers.get(platform)
        if verifier is None:
            cls = verifier_for_platform(self.pm, platform)
            verifier = cls.from_role(self.settings.verifiers.get(cls.name) or None, pm=self.pm)
            self._verifiers[platform] = verifier
        return verifier

    def _channel(self) -> EnvelopeChannel:
        cls = backend_class(self.pm, ENVELOPE_CHANNEL, self.settings.envelope_channel)
        return cls.from_role({"profile": "upstream"}, pm=self.pm)

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> int:
        """Bind and serve; return the port. On failure everything started is stopped again."""
        try:
            return await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _start(self) -> int:
        s = self.settings
        if self.sharing == "first" and s.port:
            self._claim = port_claim.claim(s.host, s.port)
        if self.sharing != "worker" and s.port:
            port_claim.check_free(s.host, s.port)  # fail before any work; bind decides below
        key_file, cert_file, storage_key_file = s.key_paths
        url = database_url.parse(s.db_url)
        database = database_url.sqlite_file(url)
        await asyncio.to_thread(
            private_files.secure, s.data_dir, (key_file, storage_key_file), database
        )
        identity = await asyncio.to_thread(identity_keys.load_or_create, key_file, cert_file)
        log.debug("identity %s from %s and %s", identity.party_id, key_file, cert_file)
        storage_key = await asyncio.to_thread(load_or_create_key, storage_key_file)
        log.debug("storage key from %s", storage_key_file)
        shown = database_url.redact(s.db_url, s.db_url)
        try:
            self.store = Database(s.db_url, Sealer(storage_key))
            await asyncio.to_thread(self.store.create_schema)
        except CMError as exc:
            detail = database_url.redact(exc.detail, s.db_url)
            raise BackendUnavailable(f"storage {shown}: {detail}") from None
        except ImportError as exc:
            hint = database_url.missing_driver(url, exc)
            raise BackendUnavailable(f"storage {shown} is not usable: {hint}") from None
        except SQLAlchemyError as exc:
            detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            detail = database_url.redact(detail, s.db_url)
            raise BackendUnavailable(f"storage {shown} is not usable: {detail}") from None
        log.debug("storage %r ready", self.store)
        self.identity = identity
        attester_cls = self._attester_class()
        attester = (
            None if attester_cls is None else attester_cls.from_role(s.attester or None, pm=self.pm)
        )
        if attester is not None:  # like upstream production: fail at start, not per request
            try:
                await attester.generate(bytes(32))
            except Exception as exc:
                raise BackendUnavailable(
                    f"attester {type(attester).name!r} cannot produce reports on this host: {exc}"
                ) from None
        if s.audit:
            self.store.audit = AuditLog(identity.private_key, mac_key(storage_key))
        service = CapsuleManagerService(
            store=self.store,
            envelopes=Envelopes(self._channel(), identity.private_key, s.freshness),
            identity=identity,
            attester=attester,
            verifier_for=self._verifier_for,
            policy=s.attestation_policy(
                backends_of(self.pm, VERIFIER).values(),
                attester_simulated=(
                    attester_cls.simulated if attester_cls is not None else s.plat is None
                ),
            ),
            allow_upstream_sim=s.allow_upstream_sim,
            tls_issuer_secret=tls_issuer_secret(storage_key),
        )
        self.service = service
        reuse_port = int(self.sharing != "exclusive")
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", reuse_port)])
        cm_grpc.add_CapsuleManagerServicer_to_server(service, self.server)
        audit_grpc.add_AuditLogServicer_to_server(
            AuditLogService(store=self.store, envelopes=service.envelopes), self.server
        )
        address = f"{s.host}:{s.port}"
        port: int
        try:
            if s.tls is None:
                port = self.server.add_insecure_port(address)
            else:
                port = self.server.add_secure_port(address, _server_credentials(s))
        except RuntimeError:
            port = 0
        if port == 0:
            raise port_claim.refusal(s.host, s.port, port_claim.bind_error(s.host, s.port))
        if self.sharing == "first" and not s.port:  # a port the kernel just chose
            self._claim = port_claim.claim(s.host, port)
        await self.server.start()
        self.port = port
        log.info("capsule manager %s listening on %s:%d", identity.party_id, s.host, port)
        return port

    async def stop(self, grace: float | None = 1.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        for verifier in self._verifiers.values():
            await verifier.aclose()
        self._verifiers.clear()
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._claim is not None:
            self._claim.close()
            self._claim = None

    async def __aenter__(self) -> CapsuleManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def tls_issuer_secret(storage_key: bytes) -> bytes:
    """The group-TLS ``issuer_secret`` (docs/tls-asset.md#4-threat-model), derived from the storage
    key so replicas sharing the storage key issue the same group CAs, and members holding the data
    key cannot."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"trustflow-cm/v1",
        info=b"group tls issuer secret",
    ).derive(storage_key)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{what} {path}: {exc.strerror or exc}") from None


def _server_credentials(s: CMSettings) -> grpc.ServerCredentials:
    assert s.tls is not None
    pair = (_read(s.tls.key_file, "TLS key"), _read(s.tls.cert_file, "TLS certificate"))
    if s.tls.client_ca_file is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=_read(s.tls.client_ca_file, "TLS client CA"),
        require_client_auth=True,
    )


async def serve(
    settings: CMSettings, *, workers: int = 1, log_settings: LogSettings | None = None
) -> None:
    """Run until SIGINT/SIGTERM; print one line with the address and identity.

    ``workers > 1`` starts that many server processes on the same port (``SO_REUSEPORT``; the
    kernel spreads connections over them; no other process may listen there, see
    :mod:`.port_claim`). They share the identity and storage-key files and
    the database, so any of them can answer any request; the extra ones exit with this one and
    log as ``log_settings`` says (default: warnings to stderr).
    """
    import dataclasses
    import multiprocessing
    import os
    import signal

    import click

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the "listening" line is printed
        loop.add_signal_handler(sig, stop.set)
    cm = CapsuleManager(settings, sharing="first" if workers > 1 else "exclusive")
    try:
        port = await cm.start()
    except BaseException:
        await cm.stop(grace=0)
        raise
    children = []
    worker_logs = log_settings or LogSettings()
    context = multiprocessing.get_context("spawn")
    for _ in range(workers - 1):
        child = context.Process(
            target=_worker_main,
            args=(dataclasses.replace(settings, port=port), os.getpid(), worker_logs),
            daemon=True,
        )
        child.start()
        children.append(child)
    click.echo(
        f"capsule manager listening on {settings.host}:{port} "
        f"(party id {cm.identity.party_id}, storage {cm.store!r}, {workers} worker(s))",
        err=True,
    )
    try:
        await stop.wait()
    finally:
        for child in children:
            child.terminate()
        await cm.stop(grace=2.0)
        for child in children:
            await asyncio.to_thread(child.join, 10)


def _worker_main(settings: CMSettings, parent_pid: int, log_settings: LogSettings) -> None:
    """An extra server process; exits when its parent is gone."""
    import os

    from .._server import setup_logging

    async def run() -> None:
        cm = CapsuleManager(settings, sharing="worker")
        await cm.start()
        try:
            while os.getppid() == parent_pid:
                await asyncio.sleep(1.0)
        finally:
            await cm.stop(grace=0.5)

    setup_logging(*log_settings)
    asyncio.run(run())
