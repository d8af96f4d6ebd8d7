"""The Capsule Manager's audit log as owners see it (docs/audit.md): entry encoding, signed tree
heads, and the offline verification of an audit bundle (``trustflow util verify-audit``).

An entry is canonical JSON (sorted keys, no spaces, ASCII) of
``{"v": 1, "index", "time_ms", "kind", "owner", "data_uuid", "details"}``; its Merkle leaf is
``SHA-256(0x00 ‖ entry bytes)`` (:mod:`.merkle`), so the entry's position is part of what is
hashed. A tree head is signed by the CM's key (RSA-PSS, SHA-256, salt of the digest's length)
over :func:`head_payload`.

A bundle (what ``trustflow cms audit --json`` prints and ``verify-audit`` reads)::

    {"head": {"size", "root", "timestamp_ms", "signature"},          # hex root, base64 signature
     "entries": [{"index", "entry": "<entry JSON text>", "proof": ["<hex>", ...]}, ...],
     "consistency": {"from": <head>, "proof": [...]}}                 # optional
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from ...errors import InvalidInput, VerificationError
from . import merkle

ENTRY_VERSION = 1
HEAD_CONTEXT = b"trustflow-cm audit tree head v1\n"

#: Entry kinds and what their ``details`` hold (docs/audit.md#entries).
KINDS = (
    "key_release",  # app_party, cert_sha256, platform, measurement, op, columns, scope, uri, rpc
    "key_refusal",  # reason, app_party, cert_sha256?, platform?, measurement?, op, scope, uri, rpc
    "keys_created",  # resource_uris
    "key_deleted",  # resource_uri
    "policy_set",  # scope, rule_ids
    "rule_added",  # scope, rule_id
    "rule_deleted",  # scope, rule_id
    "policy_deleted",  # scope
    "result_registered",  # result, owner (of the result), scope, ancestors
    "result_refusal",  # result, result_owner, resource_uri, scope, ancestors, reason, suppressed?
    "export",  # requester, resource_uri, voters
    "export_refusal",  # requester, resource_uri, reason, suppressed?
)

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


class AuditVerificationError(VerificationError):
    """An audit bundle does not verify; the message names the entry or the head at fault."""

    def __init__(self, detail: str) -> None:
        super().__init__("audit", detail)


def encode_entry(
    index: int, time_ms: int, kind: str, owner: str, data_uuid: str, details: Mapping[str, Any]
) -> bytes:
    """The canonical bytes of one entry (what its leaf hashes)."""
    if kind not in KINDS:
        raise InvalidInput(f"unknown audit entry kind {kind!r}")
    entry = {
        "v": ENTRY_VERSION,
        "index": index,
        "time_ms": time_ms,
        "kind": kind,
        "owner": owner,
        "data_uuid": data_uuid,
        "details": dict(details),
    }
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def head_payload(size: int, root: bytes, timestamp_ms: int) -> bytes:
    """The signed bytes of a tree head: context line, then size, hex root and time, one a line."""
    return HEAD_CONTEXT + f"{size}\n{root.hex()}\n{timestamp_ms}\n".encode()


@dataclass(frozen=True)
class TreeHead:
    """A signed tree head: ``size`` leaves with Merkle root ``root`` at ``timestamp_ms``."""

    size: int
    root: bytes
    timestamp_ms: int
    signature: bytes

    @classmethod
    def sign(cls, key: RSAPrivateKey, size: int, root: bytes, timestamp_ms: int) -> TreeHead:
        payload = head_payload(size, root, timestamp_ms)
        return cls(size, root, timestamp_ms, key.sign(payload, _PSS, hashes.SHA256()))

    def verify(self, key: RSAPublicKey) -> None:
        """Raise :class:`AuditVerificationError` unless ``key`` signed this head."""
        try:
            key.verify(
                self.signature,
                head_payload(self.size, self.root, self.timestamp_ms),
                _PSS,
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise AuditVerificationError(
                f"the tree head of size {self.size} is not signed by the CM's key"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "root": self.root.hex(),
            "timestamp_ms": self.timestamp_ms,
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "head") -> TreeHead:
        if not isinstance(data, Mapping):
            raise InvalidInput(f"{where} must be an object")
        try:
            size, stamp = data["size"], data["timestamp_ms"]
            root = bytes.fromhex(data["root"])
            signature = base64.b64decode(data["signature"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise InvalidInput(f"{where} is malformed: {exc}") from None
        if not isinstance(size, int) or size < 0 or not isinstance(stamp, int):
            raise InvalidInput(f"{where}: size and timestamp_ms must be whole numbers")
        if len(root) != merkle.HASH_SIZE:
            raise InvalidInput(f"{where}: root must be {merkle.HASH_SIZE} bytes of hex")
        return cls(size, root, stamp, signature)


def cm_public_key(cert_pem: str | bytes) -> RSAPublicKey:
    """The RSA key of the CM's certificate (PEM)."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    try:
        key = x509.load_pem_x509_certificate(data).public_key()
    except ValueError as exc:
        raise InvalidInput(f"the CM certificate is not readable PEM: {exc}") from None
    if not isinstance(key, RSAPublicKey):
        raise InvalidInput("the CM certificate does not hold an RSA key")
    return key


def _hashes(value: Any, where: str) -> list[bytes]:
    if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
        raise InvalidInput(f"{where} must be a list of hex hashes")
    try:
        return [bytes.fromhex(h) for h in value]
    except ValueError:
        raise InvalidInput(f"{where} holds something that is not hex") from None


def parse_entry(text: str, where: str) -> dict[str, Any]:
    """An entry's JSON text as a dict; its text must be canonical (re-encoding gives it back)."""
    try:
        entry = json.loads(text)
        canonical = encode_entry(
            entry["index"],
            entry["time_ms"],
            entry["kind"],
            entry["owner"],
            entry["data_uuid"],
            entry["details"],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditVerificationError(f"{where} is not an audit entry: {exc}") from None
    if canonical != text.encode():
        raise AuditVerificationError(f"{where} is not in canonical form")
    return dict(entry)


@dataclass(frozen=True)
class VerifiedAudit:
    """What :func:`verify_bundle` established."""

    head: TreeHead
    entries: list[dict[str, Any]]
    consistent_with: TreeHead | None


def verify_bundle(
    bundle: Any,
    key: RSAPublicKey,
    *,
    owner: str | None = None,
    previous: Any = None,
) -> VerifiedAudit:
    """Check an audit bundle offline against the CM's public key: the head's signature; every
    entry canonical, at the index it claims, and included in the signed tree; with ``owner``,
    every entry about that owner's data; the consistency proof from ``bundle["consistency"]``'s
    head (signed too) to the head. With ``previous`` (an earlier bundle, already verified), its
    head must be the consistency proof's starting head and each of its entries must appear
    unchanged in ``bundle``. Raise :class:`AuditVerificationError` naming the entry or head at
    fault; :class:`InvalidInput` for a bundle that is not shaped as one."""
    if not isinstance(bundle, Mapping):
        raise InvalidInput("an audit bundle must be a JSON object")
    head = TreeHead.from_dict(bundle.get("head"))
    head.verify(key)
    raw = bundle.get("entries")
    if not isinstance(raw, list):
        raise InvalidInput("bundle.entries must be a list")
    entries = []
    for n, item in enumerate(raw):
        if not isinstance(item, Mapping) or not isinstance(item.get("entry"), str):
            raise InvalidInput(f"bundle.entries[{n}] needs index, entry (text) and proof")
        index = item.get("index")
        if not isinstance(index, int):
            raise InvalidInput(f"bundle.entries[{n}].index must be a whole number")
        where = f"entry #{index}"
        entry = parse_entry(item["entry"], where)
        if entry["index"] != index:
            raise AuditVerificationError(
                f"{where} says it is entry #{entry['index']}: entries were reordered"
            )
        if owner is not None and not hmac.compare_digest(entry["owner"].encode(), owner.encode()):
            raise AuditVerificationError(f"{where} is about another owner's data")
        proof = _hashes(item.get("proof"), f"{where} proof")
        try:
            merkle.verify_inclusion(
                index, head.size, merkle.leaf_hash(item["entry"].encode()), proof, head.root
            )
        except merkle.ProofError as exc:
            raise AuditVerificationError(
                f"{where} ({entry['kind']} of {entry['data_uuid']}) is not in the signed log: {exc}"
            ) from None
        entries.append(entry)
    consistent_with = None
    if bundle.get("consistency") is not None:
        consistency = bundle["consistency"]
        if not isinstance(consistency, Mapping):
            raise InvalidInput("bundle.consistency must be an object")
        old = TreeHead.from_dict(consistency.get("from"), "consistency.from")
        old.verify(key)
        try:
            merkle.verify_consistency(
                old.size,
                head.size,
                old.root,
                head.root,
                _hashes(consistency.get("proof"), "consistency.proof"),
            )
        except merkle.ProofError as exc:
            raise AuditVerificationError(
                f"the log of size {head.size} does not extend the head of size {old.size} "
                f"signed at {old.timestamp_ms}: {exc}"
            ) from None
        consistent_with = old
    if previous is not None:
        _check_previous(previous, consistent_with, bundle["entries"])
    return VerifiedAudit(head, entries, consistent_with)


def _check_previous(
    previous: Any, consistent_with: TreeHead | None, entries: Sequence[Mapping[str, Any]]
) -> None:
    if not isinstance(previous, Mapping):
        raise InvalidInput("the previous audit bundle must be a JSON object")
    old_head = TreeHead.from_dict(previous.get("head"), "previous head")
    if consistent_with is None or consistent_with != old_head:
        raise AuditVerificationError(
            f"the bundle carries no consistency proof from the previous head (size {old_head.size})"
        )
    now = {item["index"]: item["entry"] for item in entries}
    for item in previous.get("entries") or []:
        index = item.get("index")
        if index not in now:
            raise AuditVerificationError(f"entry #{index} of the previous audit is missing")
        if not hmac.compare_digest(now[index].encode(), str(item.get("entry")).encode()):
            raise AuditVerificationError(f"entry #{index} changed since the previous audit")
