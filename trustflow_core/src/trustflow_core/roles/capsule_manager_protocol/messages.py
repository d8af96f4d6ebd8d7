"""A sealed envelope as the protocol's ``secretflowapis.v2.sdc.Jwe`` message (both directions)."""

from __future__ import annotations

from ...channel import Jwe
from ...proto.secretflowapis.v2.sdc import jwt_pb2


def jwe_message(jwe: Jwe) -> jwt_pb2.Jwe:
    """``jwe``, every member, as ``EncryptedRequest.message`` / ``EncryptedResponse.message``."""
    return jwt_pb2.Jwe(
        protected_header=jwe.protected,
        encrypted_key=jwe.encrypted_key,
        iv=jwe.iv,
        ciphertext=jwe.ciphertext,
        tag=jwe.tag,
        aad=jwe.aad,
    )
