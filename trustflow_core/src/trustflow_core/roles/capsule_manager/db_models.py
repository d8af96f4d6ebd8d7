"""SQLAlchemy schema of the Capsule Manager store (created on start; see docs/capsule-manager.md).

| table | key | holds |
|---|---|---|
| ``cm_meta`` | name | schema version, storage-key check value |
| ``cm_certs`` | party_id | SPKI PEM of the registered chain's last certificate |
| ``cm_data`` | data_uuid | owner party id, lineage parents (JSON list) |
| ``cm_data_keys`` | resource_uri | data_uuid, sealed data key (nonce + AES-GCM) |
| ``cm_policies`` | id; unique (scope, data_uuid) | owner party id |
| ``cm_rules`` | id (insertion order = rule order) | policy id, rule_id, rule JSON |
| ``cm_requests`` | digest; unique (party_id, jti) | accepted mutating owner requests (v2) |
| ``cm_audit`` | idx (0, 1, 2, ...) | audit entries: owner, data_uuid, time, entry JSON, MAC (v3) |
| ``cm_audit_size`` | id (one row) | the number of audit entries: the append lock (v3) |
| ``cm_audit_heads`` | size | tree heads the CM signed: root, time, signature (v3) |
| ``cm_audit_refusals`` | data_uuid | refusal-entry token buckets shared by workers/replicas (v4) |

``cm_data.revision`` (v4) counts the owner mutations of a data_uuid (keys, policies, rules):
a key release re-checks it when its audit entry is appended (docs/audit.md).

Schema versions and the steps between them: :mod:`.migrations`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..capsule_manager_protocol.freshness import MAX_JTI_CHARS

SCHEMA_VERSION = "4"
PARTY_ID_LEN = 64
UUID_LEN = 255
URI_LEN = 512
SCOPE_LEN = 255
DIGEST_LEN = 64
JTI_LEN = MAX_JTI_CHARS


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "cm_meta"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class Cert(Base):
    __tablename__ = "cm_certs"
    party_id: Mapped[str] = mapped_column(String(PARTY_ID_LEN), primary_key=True)
    public_key_pem: Mapped[str] = mapped_column(Text)


class DataRecord(Base):
    __tablename__ = "cm_data"
    data_uuid: Mapped[str] = mapped_column(String(UUID_LEN), primary_key=True)
    owner_party_id: Mapped[str] = mapped_column(String(PARTY_ID_LEN))
    parents_json: Mapped[str] = mapped_column(Text, default="[]")
    #: Bumped in the transaction of every owner mutation of this data_uuid's keys, policies
    #: or rules (v4): a release's entry is appended only if it is still what the decision read.
    revision: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class DataKeyRow(Base):
    __tablename__ = "cm_data_keys"
    resource_uri: Mapped[str] = mapped_column(String(URI_LEN), primary_key=True)
    data_uuid: Mapped[str] = mapped_column(String(UUID_LEN), index=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    sealed_key: Mapped[bytes] = mapped_column(LargeBinary)


class PolicyRow(Base):
    __tablename__ = "cm_policies"
    __table_args__ = (UniqueConstraint("scope", "data_uuid", name="uq_cm_policy_scope_uuid"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(SCOPE_LEN))
    data_uuid: Mapped[str] = mapped_column(String(UUID_LEN))
    owner_party_id: Mapped[str] = mapped_column(String(PARTY_ID_LEN), index=True)


class RuleRow(Base):
    __tablename__ = "cm_rules"
    __table_args__ = (Index("ix_cm_rules_policy", "policy_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("cm_policies.id", ondelete="CASCADE"))
    rule_id: Mapped[str] = mapped_column(String(255))
    body_json: Mapped[str] = mapped_column(Text)


class RequestRow(Base):
    """An accepted mutating owner request (replay protection, :mod:`.freshness`): the hex
    digest of its envelope, the signer, its ``jti`` (NULL without one; NULLs never collide
    in a unique constraint) and when it was applied (epoch seconds)."""

    __tablename__ = "cm_requests"
    __table_args__ = (UniqueConstraint("party_id", "jti", name="uq_cm_requests_party_jti"),)
    digest: Mapped[str] = mapped_column(String(DIGEST_LEN), primary_key=True)
    party_id: Mapped[str] = mapped_column(String(PARTY_ID_LEN))
    jti: Mapped[str | None] = mapped_column(String(JTI_LEN), nullable=True)
    created: Mapped[int] = mapped_column(BigInteger)


class AuditEntryRow(Base):
    """One audit entry (docs/audit.md): ``idx`` is its leaf index, ``entry_json`` the exact
    bytes its leaf hashes, ``mac`` an HMAC under a key derived from the storage key binding
    ``idx`` and ``entry_json`` (a row changed, moved or removed in SQL is named on the next
    check). ``owner_party_id``, ``data_uuid`` and ``time_ms`` repeat entry fields for queries."""

    __tablename__ = "cm_audit"
    # One index besides the key: every append writes it (a data_uuid filter scans the owner's
    # entries in index order).
    __table_args__ = (Index("ix_cm_audit_owner", "owner_party_id", "idx"),)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    owner_party_id: Mapped[str] = mapped_column(String(PARTY_ID_LEN))
    data_uuid: Mapped[str] = mapped_column(String(UUID_LEN))
    time_ms: Mapped[int] = mapped_column(BigInteger)
    entry_json: Mapped[str] = mapped_column(Text)
    mac: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditSizeRow(Base):
    """The number of audit entries, in one row that every append updates first: the row lock
    orders concurrent appends on PostgreSQL and MariaDB (SQLite serializes writers anyway)."""

    __tablename__ = "cm_audit_size"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(BigInteger)


class AuditHeadRow(Base):
    """A tree head the CM signed: the first ``size`` entries have Merkle root ``root``."""

    __tablename__ = "cm_audit_heads"
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class AuditRefusalBucket(Base):
    """The refusal-entry token bucket of one data_uuid (docs/audit.md#abuse-limits), shared by
    every worker and replica on this database: ``credit_ms`` of refill credit at ``stamp_ms``
    (epoch ms; the bucket refills one ms of credit per ms, an entry costs the interval), and
    ``suppressed`` refusals not logged since the data_uuid's last refusal entry."""

    __tablename__ = "cm_audit_refusals"
    data_uuid: Mapped[str] = mapped_column(String(UUID_LEN), primary_key=True)
    credit_ms: Mapped[int] = mapped_column(BigInteger)
    stamp_ms: Mapped[int] = mapped_column(BigInteger)
    suppressed: Mapped[int] = mapped_column(BigInteger, default=0)
