"""The owner's side of the CM audit log (docs/audit.md): the four ``AuditLog`` RPCs and
:func:`fetch_bundle`, which gathers a verifiable bundle (signed head, the owner's entries with
inclusion proofs, a consistency proof from an earlier head) and verifies it before returning."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from ...proto.trustflowapis.audit.v1 import audit_pb2
from ...proto.trustflowapis.audit.v1 import audit_pb2_grpc as audit_grpc
from ..capsule_manager_protocol.audit import TreeHead, cm_public_key, verify_bundle
from .client import CapsuleManagerClient, Credentials

#: Most inclusion proofs one request asks for (the CM's page size).
MAX_PROOFS = 500


async def list_entries(
    client: CapsuleManagerClient,
    creds: Credentials,
    *,
    data_uuid: str = "",
    since_ms: int = 0,
    below: int | None = None,
) -> list[audit_pb2.AuditEntry]:
    """All of ``creds``' entries (every page), oldest first; only indexes below ``below``."""
    out: list[audit_pb2.AuditEntry] = []
    start = 0
    while True:
        request = audit_pb2.ListAuditEntriesRequest(
            owner_party_id=creds.party_id,
            data_uuid=data_uuid,
            since_ms=since_ms,
            start_index=start,
        )
        page = await client.request(
            "ListEntries",
            request,
            creds,
            audit_pb2.ListAuditEntriesResponse,
            stub=audit_grpc.AuditLogStub,
        )
        assert page is not None
        out.extend(e for e in page.entries if below is None or e.index < below)
        if not page.next_index or (below is not None and page.next_index >= below):
            return out
        start = page.next_index


async def tree_head(client: CapsuleManagerClient, creds: Credentials) -> TreeHead:
    """The CM's signed head of its whole log (not verified here)."""
    request = audit_pb2.GetTreeHeadRequest(owner_party_id=creds.party_id)
    head = await client.request(
        "GetTreeHead", request, creds, audit_pb2.TreeHead, stub=audit_grpc.AuditLogStub
    )
    assert head is not None
    return TreeHead(
        head.size,
        bytes.fromhex(head.root_hex),
        head.timestamp_ms,
        base64.b64decode(head.signature_b64),
    )


async def inclusion_proofs(
    client: CapsuleManagerClient, creds: Credentials, indexes: Sequence[int], tree_size: int
) -> dict[int, list[str]]:
    """``index -> proof`` (hex hashes) of ``creds``' entries in the signed tree of
    ``tree_size``, fetched :data:`MAX_PROOFS` at a time."""
    out: dict[int, list[str]] = {}
    for start in range(0, len(indexes), MAX_PROOFS):
        request = audit_pb2.GetInclusionProofsRequest(
            owner_party_id=creds.party_id,
            indexes=list(indexes[start : start + MAX_PROOFS]),
            tree_size=tree_size,
        )
        proofs = await client.request(
            "GetInclusionProofs",
            request,
            creds,
            audit_pb2.InclusionProofs,
            stub=audit_grpc.AuditLogStub,
        )
        assert proofs is not None
        out.update((p.index, list(p.hashes_hex)) for p in proofs.proofs)
    return out


async def consistency_proof(
    client: CapsuleManagerClient, creds: Credentials, first: int, second: int
) -> list[str]:
    request = audit_pb2.GetConsistencyProofRequest(
        owner_party_id=creds.party_id, first_size=first, second_size=second
    )
    proof = await client.request(
        "GetConsistencyProof", request, creds, audit_pb2.Proof, stub=audit_grpc.AuditLogStub
    )
    assert proof is not None
    return list(proof.hashes_hex)


async def fetch_bundle(
    client: CapsuleManagerClient,
    creds: Credentials,
    *,
    data_uuid: str = "",
    since_ms: int = 0,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A verified audit bundle (format: :mod:`..capsule_manager_protocol.audit`) of
    ``creds``' entries under the CM's current signed head, with the CM's certificate; with
    ``previous`` (an earlier bundle), a consistency proof from its head and the check that its
    entries are unchanged. Raises :class:`~..capsule_manager_protocol.audit.AuditVerificationError`
    when anything does not verify."""
    nonce = secrets.token_hex(32)
    cert_pem, report = await client.get_ra_cert(nonce)  # verified unless tee_plat is simulated
    head = await tree_head(client, creds)
    entries = await list_entries(
        client, creds, data_uuid=data_uuid, since_ms=since_ms, below=head.size
    )
    proofs = await inclusion_proofs(client, creds, [e.index for e in entries], head.size)
    bundle: dict[str, Any] = {
        "cm_cert": cert_pem,
        "owner": creds.party_id,
        "head": head.to_dict(),
        "entries": [
            {"index": e.index, "entry": e.entry_json, "proof": proofs.get(e.index, [])}
            for e in entries
        ],
    }
    if report is not None:
        bundle["cm_attestation"] = {"nonce": nonce, "report": report.to_dict()}
    if previous is not None:
        old = TreeHead.from_dict(previous.get("head"), "previous head")
        bundle["consistency"] = {
            "from": old.to_dict(),
            "proof": await consistency_proof(client, creds, old.size, head.size),
        }
    verify_bundle(bundle, cm_public_key(cert_pem), owner=creds.party_id, previous=previous)
    return bundle


async def attested_cm_cert(
    bundle: Mapping[str, Any],
    tee_plat: str,
    constraints: Mapping[str, str | None] | None = None,
    *,
    pm: Any = None,
) -> str:
    """The bundle's CM certificate (PEM), after verifying the CM attestation report in the
    bundle with the ``tee_plat`` verifier backend: genuine, matching ``constraints`` (the
    verifier's ``constraint_fields``) and binding ``SHA-256(cert ‖ "." ‖ nonce)`` as
    ``GetRaCert`` does. Raises :class:`~trustflow_core.errors.VerificationError` otherwise."""
    from ...attestation import Report, ra_user_data
    from ...errors import InvalidInput, VerificationError
    from ...manager import get_plugin_manager
    from ...registry import verifier_class
    from .client import constraints_policy

    cert_pem, attestation = bundle.get("cm_cert"), bundle.get("cm_attestation")
    if not isinstance(cert_pem, str):
        raise InvalidInput("the bundle holds no cm_cert")
    if not isinstance(attestation, Mapping) or not isinstance(attestation.get("nonce"), str):
        raise VerificationError("missing_report", "the bundle holds no CM attestation report")
    try:
        report = Report.from_dict(attestation.get("report") or {})
    except (TypeError, ValueError, KeyError) as exc:
        raise InvalidInput(f"cm_attestation.report is malformed: {exc}") from None
    pm = pm or get_plugin_manager()
    cls = verifier_class(pm, tee_plat)
    if cls is None:
        raise VerificationError("platform", f"no verifier {tee_plat!r} is installed")
    policy = constraints_policy(cls, dict(constraints or {})).with_user_data(
        ra_user_data(cert_pem.encode(), attestation["nonce"].encode())
    )
    async with cls.from_role(None, pm=pm) as verifier:
        await verifier.verify(report, policy)
    return cert_pem
