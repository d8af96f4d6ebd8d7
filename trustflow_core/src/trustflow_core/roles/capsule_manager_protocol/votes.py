"""Data-export certificates ("votes", docs/compat.md#votes).

Producing (``trustflow util sign-vote-request | voter-sign | generate-vote-result``) follows
upstream ``cms_util`` byte for byte: bodies are standard base64 of ``json.dumps`` (default
separators) of the remaining YAML keys in order; signatures are RS256, standard base64.

Verifying (:func:`verify_export_certificate`) is the upstream algorithm made sound
(docs/compat.md#votes): invite chains are verified like the request chain, the voter identity is the
party id of the invite chain's LAST certificate and its signature must verify with the FIRST
certificate of that same verified chain, and each original owner counts once, however many invites
it sent.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from .certs import rs256_sign, rs256_verify, rsa_public_key, verified_chain_party
from .errors import CMError, Kind

TEE_DOWNLOAD = "TEE_DOWNLOAD"
APPROVE = "APPROVE"
MAX_CERTIFICATE_CHARS = 1 << 20


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64_canonical(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise CMError(Kind.DECODE, f"{what} must be a string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CMError(Kind.DECODE, f"{what} is not standard base64") from None
    if _b64(raw) != text:
        raise CMError(Kind.DECODE, f"{what} is not canonical standard base64")
    return raw


# ---- producing -------------------------------------------------------------------------------


def sign_vote_request(
    fields: Mapping[str, Any], chain_pems: Sequence[str], key: rsa.RSAPrivateKey | None
) -> dict[str, Any]:
    """``{cert_chain, body, vote_request_signature}``; without a key only ``cert_chain``."""
    out: dict[str, Any] = {"cert_chain": list(chain_pems)}
    if key is None:
        return out
    body = _b64(json.dumps(dict(fields)).encode())
    out["body"] = body
    out["vote_request_signature"] = _b64(rs256_sign(key, body.encode("ascii")))
    return out


def voter_sign(
    fields: Mapping[str, Any],
    vote_request_signature: str,
    chain_pems: Sequence[str],
    key: rsa.RSAPrivateKey,
) -> dict[str, Any]:
    """``{cert_chain, body, voter_signature}``; the signature covers
    ``ASCII(body) || ASCII(vote_request_signature)``."""
    body = _b64(json.dumps(dict(fields)).encode())
    signature = rs256_sign(key, body.encode("ascii") + vote_request_signature.encode("ascii"))
    return {"cert_chain": list(chain_pems), "body": body, "voter_signature": _b64(signature)}


def vote_result(
    signed_request: Mapping[str, Any], signed_voters: Sequence[Mapping[str, Any]]
) -> str:
    """The data-export certificate JSON text."""
    request = {k: signed_request[k] for k in ("cert_chain", "body", "vote_request_signature")}
    invites = [{k: v[k] for k in ("cert_chain", "body", "voter_signature")} for v in signed_voters]
    return json.dumps({"vote_request": request, "vote_invite": invites})


# ---- verifying -------------------------------------------------------------------------------


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CMError(Kind.DECODE, f"{what} must be a JSON object")
    return value


def _json_body(raw: bytes, what: str) -> Mapping[str, Any]:
    try:
        return _object(json.loads(raw.decode("utf-8")), what)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CMError(Kind.DECODE, f"{what} is not JSON") from None


def _chain(entry: Mapping[str, Any], what: str) -> tuple[rsa.RSAPublicKey, str]:
    pems = entry.get("cert_chain")
    if not isinstance(pems, list):
        raise CMError(Kind.DECODE, f"{what}.cert_chain must be a list of PEM strings")
    chain, party = verified_chain_party(pems, f"{what}.cert_chain")
    return rsa_public_key(chain[0], f"{what}.cert_chain[0]"), party


def parse_certificate(text: str) -> tuple[Mapping[str, Any], list[Mapping[str, Any]]]:
    if len(text) > MAX_CERTIFICATE_CHARS:
        raise CMError(Kind.DECODE, "data_export_certificate is too large")
    try:
        doc = _object(json.loads(text), "data_export_certificate")
    except (ValueError, RecursionError):
        raise CMError(Kind.DECODE, "data_export_certificate is not JSON") from None
    request = _object(doc.get("vote_request"), "vote_request")
    invites = doc.get("vote_invite") or []
    if not isinstance(invites, list):
        raise CMError(Kind.DECODE, "vote_invite must be a list")
    return request, [_object(i, "vote_invite[]") for i in invites]


def verify_export_certificate(
    text: str, request_party_id: str, resource_uri: str, original_owners: set[str]
) -> None:
    """Raise :class:`CMError` unless the certificate authorizes ``request_party_id`` to export
    ``resource_uri``: a valid request by that party for that resource of type TEE_DOWNLOAD, and
    an APPROVE vote with a valid signature and chain from every original owner other than the
    requester."""
    request, invites = parse_certificate(text)
    key, party = _chain(request, "vote_request")
    if party != request_party_id:
        raise CMError(Kind.ASSERT, f"party_id {request_party_id} is wrong derived from public key")
    body_text = request.get("body")
    body = _b64_canonical(body_text, "vote_request.body")
    signature_text = request.get("vote_request_signature")
    signature = _b64_canonical(signature_text, "vote_request.vote_request_signature")
    assert isinstance(body_text, str) and isinstance(signature_text, str)
    if not rs256_verify(key, signature, body_text.encode("ascii")):
        raise CMError(Kind.CRYPTO, "vote request signature verify failed")
    fields = _json_body(body, "vote_request.body")
    if not isinstance(fields.get("type"), str):
        raise CMError(Kind.DECODE, "vote request body: type is required")
    threshold = fields.get("approved_threshold")
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0:
        raise CMError(Kind.DECODE, "vote request body: approved_threshold must be a u32")
    action = fields.get("approved_action")
    if not action or not isinstance(action, str):
        raise CMError(Kind.INVALID_ARGUMENT, "approve action is empty")
    parts = action.split(",")
    if not parts[0]:
        raise CMError(Kind.INVALID_ARGUMENT, "action_name is empty")
    if len(parts) < 2 or not parts[1]:
        raise CMError(Kind.INVALID_ARGUMENT, "resource_uri is empty")
    if parts[1] != resource_uri:
        raise CMError(Kind.ASSERT, f"{parts[1]} {resource_uri} is not the same as expected")
    if fields["type"] != TEE_DOWNLOAD:
        raise CMError(Kind.ASSERT, "type is not tee download")

    needed = set(original_owners) - {request_party_id}
    approved: set[str] = set()
    for i, invite in enumerate(invites):
        what = f"vote_invite[{i}]"
        voter_key, voter = _chain(invite, what)
        if voter not in needed:
            continue
        invite_body_text = invite.get("body")
        invite_body = _b64_canonical(invite_body_text, f"{what}.body")
        voter_sig = _b64_canonical(invite.get("voter_signature"), f"{what}.voter_signature")
        assert isinstance(invite_body_text, str)
        signed = invite_body_text.encode("ascii") + signature_text.encode("ascii")
        if not rs256_verify(voter_key, voter_sig, signed):
            raise CMError(Kind.CRYPTO, f"{what} voter signature verify failed")
        vote = _json_body(invite_body, f"{what}.body")
        if vote.get("action") != APPROVE:
            raise CMError(
                Kind.ASSERT,
                f"vote request_id {vote.get('vote_request_id', '')} action is not approve",
            )
        approved.add(voter)
    if not needed <= approved:
        raise CMError(Kind.ASSERT, "not all ancestors are voting")
