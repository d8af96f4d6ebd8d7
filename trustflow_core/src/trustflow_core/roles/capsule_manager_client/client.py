"""Python client API of the Capsule Manager (owners and TEE apps).

Requests are built like the upstream SDK builds them (docs/compat.md#jws-dialect): inner request
JSON signed as an RS256 JWS with ``x5c`` = the caller's chain and the freshness claims
``iat``/``jti`` (which the CM checks; the upstream SDK sends none), sealed to the CM certificate's
key with the ``jwe`` channel's upstream profile (RSA-OAEP, A128GCM, 12-byte IV). Responses are
opened with the caller's key and parsed strictly. The CM certificate comes from ``GetRaCert`` once
per client; unless ``tee_plat`` names a simulated verifier (the upstream ``sim`` convention: nothing
is checked) its report is verified against ``tee_constraints`` and bound to the certificate and a
fresh nonce.

Several CM replicas (docs/failover.md): ``target`` may list several endpoints (a list, or
``"h1:p1,h2:p2"``) or name a host that resolves to several addresses; a call that finds its
replica down (gRPC ``UNAVAILABLE``) or silent (``DEADLINE_EXCEEDED``) is re-sent, as the
identical request message, to the next one (:mod:`.failover`).

Refusals raise :class:`CapsuleManagerError` (``code``, ``message``, ``kind``); an unreachable
CM raises :class:`~trustflow_core.errors.BackendUnavailable` (naming every replica tried).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from google.protobuf.message import Message

from ...attestation import Policy, Report, Verifier, ra_user_data
from ...channel import EnvelopeChannel, Jwe
from ...errors import (
    AccessDenied,
    BackendUnavailable,
    EnvelopeError,
    InvalidInput,
    ObjectNotFound,
    TrustflowError,
    UnsupportedOperation,
    VerificationError,
)
from ...identity import party_id_of_chain
from ...proto.secretflowapis.v2.sdc import ual_pb2
from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2
from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2_grpc as cm_grpc
from ...wire import parse_json, to_json
from .. import _metrics
from .._logging import REQUEST_ID_HEADER, current_request_id
from .._net import grpc_failure
from ..capsule_manager_protocol.errors import Kind, kind_of_message
from ..capsule_manager_protocol.freshness import new_claims
from ..capsule_manager_protocol.messages import jwe_message
from ..capsule_manager_protocol.reports import report_from_pb
from .failover import Failover, parse_endpoints

if TYPE_CHECKING:
    import pluggy

M = TypeVar("M", bound=Message)


class CapsuleManagerError(TrustflowError):
    """The CM refused a request (in-band ``status.code != 0``)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"capsule manager refused (code {code}): {message}")
        self.code = code
        self.message = message
        self.kind = kind_of_message(message)

    def as_contract_error(self) -> TrustflowError:
        """The matching contract error (AccessDenied, ObjectNotFound, InvalidInput,
        UnsupportedOperation), or self."""
        if self.code == 7:
            return AccessDenied(str(self))
        if self.code == 12:
            return UnsupportedOperation(str(self))
        if self.code == 3 or self.kind is Kind.ALREADY_EXISTS:
            return InvalidInput(str(self))
        if self.kind is Kind.NOT_FOUND:
            return ObjectNotFound(str(self))
        return self


@dataclass(frozen=True)
class Credentials:
    """A party's key and certificate chain (leaf first)."""

    private_key: RSAPrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]

    @property
    def party_id(self) -> str:
        return party_id_of_chain(self.chain)

    @property
    def chain_pems(self) -> list[str]:
        return [c.public_bytes(serialization.Encoding.PEM).decode() for c in self.chain]

    @classmethod
    def from_files(cls, private_key_file: Path, cert_files: Sequence[Path]) -> Credentials:
        try:
            key = serialization.load_pem_private_key(private_key_file.read_bytes(), None)
            chain: list[x509.Certificate] = []
            for path in cert_files:
                chain.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except OSError as exc:
            raise ObjectNotFound(f"{exc.filename}: {exc.strerror}") from None
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"cannot load credentials: {exc}") from None
        if not isinstance(key, RSAPrivateKey):
            raise InvalidInput(f"{private_key_file} is not an RSA private key")
        if not chain:
            raise InvalidInput("no certificate given")
        return cls(key, tuple(chain))


def constraints_policy(verifier: type[Verifier], constraints: Mapping[str, str | None]) -> Policy:
    """The report policy the upstream SDK applies to the CM (docs/compat.md#sdk-cm-report-policy):
    the verifier's platform, debug disabled where it has a debug flag, and the ``constraints`` it
    names (``mr_plat``, ``mr_boot``, ... per its ``constraint_fields``)."""
    return Policy((verifier.constraints_entry(constraints),), verifier.simulated)


class CapsuleManagerClient:
    """An async client. Use ``async with CapsuleManagerClient(...) as cm``.

    ``target``: the CM's ``host:port``, or several replicas' (a list, or comma-separated),
    tried in order with failover (:mod:`.failover`, docs/failover.md); ``timeout`` bounds each
    attempt. ``failover_rounds`` / ``failover_backoff`` tune the retry rounds over several
    addresses.
    ``tee_plat`` names the verifier backend of the CM's platform (``tdx``, ``csv``, ...; the
    upstream CLI's ``tee_plat`` values); None: the development default verifier. A simulated
    one follows the upstream ``sim`` convention: the CM's report is not checked, unless
    ``verify_sim`` asks to verify it when the CM sends one. ``tee_constraints`` pin the CM's
    measurements by the verifier's ``constraint_fields``. An unknown name raises
    :class:`~trustflow_core.errors.BackendNotFound` on first use. ``channel_options``: gRPC
    channel arguments, e.g. ``[("grpc.use_local_subchannel_pool", 1)]`` for a connection of
    this client's own. ``envelope_channel`` names the envelope channel backend sealing the
    requests (built with ``profile: upstream``); ``pm`` is the plugin manager it and the
    verifiers come from (default: the installed plugins).
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        tee_plat: str | None = None,
        tee_constraints: Mapping[str, str | None] | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        timeout: float = 30.0,
        pm: pluggy.PluginManager | None = None,
        verify_sim: bool = False,
        envelope_channel: str = "jwe",
        failover_rounds: int | None = None,
        failover_backoff: float | None = None,
    ) -> None:
        self.endpoints = parse_endpoints(target)
        self.target = ",".join(self.endpoints)
        self.tee_plat = tee_plat
        self.tee_constraints = dict(tee_constraints or {})
        self.timeout = timeout
        self.verify_sim = verify_sim
        self._pm = pm
        self.envelope_channel = envelope_channel
        self._channel_credentials = channel_credentials
        self._channel_options = list(channel_options)
        tuning: dict[str, Any] = {}
        if failover_rounds is not None:
            tuning["rounds"] = failover_rounds
        if failover_backoff is not None:
            tuning["backoff"] = failover_backoff
        self._failover_tuning = tuning
        self._failover: Failover | None = None  # made on first use, inside the event loop
        self._jwe: EnvelopeChannel | None = None
        self._cm_cert_pem: str | None = None

    async def __aenter__(self) -> CapsuleManagerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._failover is not None:
            await self._failover.close()
            self._failover = None

    # ---- plumbing --------------------------------------------------------------------------

    @property
    def pm(self) -> pluggy.PluginManager:
        if self._pm is None:
            from ...manager import get_plugin_manager

            self._pm = get_plugin_manager()
        return self._pm

    @property
    def channel(self) -> EnvelopeChannel:
        if self._jwe is None:
            from ...registry import ENVELOPE_CHANNEL, backend_class

            cls = backend_class(self.pm, ENVELOPE_CHANNEL, self.envelope_channel)
            self._jwe = cls.from_role({"profile": "upstream"}, pm=self.pm)
        return self._jwe

    @property
    def failover(self) -> Failover:
        """The replicas' channels and the failover loop (made on first use, inside the event
        loop)."""
        if self._failover is None:
            self._failover = Failover(
                self.endpoints,
                credentials=self._channel_credentials,
                options=self._channel_options,
                **self._failover_tuning,
            )
        return self._failover

    def grpc_channel(self) -> grpc.aio.Channel:
        """The gRPC channel to the replica that answered last (the first endpoint before any
        call). Calls through :meth:`request` / :meth:`_call` fail over; a stub made on this
        channel does not."""
        return self.failover.current_channel()

    async def _call(
        self,
        method: str,
        request: Message,
        stub: Callable[[grpc.aio.Channel], Any] | None = None,
    ) -> Any:
        """Call ``method`` of upstream's service (or of the service whose stub class, or any
        ``channel -> stub`` factory, is ``stub``), failing over to another replica with the
        identical ``request`` (:mod:`.failover`). Each attempt is counted in
        ``trustflow_cm_client_requests_total`` by its outcome."""
        response, _ = await self._send(method, request, stub)
        return response

    async def _send(
        self,
        method: str,
        request: Message,
        stub: Callable[[grpc.aio.Channel], Any] | None = None,
    ) -> tuple[Any, int]:
        """:meth:`_call`, and how many attempts it took (more than 1: the request was re-sent
        to another replica)."""
        factory = cm_grpc.CapsuleManagerStub if stub is None else stub
        rid = current_request_id()
        metadata = ((REQUEST_ID_HEADER, rid),) if rid else None
        attempts = 0

        async def attempt(channel: grpc.aio.Channel) -> Any:
            nonlocal attempts
            attempts += 1
            try:
                return await getattr(factory(channel), method)(
                    request, timeout=self.timeout, metadata=metadata
                )
            except grpc.aio.AioRpcError as exc:
                _metrics.CM_CLIENT_REQUESTS.labels(method, exc.code().name).inc()
                raise

        started = time.perf_counter()
        try:
            response = await self.failover.call(
                method, attempt, _metrics.CM_CLIENT_FAILOVERS.labels(method).inc
            )
        except grpc.aio.AioRpcError as exc:
            raise BackendUnavailable(
                grpc_failure(self.target, method, exc.code().name, exc.details())
            ) from None
        finally:
            _metrics.CM_CLIENT_SECONDS.labels(method).observe(time.perf_counter() - started)
        _metrics.CM_CLIENT_REQUESTS.labels(method, str(response.status.code)).inc()
        return response, attempts

    async def get_ra_cert(self, nonce: str | None = None) -> tuple[str, Report | None]:
        """``(cm_cert_pem, report)``, the report verified unless ``tee_plat`` is simulated."""
        nonce = nonce if nonce is not None else secrets.token_hex(32)
        response = await self._call("GetRaCert", cm_pb2.GetRaCertRequest(nonce=nonce))
        if response.status.code != 0:
            raise CapsuleManagerError(response.status.code, response.status.message)
        report = (
            report_from_pb(response.attestation_report)
            if response.HasField("attestation_report")
            else None
        )
        expected = self.cm_verifier
        simulated = expected is None or expected.simulated
        if not simulated or (self.verify_sim and report is not None):
            await self._verify_cm(response.cert, nonce, report)
        return response.cert, report

    @property
    def cm_verifier(self) -> type[Verifier] | None:
        """The verifier class ``tee_plat`` names (None: no development default installed)."""
        from ...registry import verifier_class

        return verifier_class(self.pm, self.tee_plat)

    @property
    def policy(self) -> Policy:
        """The policy the CM's report must satisfy, before the binding to cert and nonce."""
        expected = self.cm_verifier
        if expected is None:
            raise VerificationError("platform", "no verifier is configured for the CM's report")
        return constraints_policy(expected, self.tee_constraints)

    async def _verify_cm(self, cert_pem: str, nonce: str, report: Report | None) -> None:
        from ...registry import verifier_for_platform

        if report is None:
            raise VerificationError("missing_report", "the capsule manager sent no report")
        policy = self.policy.with_user_data(ra_user_data(cert_pem.encode(), nonce.encode()))
        verifier = verifier_for_platform(self.pm, report.str_tee_platform).from_role(
            None, pm=self.pm
        )
        async with verifier:
            await verifier.verify(report, policy)

    async def cm_cert_pem(self) -> str:
        if self._cm_cert_pem is None:
            self._cm_cert_pem, _ = await self.get_ra_cert()
        return self._cm_cert_pem

    async def cm_public_key(self) -> RSAPublicKey:
        cert = x509.load_pem_x509_certificate((await self.cm_cert_pem()).encode())
        key = cert.public_key()
        if not isinstance(key, RSAPublicKey):
            raise VerificationError("cm_cert", "the capsule manager key is not RSA")
        return key

    async def envelope(self, inner: Message, creds: Credentials) -> cm_pb2.EncryptedRequest:
        payload = to_json(inner, style="sdk").encode()
        jws = self.channel.sign(payload, creds.private_key, creds.chain, claims=new_claims())
        return await self.seal_request(json.dumps(jws.to_dict(), separators=(",", ":")).encode())

    async def seal_request(
        self, plaintext: bytes, *, signed: bool = True
    ) -> cm_pb2.EncryptedRequest:
        """``plaintext`` (a JWS as JSON when ``signed``) sealed to the CM as a request."""
        jwe = self.channel.seal(plaintext, await self.cm_public_key()).jwe
        return cm_pb2.EncryptedRequest(message=jwe_message(jwe), has_signature=signed)

    def _open(self, response: cm_pb2.EncryptedResponse, creds: Credentials, cls: type[M]) -> M:
        if not response.HasField("message"):
            raise EnvelopeError("capsule manager response has no message")
        m = response.message
        jwe = Jwe(m.protected_header, m.encrypted_key, m.iv, m.ciphertext, m.tag, m.aad)
        plaintext = self.channel.open(jwe, creds.private_key).plaintext
        return parse_json(plaintext, cls)

    async def request(
        self,
        method: str,
        inner: Message,
        creds: Credentials,
        response_cls: type[M] | None = None,
        *,
        stub: Callable[[grpc.aio.Channel], Any] | None = None,
    ) -> M | None:
        """Send one enveloped request (to upstream's service, or to the service of ``stub``, a
        stub class); return the opened inner response (or None). The envelope is made once:
        a failover re-sends the identical bytes (same ``iat``/``jti``), which the CM answers
        as the first time without a second effect (docs/failover.md)."""
        response, attempts = await self._send(method, await self.envelope(inner, creds), stub)
        if response.status.code != 0:
            error = CapsuleManagerError(response.status.code, response.status.message)
            if method == "RegisterCert" and attempts > 1 and error.kind is Kind.ALREADY_EXISTS:
                # Re-sent after a replica went away: the CM answers a second registration of
                # a party "already existed" (upstream's wire behaviour). The party id is
                # derived from the registered key, so the stored key is this one: the
                # outcome of the first attempt.
                return None
            raise error
        return None if response_cls is None else self._open(response, creds, response_cls)

    # ---- owner API -------------------------------------------------------------------------

    async def register_cert(self, creds: Credentials, scheme: str = "RSA") -> None:
        req = cm_pb2.RegisterCertRequest(
            owner_party_id=creds.party_id, certs=creds.chain_pems, scheme=scheme
        )
        await self.request("RegisterCert", req, creds)

    async def create_data_keys(self, creds: Credentials, keys: Sequence[tuple[str, str]]) -> None:
        req = cm_pb2.CreateDataKeysRequest(
            owner_party_id=creds.party_id,
            data_keys=[cm_pb2.DataKey(resource_uri=u, data_key_b64=k) for u, k in keys],
        )
        await self.request("CreateDataKeys", req, creds)

    async def delete_data_key(self, creds: Credentials, resource_uri: str) -> None:
        req = cm_pb2.DeleteDataKeyRequest(owner_party_id=creds.party_id, resource_uri=resource_uri)
        await self.request("DeleteDataKey", req, creds)

    async def create_data_policy(
        self, creds: Credentials, scope: str, data_uuid: str, rules: Sequence[cm_pb2.Rule]
    ) -> None:
        req = cm_pb2.CreateDataPolicyRequest(
            owner_party_id=creds.party_id,
            scope=scope,
            policy=cm_pb2.Policy(data_uuid=data_uuid, rules=list(rules)),
        )
        await self.request("CreateDataPolicy", req, creds)

    async def list_data_policies(self, creds: Credentials, scope: str) -> list[cm_pb2.Policy]:
        req = cm_pb2.ListDataPolicyRequest(owner_party_id=creds.party_id, scope=scope)
        resp = await self.request("ListDataPolicy", req, creds, cm_pb2.ListDataPolicyResponse)
        assert resp is not None
        return list(resp.policies)

    async def add_data_rule(
        self, creds: Credentials, scope: str, data_uuid: str, rule: cm_pb2.Rule
    ) -> None:
        req = cm_pb2.AddDataRuleRequest(
            owner_party_id=creds.party_id, scope=scope, data_uuid=data_uuid, rule=rule
        )
        await self.request("AddDataRule", req, creds)

    async def delete_data_rule(
        self, creds: Credentials, scope: str, data_uuid: str, rule_id: str
    ) -> None:
        req = cm_pb2.DeleteDataRuleRequest(
            owner_party_id=creds.party_id, scope=scope, data_uuid=data_uuid, rule_id=rule_id
        )
        await self.request("DeleteDataRule", req, creds)

    async def delete_data_policy(self, creds: Credentials, scope: str, data_uuid: str) -> None:
        req = cm_pb2.DeleteDataPolicyRequest(
            owner_party_id=creds.party_id, scope=scope, data_uuid=data_uuid
        )
        await self.request("DeleteDataPolicy", req, creds)

    async def get_export_data_key(
        self, creds: Credentials, resource_uri: str, data_export_certificate: str
    ) -> str:
        req = cm_pb2.GetExportDataKeyRequest(
            request_party_id=creds.party_id,
            resource_uri=resource_uri,
            data_export_certificate=data_export_certificate,
        )
        resp = await self.request("GetExportDataKey", req, creds, cm_pb2.GetExportDataKeyResponse)
        assert resp is not None
        return resp.data_key.data_key_b64

    # ---- app API ---------------------------------------------------------------------------

    async def get_data_keys(
        self,
        app: Credentials,
        resource_request: cm_pb2.ResourceRequest,
        report: ual_pb2.UnifiedAttestationReport | None,
    ) -> list[cm_pb2.DataKey]:
        req = cm_pb2.GetDataKeysRequest(cert=app.chain_pems[0], resource_request=resource_request)
        if report is not None:
            req.attestation_report.CopyFrom(report)
        resp = await self.request("GetDataKeys", req, app, cm_pb2.GetDataKeysResponse)
        assert resp is not None
        return list(resp.data_keys)

    async def create_result_data_key(
        self,
        app: Credentials,
        body: cm_pb2.CreateResultDataKeyRequest.Body,
        report: ual_pb2.UnifiedAttestationReport | None,
    ) -> None:
        req = cm_pb2.CreateResultDataKeyRequest(body=body)
        if report is not None:
            req.attestation_report.CopyFrom(report)
        await self.request("CreateResultDataKey", req, app)

    async def get_tls_asset(
        self,
        app: Credentials,
        resource_request: cm_pb2.ResourceRequest,
        report: ual_pb2.UnifiedAttestationReport | None,
    ) -> cm_pb2.GetTlsAssetResponse:
        req = cm_pb2.GetTlsAssetRequest(cert=app.chain_pems[0], resource_request=resource_request)
        if report is not None:
            req.attestation_report.CopyFrom(report)
        resp = await self.request("GetTlsAsset", req, app, cm_pb2.GetTlsAssetResponse)
        assert resp is not None
        return resp
