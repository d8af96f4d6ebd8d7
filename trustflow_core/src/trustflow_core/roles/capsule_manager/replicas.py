"""One identity for all Capsule Manager replicas: the join protocol (docs/replicas.md).

A replica that has no key files and is given peers (``--join HOST:PORT``) *joins*: it makes a
fresh ephemeral EC P-256 key, gets a report from its own attester whose user data is
:func:`request_binding` (nonce, public key) and calls ``trustflowapis.replica.v1.Replica/Join``
on a running replica. The responder verifies the report against the join policy (default:
its own platform and measurements, :func:`default_policy`) and the binding, then returns the
identity bundle (CM private key, CM certificate, storage key) as a compact JWE
(``ECDH-ES+A256KW``/``A256GCM``) to the ephemeral key, with its own report bound to
:func:`reply_binding` (nonce, JWE) so the joiner verifies the responder the same way (mutual).

Refusals are ``PERMISSION_DENIED`` with a message naming the reason, logged by the responder
in one line (peer address and reason; never key material).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ...attestation import Attester, Policy, Report, VerifiedReport, Verifier
from ...errors import (
    BackendNotFound,
    BackendUnavailable,
    InvalidInput,
    TrustflowError,
    VerificationError,
)
from ...proto.trustflowapis.replica.v1 import replica_pb2, replica_pb2_grpc
from .. import _metrics
from ..capsule_manager_protocol.reports import report_from_pb, report_to_pb
from . import identity_keys
from .identity_keys import CMIdentity

log = logging.getLogger(__name__)
SERVICE = "trustflowapis.replica.v1.Replica"
#: The ``role`` label of the join verdicts in ``trustflow_attestation_verdicts_total``.
METRICS_ROLE = "capsule-manager-join"
NONCE_BYTES = 32
REQUEST_DOMAIN = b"trustflow-cm/v1 replica join request\0"
REPLY_DOMAIN = b"trustflow-cm/v1 replica join reply\0"
JWE_ALG, JWE_ENC = "ECDH-ES+A256KW", "A256GCM"
BUNDLE_TYPE = "trustflow-cm-identity+json"
#: Seconds one Join call may take.
CALL_TIMEOUT = 15.0
#: First and largest pause between two rounds over the peers (seconds).
FIRST_PAUSE, MAX_PAUSE = 0.2, 5.0
#: gRPC codes that mean "this peer refused us": final, retrying does not help.
REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)


@dataclass(frozen=True)
class Bundle:
    """What replicas share: the CM key pair and the storage key (secrets: no repr)."""

    identity: CMIdentity
    storage_key: bytes = field(repr=False)


class JoinRefused(TrustflowError):
    """A report did not pass the join check; the message says why (no secrets), ``check``
    names the failed check for the metrics (a verifier's check name, ``binding``, ``request``,
    ``platform``)."""

    def __init__(self, message: str, check: str = "request") -> None:
        super().__init__(message)
        self.check = check


def request_binding(nonce: bytes, public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The joiner's report user data: SHA-256(domain || nonce (32 bytes) || SPKI DER)."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(REQUEST_DOMAIN + nonce + spki).digest()


def reply_binding(nonce: bytes, sealed: str) -> bytes:
    """The responder's report user data: SHA-256(domain || nonce || SHA-256(JWE))."""
    return hashlib.sha256(REPLY_DOMAIN + nonce + hashlib.sha256(sealed.encode()).digest()).digest()


def seal_bundle(bundle: Bundle, public_key: ec.EllipticCurvePublicKey) -> str:
    """The bundle as a compact JWE to ``public_key`` (:data:`JWE_ALG`, :data:`JWE_ENC`)."""
    from jwcrypto import jwe, jwk

    payload = json.dumps(
        {
            "private_key_pem": identity_keys.private_key_pem(bundle.identity).decode(),
            "cert_pem": bundle.identity.cert_pem,
            "storage_key_b64": base64.b64encode(bundle.storage_key).decode(),
        }
    ).encode()
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = jwe.JWE(payload, protected={"alg": JWE_ALG, "enc": JWE_ENC, "cty": BUNDLE_TYPE})
    token.add_recipient(jwk.JWK.from_pem(pem))
    return str(token.serialize(compact=True))


def open_bundle(sealed: str, private_key: ec.EllipticCurvePrivateKey) -> Bundle:
    """Decrypt a sealed bundle with the joiner's ephemeral key; :class:`InvalidInput` when it
    does not decrypt or does not hold a consistent identity."""
    from jwcrypto import jwe, jwk
    from jwcrypto.common import JWException

    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        token = jwe.JWE()
        token.allowed_algs = [JWE_ALG, JWE_ENC]
        token.deserialize(sealed, key=jwk.JWK.from_pem(pem))
        data = json.loads(token.payload)
        storage_key = base64.b64decode(data["storage_key_b64"], validate=True)
        identity = identity_keys.from_pem(
            data["private_key_pem"].encode(), data["cert_pem"], "received from the replica"
        )
    except (JWException, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"the sealed identity does not open: {type(exc).__name__}") from None
    if len(storage_key) != 32:
        raise InvalidInput("the sealed identity holds no 32-byte storage key")
    return Bundle(identity, storage_key)


class JoinCheck:
    """Verifies a peer's report against the join policy and the expected binding."""

    def __init__(self, policy: Policy, verifier_for: Callable[[str], Verifier]) -> None:
        self.policy = policy
        self.verifier_for = verifier_for

    async def check(self, report: Report, binding: bytes) -> VerifiedReport:
        """The verified report, or :class:`JoinRefused` naming the reason: no verifier for its
        platform, evidence or policy failure (wrong platform/measurement, simulated when not
        allowed), or bound to other data than ``binding`` (another key or nonce)."""
        try:
            verifier = self.verifier_for(report.str_tee_platform)
        except (BackendNotFound, InvalidInput) as exc:
            raise JoinRefused(
                f"no verifier for platform {report.str_tee_platform!r}: {exc}", "platform"
            ) from None
        try:
            verified = await verifier.verify(report, self.policy)
        except (VerificationError, InvalidInput) as exc:
            check = exc.check if isinstance(exc, VerificationError) else "evidence"
            raise JoinRefused(f"report does not satisfy the join policy: {exc}", check) from None
        if not hmac.compare_digest(verified.user_data, binding):
            raise JoinRefused(
                "report is not bound to this join request's key and nonce "
                "(made for another key, or replayed)",
                "binding",
            )
        return verified


async def default_policy(
    attester: Attester, verifier_for: Callable[[str], Verifier], *, simulated: bool
) -> Policy:
    """The join policy by default: this CM's own platform and the values of its own report for
    every identity and constraint field of that platform's verifier (measurements), with
    simulation allowed only when this CM's attester is simulated. A platform whose verifier
    names no such field has no default (:class:`InvalidInput`: set ``replicas.policy``)."""
    own = await attester.generate(bytes(32))
    verifier = verifier_for(own.str_tee_platform)
    cls = type(verifier)
    try:
        verified = await verifier.verify(own, Policy((cls.acceptance_entry(),), simulated))
    except VerificationError as exc:
        raise BackendUnavailable(f"this CM's own report does not verify here: {exc}") from None
    names = {*cls.identity_fields.values(), *(cls.constraint_fields or {}).values()}
    if not names:
        raise InvalidInput(
            f"platform {own.str_tee_platform!r} names no measurement fields: "
            "set replicas.policy (who may join)"
        )
    pinned = {name: getattr(verified.attributes, name) for name in sorted(names)}
    return Policy((cls.acceptance_entry(**pinned),), simulated)


def describe(policy: Policy) -> str:
    """A one-line summary of a join policy, for the log."""
    entries = [
        "{" + ", ".join(f"{k}={v}" for k, v in e.to_dict().items()) + "}"
        for e in policy.main_attributes
    ]
    return " | ".join(entries) + (" (simulation allowed)" if policy.allow_simulation else "")


class ReplicaService(replica_pb2_grpc.ReplicaServicer):
    """The responder: ``Join`` on every replica (module docstring)."""

    def __init__(self, bundle: Bundle, attester: Attester, check: JoinCheck) -> None:
        self._bundle = bundle
        self._attester = attester
        self._check = check

    async def Join(
        self, request: replica_pb2.JoinRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> replica_pb2.JoinResponse:
        peer = context.peer()
        try:
            public_key = _ec_public_key(request.public_key_pem)
            if len(request.nonce) != NONCE_BYTES:
                raise JoinRefused(f"nonce must be {NONCE_BYTES} bytes, got {len(request.nonce)}")
            if not request.HasField("attestation_report"):
                raise JoinRefused("no attestation report")
            report = report_from_pb(request.attestation_report)
            verified = await self._check.check(report, request_binding(request.nonce, public_key))
        except JoinRefused as exc:
            _metrics.attestation_verdict(METRICS_ROLE, self._platform(request), exc.check)
            log.warning("replica join from %s refused: %s", peer, exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"join refused: {exc}")
            raise AssertionError("unreachable") from None
        _metrics.attestation_verdict(METRICS_ROLE, self._platform(request), None)
        sealed = seal_bundle(self._bundle, public_key)
        own = await self._attester.generate(reply_binding(request.nonce, sealed))
        log.info(
            "replica join from %s accepted (%s report%s)",
            peer,
            verified.attributes.str_tee_platform,
            ", simulated" if verified.simulated else "",
        )
        return replica_pb2.JoinResponse(
            sealed_identity=sealed, attestation_report=report_to_pb(own)
        )

    def _platform(self, request: replica_pb2.JoinRequest) -> str:
        """The metrics label of the report's platform: the name of the verifier that takes it
        (``sim``, ``tdx``, ...), never a string the peer sent; ``unknown`` when none does."""
        try:
            verifier = self._check.verifier_for(request.attestation_report.str_tee_platform)
        except (BackendNotFound, InvalidInput):
            return "unknown"
        return _metrics.bounded(type(verifier).name)


def _channel(peer: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(peer)
    return grpc.aio.secure_channel(peer, credentials)


def _ec_public_key(pem: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnicodeError):
        raise JoinRefused("public_key_pem is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise JoinRefused("public_key_pem must be an EC P-256 key")
    return key


class JoinFailed(BackendUnavailable):
    """No peer gave this replica the identity (the message says why, per peer)."""


@dataclass
class JoinProgress:
    """Where a join stands, for readiness: ``problem`` None once joined."""

    problem: str | None = "not joined yet"


async def join(
    peers: Sequence[str],
    attester: Attester,
    check: JoinCheck,
    *,
    timeout: float,
    progress: JoinProgress | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> Bundle:
    """Obtain the identity from the first of ``peers`` that answers and passes the check,
    retrying the peers with growing pauses for up to ``timeout`` seconds. A peer that refuses
    us (``PERMISSION_DENIED``) ends the join at once (:class:`JoinFailed` with its reason);
    so does none answering in time (every peer's last problem named). ``credentials``: TLS to
    the peers (their CM port has ``tls:``); None: plaintext gRPC."""
    progress = progress or JoinProgress()
    key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE
    last: dict[str, str] = {}
    while True:
        for peer in peers:
            nonce = os.urandom(NONCE_BYTES)
            report = await attester.generate(request_binding(nonce, key.public_key()))
            request = replica_pb2.JoinRequest(
                public_key_pem=pem, nonce=nonce, attestation_report=report_to_pb(report)
            )
            try:
                async with _channel(peer, credentials) as channel:
                    reply = await replica_pb2_grpc.ReplicaStub(channel).Join(
                        request, timeout=min(CALL_TIMEOUT, max(1.0, deadline - time.monotonic()))
                    )
            except grpc.aio.AioRpcError as exc:
                if exc.code() in REFUSED:
                    raise JoinFailed(
                        f"replica {peer} refused to let this CM join: {exc.details()}"
                    ) from None
                last[peer] = f"{exc.code().name}: {exc.details()}"
                progress.problem = f"not joined yet: {peer}: {last[peer]}"
                continue
            try:
                responder = report_from_pb(reply.attestation_report)
                await check.check(responder, reply_binding(nonce, reply.sealed_identity))
                bundle = open_bundle(reply.sealed_identity, key)
            except (JoinRefused, InvalidInput) as exc:
                log.warning("replica %s answered the join but is not trusted: %s", peer, exc)
                last[peer] = f"not trusted: {exc}"
                progress.problem = f"not joined yet: {peer}: {last[peer]}"
                continue
            log.info("joined: identity %s from replica %s", bundle.identity.party_id, peer)
            progress.problem = None
            return bundle
        left = deadline - time.monotonic()
        if left <= 0:
            reasons = "; ".join(f"{p}: {why}" for p, why in last.items())
            raise JoinFailed(f"no replica to join answered within {timeout:g} s ({reasons})")
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, MAX_PAUSE)
