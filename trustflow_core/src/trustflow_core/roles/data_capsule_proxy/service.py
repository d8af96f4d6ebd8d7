"""GetInputData and PutResultData (docs/compat.md#dcp-protocol), streaming and all-or-nothing.

Differences from the upstream binary, all deliberate:

* Every local path must resolve inside ``--allowed-root`` directories (no ``..``, no symbolic
  link leaving the roots); an object-store endpoint must be one configured with
  ``--allowed-object-store-endpoint`` (none by default), and store errors reach the client
  without connection details (:mod:`.objectstore`).
* Requests are validated before anything is fetched or written: a missing ``dest_config``,
  an empty ``scope`` or ``ancestor_uuids`` (with a ``resource_uri``) is a 400 up front, where
  upstream checks after writing.
* Object-store inputs are decrypted straight from the stream: no ciphertext copy in ``/tmp``.
  ``S3Config.type`` ``MINIO`` selects the ``s3`` backend, ``OSS``/unspecified the ``oss`` one;
  ``secure`` as sent, ``cert_check`` true unless sent as false.
* Output is all-or-nothing: local outputs are staged and renamed into place together
  (:class:`~.paths.StagedOutput`); object-store outputs are atomic per object and the objects
  of a failed request are deleted. The result key is registered only after every output is
  stored; if the registration fails, the outputs of the request are removed again (the key is
  lost, so they could not be read), and the request can simply be retried.
* ``need_decrypt`` / ``need_encrypt``: absent → true; explicitly false → copy unchanged
  without a key (and registering a key for unencrypted output is refused).
* Readers auto-detect the upstream and the v2 format; results use ``--result-format``.
* An object-store ``path`` selects the object with that key and the objects below ``path/``
  (directory semantics), where upstream's plain prefix match also picks ``pathX…`` keys.
* Staging directories (``.tflow-stage-*``) inside a source directory are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

from ...errors import InvalidInput, ObjectNotFound
from ...manager import TrustflowPluginManager
from ...storage import ObjectInfo, Storage
from .. import _metrics
from .keysource import KeySource, decode_key
from .objectstore import open_object_store
from .paths import STAGE_PREFIX, Roots, StagedOutput, basename, relative_name
from .settings import DataCapsuleProxySettings
from .transfer import (
    Job,
    copy_job,
    copying,
    decrypt_job,
    decrypting,
    encrypt_job,
    encrypting,
    run_local,
    transformed,
    write_file,
)

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger("trustflow.data_capsule_proxy")
GET, PUT = "get_input_data", "put_result_data"
RESULT_KEY_LEN = 16  # upstream: 16 random bytes when no data_key_b64 is given
#: Files of one directory request processed at once (upstream: all concurrently).
PARALLEL_FILES = 2


class DataCapsuleProxy:
    """The proxy's logic, independent of HTTP. ``present`` arguments are the top-level JSON keys
    the client sent with a non-null value (to tell an absent bool from ``false``)."""

    def __init__(
        self,
        settings: DataCapsuleProxySettings,
        pm: TrustflowPluginManager,
        local: Storage,
        keys: KeySource,
    ) -> None:
        self.settings = settings
        self.pm = pm
        self.roots = Roots(settings.allowed_roots)
        self.local = local
        self.keys = keys

    # ---- GetInputData ------------------------------------------------------------------------

    async def get_input_data(self, req: Any, present: Collection[str], s3_present: Any) -> None:
        decrypt = req.need_decrypt if "need_decrypt" in present else True
        dest = req.dest_config.path
        if not dest:
            raise InvalidInput("dest_config.path is empty")
        self.roots.resolve(dest, "dest_config.path")
        source_kind = req.WhichOneof("source_config")
        if source_kind is None:
            raise InvalidInput("Source config not found in request")
        if decrypt and req.WhichOneof("data_key_config") is None:
            raise InvalidInput("Data key config not found in request")
        direct = (
            decode_key(req.data_key_b64, "data_key_b64")
            if decrypt and req.WhichOneof("data_key_config") == "data_key_b64"
            else None
        )
        async with self._source(req, source_kind, s3_present) as (storage, base):
            plan = _plan(base, await storage.list(base), "source")
            jobs = []
            for info, name in plan:
                encrypted = decrypt and name.endswith(".enc")
                out = name[: -len(".enc")] if encrypted else name
                if not basename(out):
                    raise InvalidInput(f"input {info.uri!r} has no name left without '.enc'")
                jobs.append((info, out, encrypted))
            key = direct
            if key is None and any(encrypted for _, _, encrypted in jobs):
                key = await self.keys.data_key(req.cm_resource_config)
            staged = await asyncio.to_thread(StagedOutput, self.roots, dest)
            try:

                async def one(info: ObjectInfo, out: str, encrypted: bool) -> None:
                    file = await asyncio.to_thread(staged.create, out)
                    job = decrypt_job(key) if encrypted else copy_job  # type: ignore[arg-type]
                    if await run_local(storage, info.uri, job, file, info.size, _counters(GET)):
                        return
                    make = decrypting(key, info.size) if encrypted else copying  # type: ignore[arg-type]
                    await write_file(
                        file, _written(GET, transformed(self._read(GET, storage, info.uri), make))
                    )

                await bounded([functools.partial(one, *job) for job in jobs])
                final = await asyncio.to_thread(staged.commit)
            finally:
                await asyncio.to_thread(staged.discard)
        log.info("GetInputData: %d file(s) into %s (decrypt=%s)", len(final), dest, decrypt)

    # ---- PutResultData -----------------------------------------------------------------------

    async def put_result_data(self, req: Any, present: Collection[str], s3_present: Any) -> None:
        encrypt = req.need_encrypt if "need_encrypt" in present else True
        source = req.source_config.path
        if not source:
            raise InvalidInput("source_config.path is empty")
        self.roots.resolve(source, "source_config.path")
        dest_kind = req.WhichOneof("dest_config")
        if dest_kind is None:
            raise InvalidInput("Dest config not found in request")
        if dest_kind == "local_fs_config":
            if not req.local_fs_config.path:
                raise InvalidInput("local_fs_config.path is empty")
            self.roots.resolve(req.local_fs_config.path, "local_fs_config.path")
        result = req.cm_result_config
        register = bool(result.resource_uri)
        if register:
            if not encrypt:
                raise InvalidInput("cannot register a result key for output that is not encrypted")
            if not result.scope:
                raise InvalidInput("cm_result_config.scope can not be empty")
            if not result.ancestor_uuids:
                raise InvalidInput("cm_result_config.ancestor_uuids can not be empty")
        key = (
            decode_key(req.data_key_b64, "data_key_b64")
            if req.data_key_b64
            else os.urandom(RESULT_KEY_LEN)
        )
        plan = _plan(source, await self.local.list(source), "source_config.path")
        jobs = [(info, name + ".enc" if encrypt else name) for info, name in plan]

        def make(info: ObjectInfo) -> Callable:
            if not encrypt:
                return copying
            return encrypting(key, info.size, self.settings.result_format)

        job = encrypt_job(key, self.settings.result_format) if encrypt else copy_job

        if dest_kind == "local_fs_config":
            await self._put_local(
                req.local_fs_config.path, jobs, make, job, result if register else None, key
            )
        else:
            await self._put_object(
                req.s3_config, s3_present, jobs, make, result if register else None, key
            )

    async def _put_local(
        self, dest: str, jobs: list, make: Callable, job: Job, result: Any, key: bytes
    ) -> None:
        staged = await asyncio.to_thread(StagedOutput, self.roots, dest, "local_fs_config.path")
        try:

            async def one(info: ObjectInfo, out: str) -> None:
                file = await asyncio.to_thread(staged.create, out, 0o644)
                if await run_local(self.local, info.uri, job, file, info.size, _counters(PUT)):
                    return
                source = transformed(self._read(PUT, self.local, info.uri), make(info))
                await write_file(file, _written(PUT, source))

            await bounded([functools.partial(one, *job) for job in jobs])
            final = await asyncio.to_thread(staged.commit)
        finally:
            await asyncio.to_thread(staged.discard)
        if result is not None:
            try:
                await self.keys.register(result, key)
            except BaseException:
                for path in final:
                    with contextlib.suppress(OSError):
                        await asyncio.to_thread(self.roots.remove, path)
                raise
        log.info("PutResultData: %d file(s) into %s", len(final), dest)

    async def _put_object(
        self, config: Any, s3_present: Any, jobs: list, make: Callable, result: Any, key: bytes
    ) -> None:
        async with open_object_store(self.settings, self.pm, config, s3_present) as opened:
            storage, base = opened
            written: list[str] = []
            try:

                async def one(info: ObjectInfo, out: str) -> None:
                    uri = f"{base.rstrip('/')}/{out}"
                    source = transformed(self._read(PUT, self.local, info.uri), make(info))
                    await storage.write(uri, _written(PUT, source))
                    written.append(uri)  # deleted again if the request fails later

                await bounded([functools.partial(one, *job) for job in jobs])
                if result is not None:
                    await self.keys.register(result, key)
            except BaseException:
                for uri in written:
                    with contextlib.suppress(Exception):
                        await storage.delete(uri)
                raise
        log.info("PutResultData: %d object(s) into %s", len(written), base)

    # ---- sources -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _source(
        self, req: Any, kind: str, s3_present: Any
    ) -> AsyncIterator[tuple[Storage, str]]:
        if kind == "local_fs_config":
            path = req.local_fs_config.path
            if not path:
                raise InvalidInput("local_fs_config.path is empty")
            self.roots.resolve(path, "local_fs_config.path")
            yield self.local, path
            return
        async with open_object_store(self.settings, self.pm, req.s3_config, s3_present) as opened:
            yield opened

    def _read(self, operation: str, storage: Storage, uri: str) -> AsyncIterator[bytes]:
        chunks = storage.read(uri, chunk_size=self.settings.chunk_size)
        return _metrics.counted(chunks, _metrics.CAPSULE_BYTES.labels(operation, "read"))


def _counters(operation: str) -> tuple[Counter, Counter]:
    """The read and written byte counters of ``operation``."""
    return (
        _metrics.CAPSULE_BYTES.labels(operation, "read"),
        _metrics.CAPSULE_BYTES.labels(operation, "written"),
    )


def _written(operation: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` on their way to a destination, counted as written by ``operation``."""
    return _metrics.counted(chunks, _metrics.CAPSULE_BYTES.labels(operation, "written"))


async def bounded(jobs: list[Callable[[], Awaitable[None]]], limit: int = PARALLEL_FILES) -> None:
    """Run ``jobs`` with at most ``limit`` at a time; on the first failure cancel the rest,
    wait for them, and raise it."""
    gate = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    tasks = [asyncio.ensure_future(run(job)) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _plan(base: str, found: list[ObjectInfo], what: str) -> list[tuple[ObjectInfo, str]]:
    """Output names: a single object keeps its base name, a directory/prefix the relative
    paths below it."""
    if not found:
        raise ObjectNotFound(f"{what} {base!r} does not exist (or holds no files)")
    if len(found) == 1 and found[0].uri.rstrip("/") == base.rstrip("/"):
        return [(found[0], basename(found[0].uri))]
    named = [(info, relative_name(base, info.uri)) for info in found]
    # never read another request's staging area (partial output) as input
    return [
        (info, name)
        for info, name in named
        if not any(part.startswith(STAGE_PREFIX) for part in name.split("/"))
    ] or _nothing(base, what)


def _nothing(base: str, what: str) -> list[tuple[ObjectInfo, str]]:
    raise ObjectNotFound(f"{what} {base!r} holds no files")
