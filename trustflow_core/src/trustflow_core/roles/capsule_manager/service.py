"""The 13 RPCs of ``secretflowapis.v2.sdc.capsule_manager.CapsuleManager``
(docs/compat.md#cm-rpcs, with the fixes listed in docs/capsule-manager.md).

Every outcome is in band: gRPC status OK, ``status{code, message}`` in the response. Work that
may wait (SQL, the CEL sandbox, audit commits) and owner requests run in worker threads
(:mod:`.worker_threads`);
attestation verification is awaited. An app request (GetDataKeys, GetTlsAsset,
CreateResultDataKey) is opened on the event loop: its RSA decryption and parsing are ~1 ms of
CPU that never waits, and a hand-off to a worker thread and back cost ~0.25 ms of CPU per
request more on one process (``benchmarks/cm_stages.py``, docs/capsule-manager.md).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from ...attestation import (
    Attester,
    Policy,
    VerifiedReport,
    Verifier,
    ra_user_data,
    verify_optional,
)
from ...channel import VerifiedJws
from ...errors import BackendNotFound, BackendUnavailable, InvalidInput, VerificationError
from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2
from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2_grpc as cm_grpc
from ...utc_text import utc_seconds_text
from ...wire import serialize_canonical
from .. import _metrics
from .._logging import REQUEST_ID_HEADER, accept_request_id, request_context
from ..capsule_manager_protocol.certs import spki_pem, verified_chain_party
from ..capsule_manager_protocol.errors import CMError, Kind
from ..capsule_manager_protocol.freshness import RequestMark
from ..capsule_manager_protocol.reports import report_from_pb, report_to_pb
from ..capsule_manager_protocol.votes import verify_export_certificate
from .audit_log import AuditDraft, StaleDecision
from .constraint_sandbox import Budget
from .convert import check_data_key_b64, policy_to_pb, rule_from_pb
from .database import Database, NewKey
from .envelope import Envelopes, OpenedRequest, error_status, ok_status, recipient_from_cert_pem
from .identity_keys import CMIdentity
from .policy import (
    AccessRequest,
    Rule,
    allows,
    check_rule,
    derive_result_policy,
    releases_to_app,
)
from .resource_uri import parse_resource_uri
from .worker_threads import WorkerThreads

ROLE = "capsule-manager"

log = logging.getLogger(__name__)
monitor = logging.getLogger("trustflow.capsule_manager.monitor")
T = TypeVar("T")
AppRequest = TypeVar("AppRequest", cm_pb2.GetDataKeysRequest, cm_pb2.GetTlsAssetRequest)
MAX_NONCE_CHARS = 4096
#: How many times a release is decided again when the data changed before its entry was
#: appended (:meth:`CapsuleManagerService._released`), before it is refused (retryable).
REDECISIONS = 3
VerifierFor = Callable[[str], Verifier]


def _rpc(name: str) -> Callable[..., Any]:
    """Turn CMError (and anything unexpected) into an in-band status; log one monitor line."""

    def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def handler(self: CapsuleManagerService, request: Any, context: Any) -> Any:
            started = time.perf_counter()
            response_cls = (
                cm_pb2.GetRaCertResponse if name == "get_ra_cert" else cm_pb2.EncryptedResponse
            )
            with request_context(accept_request_id(_metadata_request_id(context))):
                try:
                    response = await fn(self, request)
                except CMError as err:
                    response = response_cls(status=error_status(err))
                except Exception:
                    log.exception("%s failed unexpectedly", name)
                    response = response_cls(
                        status=error_status(CMError(Kind.INTERNAL, "internal error"))
                    )
                elapsed = time.perf_counter() - started
                ok = "Y" if response.status.code == 0 else "N"
                monitor.info("|%s|%s|%.1f|%r", name, ok, elapsed * 1000, response.status.message)
            _metrics.observe_request(ROLE, name, response.status.code, elapsed)
            return response

        return handler

    return wrap


def _metadata_request_id(context: Any) -> str | None:
    """The ``x-request-id`` gRPC metadata of the call, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER:
            return value if isinstance(value, str) else None
    return None


def _signer_key(verified: VerifiedJws) -> RSAPublicKey:
    """The RSA key that replies to a signed request are sealed to: the JWS leaf's."""
    key = verified.chain[0].public_key()
    if not isinstance(key, RSAPublicKey):
        raise CMError(Kind.CRYPTO, "the signer's certificate does not hold an RSA public key")
    return key


def _status_only() -> cm_pb2.EncryptedResponse:
    return cm_pb2.EncryptedResponse(status=ok_status())


def _parse_env(text: str) -> dict[str, Any] | None:
    """Client ``env`` (upstream sim only): ``{"request_time"?, "tee"?: {"platform", ...}}``."""
    if not text:
        return None
    try:
        env = json.loads(text)
    except (ValueError, RecursionError):
        raise CMError(Kind.DECODE, "env is not JSON") from None
    if not isinstance(env, dict):
        raise CMError(Kind.DECODE, "env must be a JSON object")
    tee = env.get("tee")
    if tee is not None and (not isinstance(tee, dict) or not isinstance(tee.get("platform"), str)):
        raise CMError(Kind.DECODE, "env.tee needs a string platform")
    request_time = env.get("request_time", "")
    if not isinstance(request_time, str):
        raise CMError(Kind.DECODE, "env.request_time must be an RFC 3339 string")
    out: dict[str, Any] = {"request_time": request_time}
    if tee is not None:
        out["tee"] = tee
    return out


def _now() -> str:
    return utc_seconds_text()


def _refused(rpc: str, reason: str, error: CMError) -> CMError:
    """``error``, after counting it as a policy refusal of ``rpc`` for ``reason``."""
    _metrics.POLICY_REFUSALS.labels(rpc, reason).inc()
    return error


@functools.lru_cache(maxsize=1024)
def _cert_sha256(cert_pem: str) -> str:
    """SHA-256 fingerprint (hex) of a PEM certificate's DER; empty when it is unreadable.
    Cached: an app sends the same certificate with every request."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        return x509.load_pem_x509_certificate(cert_pem.encode()).fingerprint(hashes.SHA256()).hex()
    except ValueError:
        return ""


def _app_identity(
    rr: cm_pb2.ResourceRequest, cert_pem: str, verified: VerifiedReport | None
) -> dict[str, Any]:
    """Who asked, for audit entries: the initiator party, the SHA-256 fingerprint of the app
    certificate (DER; empty when unreadable), the attested platform and measurement."""
    cert_sha256 = _cert_sha256(cert_pem)
    attested = verified is not None and verified.details.get("report") != "absent"
    attrs = verified.attributes if verified is not None and attested else None
    return {
        "app_party": rr.initiator_party_id,
        "cert_sha256": cert_sha256,
        "platform": attrs.str_tee_platform if attrs is not None else "",
        "measurement": attrs.hex_ta_measurement if attrs is not None else "",
    }


class CapsuleManagerService(cm_grpc.CapsuleManagerServicer):
    """The RPC handlers. ``verifier_for`` maps a report platform to a verifier instance."""

    def __init__(
        self,
        *,
        store: Database,
        envelopes: Envelopes,
        identity: CMIdentity,
        attester: Attester | None,
        verifier_for: VerifierFor,
        policy: Policy,
        allow_upstream_sim: bool,
        tls_issuer_secret: bytes = b"",
    ) -> None:
        self.store = store
        self.envelopes = envelopes
        self.identity = identity
        self.attester = attester
        self.verifier_for = verifier_for
        self.policy = policy
        self.allow_upstream_sim = allow_upstream_sim
        self.tls_issuer_secret = tls_issuer_secret
        self.threads = WorkerThreads("cm-worker")

    async def _thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.threads.run(fn, *args)

    async def _open(self, request: cm_pb2.EncryptedRequest) -> OpenedRequest:
        """Open an app's request, on the event loop (see the module docstring)."""
        return self.envelopes.open(request)

    async def _attest(self, report_pb: Any, has_report: bool, digest: bytes) -> VerifiedReport:
        """Verify an app report bound to ``digest`` (docs/compat.md#report-binding). Absent report:
        only with ``allow_upstream_sim``."""
        report = report_from_pb(report_pb) if has_report else None
        policy = self.policy.with_user_data(digest)
        if report is None:
            policy = Policy(policy.main_attributes, allow_simulation=True)
        # The platform label is the name of the verifier that took the report (sim, tdx, ...):
        # never a string the client sent.
        platform = "none" if report is None else "unknown"
        try:
            if report is not None:
                platform = _metrics.bounded(type(self.verifier_for(report.str_tee_platform)).name)
            verified = await verify_optional(
                report, policy, self.verifier_for, upstream_sim=self.allow_upstream_sim
            )
        except BackendNotFound as exc:
            _metrics.attestation_verdict(ROLE, platform, "platform")
            raise CMError(Kind.INVALID_ARGUMENT, f"parse report attributes failed: {exc}") from None
        except (InvalidInput, BackendUnavailable) as exc:
            _metrics.attestation_verdict(ROLE, platform, "evidence")
            raise CMError(Kind.INVALID_ARGUMENT, f"parse report attributes failed: {exc}") from None
        except VerificationError as exc:
            _metrics.attestation_verdict(ROLE, platform, exc.check)
            raise CMError(
                Kind.PERMISSION_DENIED, f"attestation report verify failed: {exc}"
            ) from None
        _metrics.attestation_verdict(ROLE, platform, None)
        return verified

    # ---- RA --------------------------------------------------------------------------------

    @_rpc("get_ra_cert")
    async def GetRaCert(self, request: cm_pb2.GetRaCertRequest) -> cm_pb2.GetRaCertResponse:
        if len(request.nonce) > MAX_NONCE_CHARS:
            raise CMError(Kind.INVALID_ARGUMENT, f"nonce longer than {MAX_NONCE_CHARS} chars")
        response = cm_pb2.GetRaCertResponse(status=ok_status(), cert=self.identity.cert_pem)
        if self.attester is not None:
            digest = hashlib.sha256(
                self.identity.cert_pem.encode() + b"." + request.nonce.encode()
            ).digest()
            try:
                report = await self.attester.generate(digest)
            except Exception as exc:
                raise CMError(
                    Kind.INTERNAL, f"runified_attestation_generate_auth_report err: {exc}"
                ) from None
            response.attestation_report.CopyFrom(report_to_pb(report))
        return response

    # ---- apps ------------------------------------------------------------------------------

    def _env_for(self, verified: VerifiedReport, client_env: str) -> dict[str, Any] | None:
        if verified.details.get("report") == "absent":
            return _parse_env(client_env)
        attrs = verified.attributes
        # The verifier that accepted the report declares the identity policies see.
        tee = type(self.verifier_for(attrs.str_tee_platform)).policy_identity(attrs)
        if tee is None:
            raise CMError(Kind.UNSUPPORTED, "unsupported platform")
        return {"request_time": _now(), "tee": tee}

    async def _attested_app(
        self, request: cm_pb2.EncryptedRequest, message: type[AppRequest], rpc: str
    ) -> tuple[cm_pb2.ResourceRequest, RSAPublicKey, dict[str, Any] | None, dict[str, Any]]:
        """Open an app's request (GetDataKeys, GetTlsAsset) and check its report, bound to the
        app ``cert`` and the serialized resource request (docs/compat.md#report-binding). Returns
        the resource request, the cert's key (replies are sealed to it), the policy ``env`` and
        the app's identity for the audit log. A malformed ``env`` is refused before
        attestation, as upstream; a report that does not verify is a logged refusal."""
        opened = await self._open(request)
        inner = opened.parse(message)
        if not inner.HasField("resource_request"):
            raise CMError(Kind.DECODE, "resource_request is missing")
        rr = inner.resource_request
        _parse_env(rr.env)
        recipient = recipient_from_cert_pem(inner.cert)
        digest = ra_user_data(inner.cert.encode(), serialize_canonical(rr))
        try:
            verified = await self._attest(
                inner.attestation_report, inner.HasField("attestation_report"), digest
            )
        except CMError as err:
            app = _app_identity(rr, inner.cert, None)
            await self._thread(self._log_refusal, rr, app, rpc, err)
            raise
        app = _app_identity(rr, inner.cert, verified)
        return rr, recipient, self._env_for(verified, rr.env), app

    # ---- audit (docs/audit.md) ---------------------------------------------------------------

    def _access_details(
        self, rr: cm_pb2.ResourceRequest, app: dict[str, Any], rpc: str
    ) -> dict[str, Any]:
        return {**app, "op": rr.op_name, "scope": rr.scope, "rpc": rpc}

    def _release_drafts(
        self, rr: cm_pb2.ResourceRequest, app: dict[str, Any], rpc: str, owners: dict[str, str]
    ) -> list[AuditDraft]:
        """One ``key_release`` entry per released resource (none when the log is off)."""
        if self.store.audit is None:
            return []
        base = self._access_details(rr, app, rpc)
        drafts = []
        for res in rr.resources:
            uuid = parse_resource_uri(res.resource_uri).data_uuid
            details = {**base, "resource_uri": res.resource_uri, "columns": list(res.columns)}
            drafts.append(AuditDraft("key_release", owners[uuid], uuid, details))
        return drafts

    def _log_refusal(
        self, rr: cm_pb2.ResourceRequest, app: dict[str, Any], rpc: str, err: CMError
    ) -> None:
        """Log a refused app request once per requested data_uuid that has an owner, within
        the per-data_uuid bound of the refusal limiter (docs/audit.md#abuse-limits)."""
        log = self.store.audit
        if log is None:
            return
        base = {**self._access_details(rr, app, rpc), "reason": err.detail}
        drafts = []
        seen: set[str] = set()
        for res in rr.resources:
            try:
                uuid = parse_resource_uri(res.resource_uri).data_uuid
            except CMError:
                continue
            if uuid in seen:
                continue
            seen.add(uuid)
            info = self.store.data_info(uuid)
            if info is None:
                continue
            details = {**base, "resource_uri": res.resource_uri, "columns": list(res.columns)}
            drafts.append(AuditDraft("key_refusal", info.owner_party_id, uuid, details, True))
        self.store.record_audit(drafts)

    @_rpc("get_data_keys")
    async def GetDataKeys(self, request: cm_pb2.EncryptedRequest) -> cm_pb2.EncryptedResponse:
        rr, recipient, env, app = await self._attested_app(
            request, cm_pb2.GetDataKeysRequest, "get_data_keys"
        )

        loop = asyncio.get_running_loop()

        def work(committed: asyncio.Future[None]) -> tuple[cm_pb2.EncryptedResponse, bool]:
            uris = [r.resource_uri for r in rr.resources]
            keys, drafts, read = self._authorize_and_fetch(rr, env, uris, app, "get_data_keys")
            logged = self.store.record_audit_soon(drafts, loop, committed, read)
            response = cm_pb2.GetDataKeysResponse(
                data_keys=[cm_pb2.DataKey(resource_uri=u, data_key_b64=keys[u]) for u in uris],
                cert=self.identity.cert_pem,
            )
            return self.envelopes.seal(response, recipient), logged

        sealed = await self._released(work)
        _metrics.child(_metrics.KEY_RELEASES, "get_data_keys").inc(len(rr.resources))
        return sealed

    async def _released(
        self, work: Callable[[asyncio.Future[None]], tuple[cm_pb2.EncryptedResponse, bool]]
    ) -> cm_pb2.EncryptedResponse:
        """Run ``work(committed)`` in a thread: it decides, queues the release entries with
        what the decision read (:meth:`Database.record_audit_soon` completing ``committed``)
        and seals the reply while they commit. The sealed reply is returned only once they are
        committed (no key leaves without its entry); when ``work`` or the commit fails, the
        error propagates. When the data changed between the decision and the append
        (:class:`~.audit_log.StaleDecision`: nothing was logged), the request is decided
        again on the new state, up to :data:`REDECISIONS` times, then refused (retryable)."""
        loop = asyncio.get_running_loop()
        for attempt in range(REDECISIONS + 1):
            committed: asyncio.Future[None] = loop.create_future()
            try:
                sealed, logged = await self._thread(work, committed)
                if logged:
                    await committed
                return sealed
            except StaleDecision:
                if attempt == REDECISIONS:
                    raise
            finally:
                committed.cancel()  # no-op when done; else nobody awaits it (work failed)
        raise AssertionError("unreachable")

    def _authorize_and_fetch(
        self,
        rr: cm_pb2.ResourceRequest,
        env: dict[str, Any] | None,
        uris: list[str],
        app: dict[str, Any],
        rpc: str,
    ) -> tuple[dict[str, str], list[AuditDraft], dict[str, int]]:
        """The keys of ``uris`` when the policies allow the request, the release entries
        the caller must commit (:meth:`Database.record_audit_soon`) before the reply holding
        the keys is sent, and the read set they must be committed against (``data_uuid ->
        revision`` the decision relied on). A refusal is counted in
        ``trustflow_policy_refusals_total`` by ``rpc`` and reason, and logged (docs/audit.md)
        before it propagates."""
        try:
            keys, owners, read = self._decide(rr, env, uris, rpc)
        except CMError as err:
            self._log_refusal(rr, app, rpc, err)
            raise
        return keys, self._release_drafts(rr, app, rpc, owners), read

    def _decide(
        self, rr: cm_pb2.ResourceRequest, env: dict[str, Any] | None, uris: list[str], rpc: str
    ) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
        """``(resource_uri -> key, data_uuid -> owner, data_uuid -> revision read)`` when
        every resource is allowed."""
        if not uris:
            raise CMError(Kind.INVALID_ARGUMENT, "resource_request has no resources")
        parsed = [parse_resource_uri(u) for u in uris]
        view, sealed = self.store.access_view(rr.scope, (p.data_uuid for p in parsed), uris)
        budget = Budget()  # one for all the resources of the request
        for res, p in zip(rr.resources, parsed, strict=True):
            info, policy = view[p.data_uuid]
            if info is None:
                raise _refused(rpc, "no_data", CMError(Kind.NOT_FOUND, "party id is not existed"))
            if policy is None:
                raise _refused(rpc, "no_policy", CMError(Kind.NOT_FOUND, "data policy is empty."))
            if info.owner_party_id != policy.owner_party_id:
                raise _refused(
                    rpc,
                    "owner_mismatch",
                    CMError(
                        Kind.ASSERT,
                        f"the owner of data key {info.owner_party_id} != the owner of data "
                        f"policy {policy.owner_party_id}",
                    ),
                )
            access = AccessRequest(
                resource_uri=res.resource_uri,
                initiator_party_id=rr.initiator_party_id,
                scope=rr.scope,
                op_name=rr.op_name,
                columns=tuple(res.columns),
                attrs=res.attrs,
                env=env,
            )
            if not allows(policy.rules, access, budget):
                raise _refused(
                    rpc,
                    "rules_deny",
                    CMError(
                        Kind.PERMISSION_DENIED,
                        f"request is not satisfied with the policy {p.data_uuid}.",
                    ),
                )
        if any(u not in sealed for u in uris):
            raise _refused(rpc, "no_key", CMError(Kind.NOT_FOUND, "data_keys not found."))
        infos = [info for p in parsed if (info := view[p.data_uuid][0]) is not None]
        owners = {info.data_uuid: info.owner_party_id for info in infos}
        read = {info.data_uuid: info.revision for info in infos}
        return {u: sealed.open(u) for u in uris}, owners, read

    @_rpc("get_tls_asset")
    async def GetTlsAsset(self, request: cm_pb2.EncryptedRequest) -> cm_pb2.EncryptedResponse:
        """Authorized exactly like GetDataKeys; the asset is the communication group's
        (docs/tls-asset.md): group of (scope, first resource, op), leaf for the attested
        ``cert``'s key, sealed to that key."""
        rr, recipient, env, app = await self._attested_app(
            request, cm_pb2.GetTlsAssetRequest, "get_tls_asset"
        )

        loop = asyncio.get_running_loop()

        def work(committed: asyncio.Future[None]) -> tuple[cm_pb2.EncryptedResponse, bool]:
            from ...tls_asset import issue_group_asset

            uris = [r.resource_uri for r in rr.resources]
            keys, drafts, read = self._authorize_and_fetch(rr, env, uris, app, "get_tls_asset")
            try:
                asset = issue_group_asset(
                    base64.b64decode(keys[uris[0]]),
                    scope=rr.scope,
                    data_uuid=uris[0],
                    op_name=rr.op_name,
                    member_public_key=recipient,
                    now=datetime.now(timezone.utc),
                    issuer_secret=self.tls_issuer_secret,
                )
            except InvalidInput as exc:
                raise CMError(Kind.INVALID_ARGUMENT, str(exc)) from None
            except BackendUnavailable as exc:
                raise CMError(Kind.UNSUPPORTED, str(exc)) from None
            # queued once the asset exists: a failed issue logs no release
            logged = self.store.record_audit_soon(drafts, loop, committed, read)
            response = cm_pb2.GetTlsAssetResponse(
                data_keys=[cm_pb2.DataKey(resource_uri=u, data_key_b64=keys[u]) for u in uris],
                tls_asset=cm_pb2.TlsAsset(
                    cert=asset.cert_pem.decode(), private_key=asset.private_key_pem.decode()
                ),
                cert=self.identity.cert_pem,
            )
            return self.envelopes.seal(response, recipient), logged

        sealed = await self._released(work)
        _metrics.child(_metrics.KEY_RELEASES, "get_tls_asset").inc(len(rr.resources))
        return sealed

    @_rpc("create_result_data_key")
    async def CreateResultDataKey(
        self, request: cm_pb2.EncryptedRequest
    ) -> cm_pb2.EncryptedResponse:
        opened = await self._open(request)
        inner: cm_pb2.CreateResultDataKeyRequest = opened.parse(cm_pb2.CreateResultDataKeyRequest)
        if not inner.HasField("body"):
            raise CMError(Kind.INVALID_ARGUMENT, "request body is empty")
        body = inner.body
        try:
            await self._register_result(inner)
        except CMError as err:
            await self._thread(self._log_result_refusal, body, err)
            raise
        return _status_only()

    async def _register_result(self, inner: cm_pb2.CreateResultDataKeyRequest) -> None:
        """Attest the registering app and store the result (:meth:`Database.create_result_key`)."""
        body = inner.body
        digest = hashlib.sha256(serialize_canonical(body)).digest()
        verified = await self._attest(
            inner.attestation_report, inner.HasField("attestation_report"), digest
        )
        env = self._env_for(verified, "")
        uri = parse_resource_uri(body.resource_uri)
        check_data_key_b64(body.data_key_b64, body.resource_uri)
        for ancestor in body.ancestor_uuids:
            parse_resource_uri(ancestor)
        key = NewKey(body.resource_uri, uri.data_uuid, body.data_key_b64)

        budget = Budget()  # one for all the ancestors of the request

        def releasable(ancestor: str, rules: Sequence[Rule]) -> bool:
            released = releases_to_app(rules, ancestor, body.scope, env, budget)
            if not released:
                _metrics.POLICY_REFUSALS.labels("create_result_data_key", "ancestor_held").inc()
            return released

        await self._thread(
            self.store.create_result_key,
            body.owner_id,
            key,
            body.scope,
            list(body.ancestor_uuids),
            derive_result_policy,
            releasable,
            {
                "platform": verified.attributes.str_tee_platform
                if verified.details.get("report") != "absent"
                else "",
                "measurement": verified.attributes.hex_ta_measurement
                if verified.details.get("report") != "absent"
                else "",
            },
        )

    def _log_result_refusal(
        self, body: cm_pb2.CreateResultDataKeyRequest.Body, err: CMError
    ) -> None:
        """A refused result registration, for the owners of its ancestors and of the data_uuid
        it names when that exists (within the refusal limits, docs/audit.md#abuse-limits)."""
        log = self.store.audit
        if log is None:
            return
        try:
            result = parse_resource_uri(body.resource_uri).data_uuid
        except CMError:
            result = ""
        details: dict[str, Any] = {
            "result": result,
            "result_owner": body.owner_id,
            "resource_uri": body.resource_uri,
            "scope": body.scope,
            "ancestors": list(body.ancestor_uuids),
            "reason": err.detail,
        }
        drafts = []
        for uuid in dict.fromkeys([*body.ancestor_uuids, result]):
            if not uuid:
                continue
            info = self.store.data_info(uuid)
            if info is not None:
                drafts.append(
                    AuditDraft("result_refusal", info.owner_party_id, uuid, details, True)
                )
        self.store.record_audit(drafts)

    # ---- data keys (owners) ----------------------------------------------------------------

    @_rpc("create_data_keys")
    async def CreateDataKeys(self, request: cm_pb2.EncryptedRequest) -> cm_pb2.EncryptedResponse:
        def work() -> None:
            inner, mark = self._owner_request(
                request, cm_pb2.CreateDataKeysRequest, missing=Kind.INVALID_ARGUMENT
            )
            keys = []
            for dk in inner.data_keys:
                uri = parse_resource_uri(dk.resource_uri)
                check_data_key_b64(dk.data_key_b64, dk.resource_uri)
                keys.append(NewKey(dk.resource_uri, uri.data_uuid, dk.data_key_b64))
            self.store.create_data_keys(inner.owner_party_id, keys, mark)

        await self._thread(work)
        return _status_only()

    @_rpc("delete_data_key")
    async def DeleteDataKey(self, request: cm_pb2.EncryptedRequest) -> cm_pb2.EncryptedResponse:
        def work() -> None:
            inner, mark = self._owner_request(
                request, cm_pb2.DeleteDataKeyRequest, missing=Kind.INVALID_ARGUMENT
            )
            uri = parse_resource_uri(inner.resource_uri)
            self.store.delete_data_key(
                inner.owner_party_id, uri.data_uuid, inner.resource_uri, mark
            )

        await self._thread(work)
        return _status_only()

    @_rpc("get_export_data_key")
    async def GetExportDataKey(self, request: cm_pb2.EncryptedRequest) -> cm_pb2.EncryptedResponse:
        def work() -> cm_pb2.EncryptedResponse:
            opened = self.envelopes.open(request)
            inner = opened.parse(cm_pb2.GetExportDataKeyRequest)
            verified = self.envelopes.authenticate(
                opened, inner.request_party_id, missing=Kind.INVALID_ARGUMENT
            )
            uri = parse_resource_uri(inner.resource_uri)
            for attempt in range(REDECISIONS + 1):
                try:
                    return self._export(inner, uri.data_uuid, verified)
                except StaleDecision:
                    if attempt == REDECISIONS:
                        raise
            raise AssertionError("unreachable")

        return await self._thread(work)

    def _export(
        self, inner: cm_pb2.GetExportDataKeyRequest, data_uuid: str, verified: VerifiedJws
    ) -> cm_pb2.EncryptedResponse:
        """Decide an export and commit its entries before the sealed key is returned, against
        the revision of the data's record read first (:class:`~.audit_log.StaleDecision`:
        the data changed meanwhile, nothing was logged; decide again)."""
        try:
            info = self.store.data_info(data_uuid)  # its revision first: what follows is newer
            owners = self.store.original_owners(data_uuid)
            verify_export_certificate(
                inner.data_export_certificate,
                inner.request_party_id,
                inner.resource_uri,
                owners,
            )
            keys = self.store.get_keys([inner.resource_uri])
            if inner.resource_uri not in keys:
                raise CMError(Kind.NOT_FOUND, "data_keys not found.")
        except CMError as err:
            self._log_export_refusal(inner, data_uuid, err)
            raise
        details = {
            "requester": inner.request_party_id,
            "resource_uri": inner.resource_uri,
            "voters": sorted(owners - {inner.request_party_id}),
        }
        audience = sorted({*owners, *([info.owner_party_id] if info else [])})
        self.store.record_audit(
            [AuditDraft("export", o, data_uuid, details) for o in audience],
            None if info is None else {data_uuid: info.revision},
        )
        response = cm_pb2.GetExportDataKeyResponse(
            data_key=cm_pb2.DataKey(
                resource_uri=inner.resource_uri, data_key_b64=keys[inner.resource_uri]
            )
        )
        sealed = self.envelopes.seal(response, _signer_key(verified))
        _metrics.KEY_RELEASES.labels("get_export_data_key").inc()
        return sealed

    def _log_export_refusal(
        self, inner: cm_pb2.GetExportDataKeyRequest, data_uuid: str, err: CMError
    ) -> None:
        """An authenticated export request that was refused, for the data's owner (within the
        refusal limits, docs/audit.md#abuse-limits)."""
        log = self.store.audit
        if log is None:
            return
        info = self.store.data_info(data_uuid)
        if info is None:
            return
        details: dict[str, Any] = {
            "requester": inner.request_party_id,
            "resource_uri": inner.resource_uri,
            "reason": err.detail,
        }
        self.store.record_audit(
            [AuditDraft("export_refusal", info.owner_party_id, data_uuid, details, True)]
        )

    @_rpc("register_cert")
    async def RegisterCert(self, request: cm_pb2.EncryptedRequest) -> cm_pb2.EncryptedResponse:
        def work() -> None:
            inner = self.envelopes.open(request).parse(cm_pb2.RegisterCertRequest)
            if not inner.certs or not inner.owner_party_id:
                raise CMError(Kind.ASSERT, "certs or party_id is empty")
            chain, party = verified_chain_party(list(inner.certs))
            if party != inner.owner_party_id:
                raise CMError(
                    Kind.ASSERT,
                    f"party_id {inner.owner_party_id} is wrong derived from public key",
                )
            self.store.register_cert(party, spki_pem(chain[-1]))

        await self._thread(work)
        return _status_only()

    # ---- policies (owners) -----------------------------------------------------------------

    def _owner_request(
        self, request: cm_pb2.EncryptedRequest, cls: type[Any], *, missing: Kind = Kind.NOT_FOUND
    ) -> tuple[Any, RequestMark]:
        """Open and authenticate a mutating owner request; return it and the mark the store
        records with its effect (replay protection, :mod:`.freshness`)."""
        opened = self.envelopes.open(request)
        inner = opened.parse(cls)
        verified = self.envelopes.authenticate(opened, inner.owner_party_id, missing=missing)
        return inner, RequestMark(opened.digest, inner.owner_party_id, verified.header.get("jti"))

    @_rpc("create_data_policy")
    async def CreateDataPolicy(self, request: cm_pb2.EncryptedRequest) -> cm_pb2.EncryptedResponse:
        def work() -> None:
            inner, mark = self._owner_request(request, cm_pb2.CreateDataPolicyRequest)
            if not inner.HasField("policy"):
                raise CMError(Kind.NOT_FOUND, "policy is empty.")
            uuid = parse_resource_uri(inner.policy.data_uuid).data_uuid
            rules = [rule_from_pb(r) for r in inner.policy.rules]
            for rule in rules:
                check_rule(rule)
            self.store.put_policy(inner.owner_party_id, inner.scope, uuid, rules, mark)

        await self._thread(work)
        return _status_only()

    @_rpc("list_data_policy")
    async def ListDataPolicy(self, request: cm_pb2.EncryptedRequest) -> cm_pb2.EncryptedResponse:
        def work() -> cm_pb2.EncryptedResponse:
            opened = self.envelopes.open(request)
            inner = opened.parse(cm_pb2.ListDataPolicyRequest)
            verified = self.envelopes.authenticate(
                opened, inner.owner_party_id, missing=Kind.NOT_FOUND
            )
            policies = self.store.list_policies(inner.owner_party_id, inner.scope)
            response = cm_pb2.ListDataPolicyResponse(policies=[policy_to_pb(p) for p in policies])
            return self.envelopes.seal(response, _signer_key(verified))

        return await self._thread(work)

    @_rpc("add_data_rule")
    async def AddDataRule(self, request: cm_pb2.EncryptedRequest) -> cm_pb2.EncryptedResponse:
        def work() -> None:
            inner, mark = self._owner_request(request, cm_pb2.AddDataRuleRequest)
            if not inner.HasField("rule"):
                raise CMError(Kind.NOT_FOUND, "policy is empty.")
            uuid = parse_resource_uri(inner.data_uuid).data_uuid
            rule = rule_from_pb(inner.rule)
            check_rule(rule)
            self.store.add_rule(inner.owner_party_id, inner.scope, uuid, rule, mark)

        await self._thread(work)
        return _status_only()

    @_rpc("delete_data_policy")
    async def DeleteDataPolicy(self, request: cm_pb2.EncryptedRequest) -> cm_pb2.EncryptedResponse:
        def work() -> None:
            inner, mark = self._owner_request(request, cm_pb2.DeleteDataPolicyRequest)
            uuid = parse_resource_uri(inner.data_uuid).data_uuid
            self.store.delete_policy(inner.owner_party_id, inner.scope, uuid, mark)

        await self._thread(work)
        return _status_only()

    @_rpc("delete_data_rule")
    async def DeleteDataRule(self, request: cm_pb2.EncryptedRequest) -> cm_pb2.EncryptedResponse:
        def work() -> None:
            inner, mark = self._owner_request(request, cm_pb2.DeleteDataRuleRequest)
            uuid = parse_resource_uri(inner.data_uuid).data_uuid
            self.store.delete_rule(inner.owner_party_id, inner.scope, uuid, inner.rule_id, mark)

        await self._thread(work)
        return _status_only()
