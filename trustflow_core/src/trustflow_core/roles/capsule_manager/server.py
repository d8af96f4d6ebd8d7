"""Assembling and running the Capsule Manager: identity, store, channel, attester, verifiers,
and the ``grpc.aio`` server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy.exc import SQLAlchemyError

from ...attestation import Attester, Verifier
from ...errors import BackendUnavailable, InvalidInput
from ...manager import get_plugin_manager
from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2_grpc as cm_grpc
from ...registry import attester_class, backends, get_backend_class, verifier_for_platform
from . import identity_keys
from .envelope import Envelopes
from .errors import CMError
from .sealing import Sealer, load_or_create_key
from .service import CapsuleManagerService
from .settings import CMSettings
from .storage import Store

log = logging.getLogger(__name__)
NO_ATTESTER = ("none", "")


class CapsuleManager:
    """A running Capsule Manager. ``await start()`` returns the bound port; ``await stop()``.

    ``pm`` is the plugin manager to take backends from (default: all installed plugins).
    """

    def __init__(self, settings: CMSettings, *, pm: Any = None) -> None:
        self.settings = settings
        self.pm = pm if pm is not None else get_plugin_manager()
        self.server: grpc.aio.Server | None = None
        self.store: Store | None = None
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
            verifier = cls.from_settings(self.settings.verifiers.get(cls.name) or None)
            self._verifiers[platform] = verifier
        return verifier

    def _channel(self) -> Any:
        cls = get_backend_class(self.pm, "channel", "jwe")
        return cls.from_settings({"profile": "upstream"})

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> int:
        s = self.settings
        key_file, cert_file, storage_key_file = s.key_paths
        s.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = await asyncio.to_thread(identity_keys.load_or_create, key_file, cert_file)
        storage_key = await asyncio.to_thread(load_or_create_key, storage_key_file)
        try:
            self.store = Store(s.db_url, Sealer(storage_key))
            await asyncio.to_thread(self.store.create_schema)
        except CMError as exc:
            raise BackendUnavailable(f"storage {s.db_url}: {exc.detail}") from None
        except (SQLAlchemyError, ImportError) as exc:
            detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise BackendUnavailable(f"storage {s.db_url} is not usable: {detail}") from None
        self.identity = identity
        attester_cls = self._attester_class()
        attester = None if attester_cls is None else attester_cls.from_settings(s.attester or None)
        if attester is not None:  # like upstream production: fail at start, not per request
            try:
                await attester.generate(bytes(32))
            except Exception as exc:
                raise BackendUnavailable(
                    f"attester {type(attester).name!r} cannot produce reports on this host: {exc}"
                ) from None
        service = CapsuleManagerService(
            store=self.store,
            envelopes=Envelopes(self._channel(), identity.private_key, s.freshness),
            identity=identity,
            attester=attester,
            verifier_for=self._verifier_for,
            policy=s.attestation_policy(
                backends(self.pm, "verifier").values(),  # type: ignore[arg-type]
                attester_simulated=(
                    attester_cls.simulated if attester_cls is not None else s.plat is None
                ),
            ),
            allow_upstream_sim=s.allow_upstream_sim,
            tls_issuer_secret=tls_issuer_secret(storage_key),
        )
        self.service = service
        self.server = grpc.aio.server()
        cm_grpc.add_CapsuleManagerServicer_to_server(service, self.server)
        address = f"{s.host}:{s.port}"
        port: int
        try:
            if s.tls is None:
                port = self.server.add_insecure_port(address)
            else:
                port = self.server.add_secure_port(address, _server_credentials(s))
        except RuntimeError as exc:
            raise BackendUnavailable(f"cannot listen on {address}: {exc}") from None
        if port == 0:
            raise BackendUnavailable(f"cannot listen on {address}")
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

    async def __aenter__(self) -> CapsuleManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def tls_issuer_secret(storage_key: bytes) -> bytes:
    """The group-TLS ``issuer_secret`` (docs/tls-asset.md §4), derived from the storage key so
    replicas sharing the storage key issue the same group CAs, and members holding the data
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


async def serve(settings: CMSettings, *, workers: int = 1) -> None:
    """Run until SIGINT/SIGTERM; print one line with the address and identity.

    ``workers > 1`` starts that many server processes on the same port (``SO_REUSEPORT``; the
    kernel spreads connections over them). They share the identity and storage-key files and
    the database, so any of them can answer any request; the extra ones exit with this one.
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
    cm = CapsuleManager(settings)
    try:
        port = await cm.start()
    except BaseException:
        await cm.stop(grace=0)
        raise
    children = []
    context = multiprocessing.get_context("spawn")
    for _ in range(workers - 1):
        child = context.Process(
            target=_worker_main,
            args=(dataclasses.replace(settings, port=port), os.getpid()),
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


def _worker_main(settings: CMSettings, parent_pid: int) -> None:
    """An extra server process; exits when its parent is gone."""
    import os

    async def run() -> None:
        cm = CapsuleManager(settings)
        await cm.start()
        try:
            while os.getppid() == parent_pid:
                await asyncio.sleep(1.0)
        finally:
            await cm.stop(grace=0.5)

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run())
