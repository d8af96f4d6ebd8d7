"""Assembling and running the Capsule Manager: identity, store, channel, attester, verifiers,
and the ``grpc.aio`` server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy.exc import SQLAlchemyError

from ...attestation import Attester, Policy, Verifier
from ...channel import EnvelopeChannel
from ...errors import BackendUnavailable, InvalidInput
from ...manager import get_plugin_manager
from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2_grpc as cm_grpc
from ...proto.trustflowapis.audit.v1 import audit_pb2_grpc as audit_grpc
from ...proto.trustflowapis.replica.v1 import replica_pb2_grpc as replica_grpc
from ...registry import (
    ENVELOPE_CHANNEL,
    VERIFIER,
    attester_class,
    backend_class,
    backends_of,
    verifier_for_platform,
)
from .._listeners import GRACE, GrpcListener, Listeners
from ..capsule_manager_protocol.errors import CMError
from . import database_url, identity_keys, private_files
from .audit_log import AuditLog, mac_key
from .audit_service import AuditLogService
from .database import Database, recorded_identity
from .envelope import Envelopes
from .health import DEFAULT_INTERVAL, DatabaseHealth
from .replicas import (
    Bundle,
    JoinCheck,
    JoinProgress,
    ReplicaService,
    default_policy,
    describe,
    join,
)
from .sealing import Sealer, load_or_create_key, write_key
from .service import CapsuleManagerService
from .settings import CMSettings

log = logging.getLogger(__name__)
NO_ATTESTER = ("none", "")
ROLE = "capsule-manager"


class CapsuleManager:
    """A running Capsule Manager. ``await start()`` returns the bound port; ``await stop()``.
    A :class:`~.._listeners.Service`: ``trustflow capsule-manager`` runs it with
    :func:`~.._server.run`, which handles signals and ``--workers``.

    ``pm`` is the plugin manager to take backends from (default: all installed plugins).
    ``listeners`` holds the gRPC listener; the port is bound exclusively (start fails while
    anything listens there) unless the runner makes it the first of several workers.
    """

    def __init__(
        self, settings: CMSettings, *, pm: Any = None, health_interval: float = DEFAULT_INTERVAL
    ) -> None:
        self.settings = settings
        self.pm = pm if pm is not None else get_plugin_manager()
        self.listeners = Listeners(ROLE)
        self._grpc = self.listeners.add(
            GrpcListener(
                self._add_services,
                settings.host,
                settings.port,
                credentials=None if settings.tls is None else lambda: _server_credentials(settings),
                label="gRPC" + (" + TLS" if settings.tls is not None else ""),
            )
        )
        self.service: CapsuleManagerService | None = None
        self.store: Database | None = None
        self.port: int | None = None
        self._verifiers: dict[str, Verifier] = {}
        self.health_interval = health_interval
        self.health: DatabaseHealth | None = None
        #: Replica mode: the join check (both directions), the Join responder, and how a
        #: join stands (None: this CM does not join).
        self.replica_check: JoinCheck | None = None
        self.replica_service: ReplicaService | None = None
        self.join_progress: JoinProgress | None = None

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

    def _add_services(self, server: grpc.aio.Server) -> None:
        assert self.service is not None and self.health is not None and self.store is not None
        cm_grpc.add_CapsuleManagerServicer_to_server(self.service, server)
        audit_grpc.add_AuditLogServicer_to_server(
            AuditLogService(store=self.store, envelopes=self.service.envelopes), server
        )
        self.health.add_to(server)
        if self.replica_service is not None:
            replica_grpc.add_ReplicaServicer_to_server(self.replica_service, server)

    async def database_ready(self) -> str | None:
        """The admin listener's readiness check: the database answers now."""
        return "database: not open" if self.health is None else await self.health.readiness()

    async def identity_ready(self) -> str | None:
        """The admin listener's readiness check of the identity: None once this CM has it
        (loaded, founded or joined), else where joining stands."""
        if self.join_progress is None or self.join_progress.problem is None:
            return None
        return f"identity: {self.join_progress.problem}"

    async def _start(self) -> int:
        s = self.settings
        problem = s.replica_problem()
        if problem is not None:
            raise InvalidInput(problem)
        self.listeners.check()  # fail before any work; the bind decides below
        key_file, cert_file, storage_key_file = s.key_paths
        url = database_url.parse(s.db_url)
        database = database_url.sqlite_file(url)
        await asyncio.to_thread(
            private_files.secure, s.data_dir, (key_file, storage_key_file), database
        )
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
        if s.replicas is None:
            identity = await asyncio.to_thread(identity_keys.load_or_create, key_file, cert_file)
            log.debug("identity %s from %s and %s", identity.party_id, key_file, cert_file)
            storage_key = await asyncio.to_thread(load_or_create_key, storage_key_file)
            log.debug("storage key from %s", storage_key_file)
        else:
            if attester is None or attester_cls is None:
                raise InvalidInput("replicas attest to each other: configure an attester (plat)")
            bundle = await self._replica_identity(attester, attester_cls.simulated)
            identity, storage_key = bundle.identity, bundle.storage_key
        shown = database_url.redact(s.db_url, s.db_url)
        try:
            self.store = Database(s.db_url, Sealer(storage_key))
            await asyncio.to_thread(self.store.create_schema, identity.cert_pem)
        except CMError as exc:
            detail = database_url.redact(exc.detail, s.db_url)
            raise BackendUnavailable(f"storage {shown}: {detail}") from None
        except (ImportError, SQLAlchemyError) as exc:
            raise _storage_error(exc, s.db_url) from None
        log.debug("storage %r ready", self.store)
        self.identity = identity
        if self.replica_check is not None and attester is not None:
            self.replica_service = ReplicaService(
                Bundle(identity, storage_key), attester, self.replica_check
            )
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
        self.health = DatabaseHealth(self.store, s.db_url, self.health_interval)
        await self.listeners.open()
        await self.health.start()
        self.port = self._grpc.port
        log.info("capsule manager %s serving on %s:%d", identity.party_id, s.host, self.port)
        return self.port

    async def _replica_identity(self, attester: Attester, simulated: bool) -> Bundle:
        """Replica mode (docs/replicas.md): the identity from the key files when all three
        exist; else joined from ``replicas.join`` (the admin listener opens first so readiness
        can say where the join stands); else founded (generated and written) when the
        database records no identity yet."""
        s = self.settings
        assert s.replicas is not None
        replicas = s.replicas
        if replicas.policy is not None:
            policy = Policy(replicas.policy, simulated)
        else:
            policy = await default_policy(attester, self._verifier_for, simulated=simulated)
        log.info("replica join policy: %s", describe(policy))
        self.replica_check = JoinCheck(policy, self._verifier_for)
        key_file, cert_file, storage_key_file = paths = s.key_paths
        present = [p.exists() for p in paths]
        if all(present):
            identity = await asyncio.to_thread(identity_keys.load, key_file, cert_file)
            storage_key = await asyncio.to_thread(load_or_create_key, storage_key_file)
            log.info("replica identity %s from its key files", identity.party_id)
            return Bundle(identity, storage_key)
        if any(present):
            missing = ", ".join(str(p) for p, here in zip(paths, present, strict=True) if not here)
            raise InvalidInput(f"CM identity files incomplete: {missing} missing")
        if replicas.join:
            self.join_progress = JoinProgress()
            await self.listeners.open(only=lambda listener: listener is not self._grpc)
            bundle = await join(
                replicas.join,
                attester,
                self.replica_check,
                timeout=replicas.join_timeout,
                progress=self.join_progress,
                credentials=_join_credentials(s),
            )
            if replicas.save_joined_identity:
                await asyncio.to_thread(identity_keys.save, bundle.identity, key_file, cert_file)
                await asyncio.to_thread(write_key, storage_key_file, bundle.storage_key)
            return bundle
        try:
            recorded = await asyncio.to_thread(recorded_identity, s.db_url)
        except (ImportError, SQLAlchemyError) as exc:
            raise _storage_error(exc, s.db_url) from None
        if recorded is not None:
            shown = database_url.redact(s.db_url, s.db_url)
            raise InvalidInput(
                f"storage {shown} already belongs to a CM identity and this replica has no key "
                f"files: pass --join HOST:PORT of a running replica (or give it {key_file})"
            )
        identity = await asyncio.to_thread(identity_keys.load_or_create, key_file, cert_file)
        storage_key = await asyncio.to_thread(load_or_create_key, storage_key_file)
        log.info("founded the replicas' identity %s", identity.party_id)
        return Bundle(identity, storage_key)

    def notes(self) -> list[str]:
        """For the listening line: the party id and the storage."""
        return [f"party id {self.identity.party_id}", f"storage {self.store!r}"]

    async def stop(self, grace: float = GRACE) -> None:
        """Stop serving (open calls get ``grace`` seconds), then close the verifiers and the
        storage; the gRPC health says NOT_SERVING from the start of it."""
        if self.health is not None:
            await self.health.stop()
            self.health = None
        self._grpc.grace = grace
        await self.listeners.close()
        if self.service is not None:  # after the listeners: no handler awaits them any more
            await asyncio.to_thread(self.service.threads.close, grace)
        for verifier in self._verifiers.values():
            await verifier.aclose()
        self._verifiers.clear()
        if self.store is not None:
            self.store.close()
            self.store = None

    async def __aenter__(self) -> CapsuleManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def capsule_manager_service(
    settings: CMSettings, admin_host: str = "127.0.0.1", admin_port: int | None = None
) -> CapsuleManager:
    """The Capsule Manager of ``trustflow capsule-manager`` and of each of its ``--workers`` (a
    picklable service factory for :func:`~.._server.run`), with the admin listener on
    ``admin_host:admin_port`` (None: none; readiness: the identity is there (joined, in
    replica mode) and the database answers)."""
    from .._admin import create_admin_app, with_admin

    cm = CapsuleManager(settings)
    admin = create_admin_app(ROLE, cm.pm, [cm.identity_ready, cm.database_ready])
    return with_admin(cm, admin, admin_host, admin_port)


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


def _storage_error(exc: ImportError | SQLAlchemyError, url: str) -> BackendUnavailable:
    """A database that cannot be used (driver missing, unreachable) as one redacted line."""
    shown = database_url.redact(url, url)
    if isinstance(exc, ImportError):
        hint = database_url.missing_driver(database_url.parse(url), exc)
        return BackendUnavailable(f"storage {shown} is not usable: {hint}")
    detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    return BackendUnavailable(f"storage {shown} is not usable: {database_url.redact(detail, url)}")


def _join_credentials(s: CMSettings) -> grpc.ChannelCredentials | None:
    """TLS to the peers when this CM's port has ``tls:``: their certificates checked against
    ``replicas.tls_ca_file``; with ``tls.client_ca_file`` (mTLS) this CM's ``tls`` certificate
    is presented as the client certificate."""
    if s.tls is None or s.replicas is None or s.replicas.tls_ca_file is None:
        return None
    root = _read(s.replicas.tls_ca_file, "replicas.tls_ca_file")
    if s.tls.client_ca_file is None:
        return grpc.ssl_channel_credentials(root)
    return grpc.ssl_channel_credentials(
        root, _read(s.tls.key_file, "TLS key"), _read(s.tls.cert_file, "TLS certificate")
    )


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
