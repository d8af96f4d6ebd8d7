"""``--cm-init-config cm_init.yaml``: fetch the communication-group TLS asset at start-up and
keep it fresh (docs/compat.md#dcp-cm-init, docs/tls-asset.md#7-using-it).

:func:`load_cm_init` reads the YAML (upstream schema, ``interact-bob-cm_init.yaml``). The
:class:`TlsAssetFetcher` asks the key exchange's ``get_tls_asset`` (for ``capsule_manager``:
``GetTlsAsset`` with an attestation report binding the app certificate and the request, like
``GetDataKeys``), checks that the leaf names this app's party id, and writes the pair with
:func:`~trustflow_core.tls_asset.write_tls_asset` (validated first; key 0600 then certificate,
each atomically). :meth:`TlsAssetFetcher.run` re-fetches at ``AssetInfo.refresh_at()`` and retries
every ``retry_interval`` seconds after a failure (the files keep the last good asset).

Existing files are checked before they are replaced (:func:`check_existing`): the proxy writes
them atomically, so a pair that fails verification for any reason but expiry or a rotation
interrupted between the two renames (key of the new leaf, certificate of the old one) was changed
by someone else -- for example a CA appended to ``tls.crt``, which the upstream Envoy config would
trust. At start-up that refuses to start (the operator inspects and removes the files); during a
refresh it is logged and the files are replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.x509.oid import NameOID

from ...errors import InvalidInput, VerificationError
from ...keyexchange import Resource, ResourceRequest, TlsAsset
from ...settings_schema import Node, load_yaml_file
from ...tls_asset import AssetInfo, load_tls_asset, write_tls_asset

log = logging.getLogger("trustflow.data_capsule_proxy")

REQUIRED = ("scope", "op_name", "resource", "tls_cert_path", "tls_key_path")
OPTIONAL = ("env", "global_attrs")
RESOURCE_KEYS = {"resource_uri", "columns", "attrs"}
BENIGN_CHECKS = frozenset({"validity", "key_match"})
"""Verification failures of existing files that are no sign of tampering (see module doc)."""


@dataclass(frozen=True)
class CmInitConfig:
    """A parsed ``cm_init.yaml``: the resource request (without the initiator, which is the app
    certificate's party id) and where the asset goes."""

    scope: str
    op_name: str
    resources: tuple[Resource, ...]
    env: str
    global_attrs: str
    tls_cert_path: Path
    tls_key_path: Path
    source: str = "cm_init.yaml"

    def resource_request(self, party_id: str) -> ResourceRequest:
        return ResourceRequest(
            initiator_party_id=party_id,
            scope=self.scope,
            op_name=self.op_name,
            resources=self.resources,
            env=self.env,
            global_attrs=self.global_attrs,
        )

    def describe(self) -> str:
        uris = [r.resource_uri for r in self.resources]
        return f"op {self.op_name!r} on {uris} (scope {self.scope!r})"


def _resource(spec: Node) -> Resource:
    spec.mapping(RESOURCE_KEYS, required=("resource_uri",))
    columns = spec.get("columns")
    return Resource(
        spec.get("resource_uri").text(),
        tuple(columns.strings()) if columns.present else (),
        spec.get("attrs").text(""),
    )


def parse_cm_init(root: Node) -> CmInitConfig:
    """Validate a loaded ``cm_init.yaml``. Keys documented as optional (``env``,
    ``global_attrs``, ``columns``, ``attrs``) may be absent or null (= empty); unknown keys are
    refused (a typo would silently change the request). Relative asset paths are relative to
    ``root.base`` (the config file's directory) when set."""
    root.mapping(set(REQUIRED) | set(OPTIONAL), required=REQUIRED)
    for name in ("op_name", "tls_cert_path", "tls_key_path"):
        if not root.get(name).text():
            raise root.get(name).error("empty")
    resources = root.get("resource").elements()
    if not resources:
        raise root.get("resource").error("empty (the group is defined by its first entry)")
    cert, key = (
        Node(root.get(k).text(), root.source, k, base=root.base).path()
        for k in ("tls_cert_path", "tls_key_path")
    )
    if os.path.abspath(cert) == os.path.abspath(key):
        raise root.error("tls_cert_path and tls_key_path must differ")
    return CmInitConfig(
        scope=root.get("scope").text(),
        op_name=root.get("op_name").text(),
        resources=tuple(_resource(r) for r in resources),
        env=root.get("env").text(""),
        global_attrs=root.get("global_attrs").text(""),
        tls_cert_path=cert,
        tls_key_path=key,
        source=root.source,
    )


def load_cm_init(path: str | os.PathLike[str]) -> CmInitConfig:
    """Read and validate a ``cm_init.yaml`` file (see :func:`parse_cm_init`)."""
    return parse_cm_init(load_yaml_file(path))


def check_existing(cert_path: Path, key_path: Path) -> AssetInfo | None:
    """Verify the asset files already in place, if both exist. Returns their info when they
    are valid, None when absent, expired or half-rotated; raises :class:`VerificationError`
    (check ``tampered``) when they were modified by someone else (see the module doc)."""
    if not (cert_path.exists() and key_path.exists()):
        return None
    try:
        return load_tls_asset(cert_path, key_path)[1]
    except VerificationError as exc:
        if exc.check in BENIGN_CHECKS:
            return None
        raise VerificationError(
            "tampered",
            f"the existing TLS asset was modified by someone else ({exc.check}: {exc.detail}); "
            "this proxy only writes it atomically. Inspect and remove the files to fetch a "
            "new asset",
        ) from exc


def leaf_party_id(info: AssetInfo) -> str | None:
    names = info.leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class TlsAssetFetcher:
    """Fetches and writes the asset; see the module doc.

    ``fetch_asset`` is the key exchange call (``KeySource.tls_asset``), ``party_id`` this
    app's party id (the request's initiator), ``member_id`` the party id of its certificate's
    own key (default ``party_id``; differs for a certificate chain), which the leaf must name.
    ``refresh_fraction`` is passed to ``AssetInfo.refresh_at``; ``retry_interval`` is the delay
    after a failure and the shortest delay between two fetches. ``fetches`` / ``failures``
    count attempts, ``last_error`` is the latest failure (None after a success), ``info`` the
    asset in the files."""

    def __init__(
        self,
        fetch_asset: Callable[[ResourceRequest], Any],
        config: CmInitConfig,
        party_id: str,
        *,
        member_id: str | None = None,
        refresh_fraction: float = 0.75,
        retry_interval: float = 30.0,
        clock: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        if not 0.0 <= refresh_fraction < 1.0:
            raise InvalidInput(f"refresh fraction must be in [0, 1), got {refresh_fraction}")
        if retry_interval <= 0:
            raise InvalidInput(f"retry interval must be > 0, got {retry_interval}")
        self._fetch_asset = fetch_asset
        self.config = config
        self.party_id = party_id
        self.member_id = member_id or party_id
        self.refresh_fraction = refresh_fraction
        self.retry_interval = retry_interval
        self._clock = clock
        self.info: AssetInfo | None = None
        self.last_error: Exception | None = None
        self.fetches = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    async def fetch(self, *, startup: bool = False) -> AssetInfo:
        """One fetch: ask the key exchange, check, write. At start-up tampered existing files
        refuse; later they are logged and replaced. Raises on any failure (nothing written)."""
        self.fetches += 1
        cfg = self.config
        try:
            try:
                check_existing(cfg.tls_cert_path, cfg.tls_key_path)
            except VerificationError as exc:
                if startup:
                    raise VerificationError(
                        exc.check, f"{cfg.tls_cert_path} + {cfg.tls_key_path}: {exc.detail}"
                    ) from None
                log.error("%s + %s: %s; replacing it", cfg.tls_cert_path, cfg.tls_key_path, exc)
            asset: TlsAsset = await self._fetch_asset(cfg.resource_request(self.party_id))
            info = await asyncio.to_thread(self._write, asset)
        except Exception as exc:
            self.failures += 1
            self.last_error = exc
            raise
        previous, self.info, self.last_error = self.info, info, None
        if previous is not None and previous.anchor_fingerprint != info.anchor_fingerprint:
            log.warning("tls asset: the group CA changed (the CM re-keyed the group)")
        log.info(
            "tls asset for %s written to %s + %s: group CA %s, leaf valid until %s, next fetch "
            "at %s",
            cfg.describe(),
            cfg.tls_cert_path,
            cfg.tls_key_path,
            info.anchor_fingerprint[:16],
            info.not_after.isoformat(),
            info.refresh_at(self.refresh_fraction).isoformat(),
        )
        return info

    def _write(self, asset: TlsAsset) -> AssetInfo:
        from ...tls_asset import validate_tls_asset

        member = leaf_party_id(validate_tls_asset(asset))
        if member != self.member_id:
            raise VerificationError(
                "member",
                f"the TLS asset's leaf names party {member!r}, not this app ({self.member_id!r})",
            )
        for path in (self.config.tls_cert_path, self.config.tls_key_path):
            path.parent.mkdir(parents=True, exist_ok=True)
        return write_tls_asset(asset, self.config.tls_cert_path, self.config.tls_key_path)

    def next_delay(self) -> float:
        """Seconds until the next attempt: at the refresh point after a success, after
        ``retry_interval`` after a failure, never less than ``retry_interval``."""
        if self.info is None or self.last_error is not None:
            return self.retry_interval
        due = self.info.refresh_at(self.refresh_fraction) - self._clock()
        return max(self.retry_interval, due.total_seconds())

    async def run(self) -> None:
        """Re-fetch forever (see :meth:`next_delay`); failures are logged, never raised."""
        while True:
            await asyncio.sleep(self.next_delay())
            try:
                await self.fetch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                expiry = self.info.not_after.isoformat() if self.info else "unknown"
                log.error(
                    "tls asset refresh failed (the current leaf expires at %s; retrying in "
                    "%g s): %s",
                    expiry,
                    self.retry_interval,
                    exc,
                )

    def start(self) -> asyncio.Task[None]:
        """Start :meth:`run` in the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run())
        return self._task

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
