"""``trustflowapis.audit.v1.AuditLog``: owners read and prove the CM's audit log (docs/audit.md).

A service of our own next to upstream's ``CapsuleManager`` (same port), so upstream clients see
no change. Requests are authenticated exactly like the owner RPCs (:meth:`.Envelopes.open`,
:meth:`.Envelopes.authenticate`: JWS by the x5c chain whose party id is ``owner_party_id``,
freshness claims when present); replies are sealed to the signer. An owner sees only entries
about its own data and gets inclusion proofs only for them; heads and consistency proofs hold
hashes only.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from google.protobuf.message import Message

from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2
from ...proto.trustflowapis.audit.v1 import audit_pb2
from ...proto.trustflowapis.audit.v1 import audit_pb2_grpc as audit_grpc
from ..capsule_manager_protocol.audit import TreeHead
from ..capsule_manager_protocol.errors import CMError, Kind
from .audit_log import MAX_PAGE
from .database import Database
from .envelope import Envelopes
from .service import _rpc, _signer_key


def head_to_pb(head: TreeHead) -> audit_pb2.TreeHead:
    return audit_pb2.TreeHead(
        size=head.size,
        root_hex=head.root.hex(),
        timestamp_ms=head.timestamp_ms,
        signature_b64=base64.b64encode(head.signature).decode(),
    )


class AuditLogService(audit_grpc.AuditLogServicer):
    """The four audit RPCs over ``store``'s log (refused with Unsupported when it is off)."""

    def __init__(self, *, store: Database, envelopes: Envelopes) -> None:
        self.store = store
        self.envelopes = envelopes

    async def _serve(
        self, request: cm_pb2.EncryptedRequest, cls: type[Any], answer: Any
    ) -> cm_pb2.EncryptedResponse:
        def work() -> cm_pb2.EncryptedResponse:
            opened = self.envelopes.open(request)
            inner = opened.parse(cls)
            verified = self.envelopes.authenticate(
                opened, inner.owner_party_id, missing=Kind.NOT_FOUND
            )
            response: Message = answer(inner)
            return self.envelopes.seal(response, _signer_key(verified))

        return await asyncio.to_thread(work)

    @_rpc("audit_list_entries")
    async def ListEntries(self, request: cm_pb2.EncryptedRequest) -> cm_pb2.EncryptedResponse:
        def answer(inner: audit_pb2.ListAuditEntriesRequest) -> Message:
            if inner.start_index < 0 or inner.page_size < 0 or inner.since_ms < 0:
                raise CMError(Kind.INVALID_ARGUMENT, "start_index, page_size, since_ms >= 0")
            limit = inner.page_size or MAX_PAGE
            rows = self.store.audit_entries(
                inner.owner_party_id,
                data_uuid=inner.data_uuid,
                since_ms=inner.since_ms,
                start=inner.start_index,
                limit=limit,
            )
            full = len(rows) == min(limit, MAX_PAGE)
            return audit_pb2.ListAuditEntriesResponse(
                entries=[
                    audit_pb2.AuditEntry(index=r.index, entry_json=r.entry_json) for r in rows
                ],
                next_index=rows[-1].index + 1 if rows and full else 0,
            )

        return await self._serve(request, audit_pb2.ListAuditEntriesRequest, answer)

    @_rpc("audit_get_tree_head")
    async def GetTreeHead(self, request: cm_pb2.EncryptedRequest) -> cm_pb2.EncryptedResponse:
        def answer(_inner: audit_pb2.GetTreeHeadRequest) -> Message:
            return head_to_pb(self.store.audit_tree_head())

        return await self._serve(request, audit_pb2.GetTreeHeadRequest, answer)

    @_rpc("audit_get_inclusion_proofs")
    async def GetInclusionProofs(
        self, request: cm_pb2.EncryptedRequest
    ) -> cm_pb2.EncryptedResponse:
        def answer(inner: audit_pb2.GetInclusionProofsRequest) -> Message:
            indexes = list(inner.indexes)
            proofs = self.store.audit_inclusion_proofs(
                inner.owner_party_id, indexes, inner.tree_size
            )
            return audit_pb2.InclusionProofs(
                proofs=[
                    audit_pb2.InclusionProof(index=i, hashes_hex=[h.hex() for h in proof])
                    for i, proof in zip(indexes, proofs, strict=True)
                ]
            )

        return await self._serve(request, audit_pb2.GetInclusionProofsRequest, answer)

    @_rpc("audit_get_consistency_proof")
    async def GetConsistencyProof(
        self, request: cm_pb2.EncryptedRequest
    ) -> cm_pb2.EncryptedResponse:
        def answer(inner: audit_pb2.GetConsistencyProofRequest) -> Message:
            proof = self.store.audit_consistency_proof(inner.first_size, inner.second_size)
            return audit_pb2.Proof(hashes_hex=[h.hex() for h in proof])

        return await self._serve(request, audit_pb2.GetConsistencyProofRequest, answer)
