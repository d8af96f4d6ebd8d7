"""Protobuf <-> the server's policy values at the edge of the role (reports:
:mod:`..capsule_manager_protocol.reports`)."""

from __future__ import annotations

import base64
import binascii

from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2
from ..capsule_manager_protocol.errors import CMError, Kind
from .database import StoredPolicy
from .policy import OpConstraint, Rule


def rule_from_pb(msg: cm_pb2.Rule) -> Rule:
    return Rule(
        rule_id=msg.rule_id,
        grantee_party_ids=tuple(msg.grantee_party_ids),
        op_constraints=tuple(
            OpConstraint(o.op_name, tuple(o.constraints)) for o in msg.op_constraints
        ),
        columns=tuple(msg.columns),
        global_constraints=tuple(msg.global_constraints),
    )


def rule_to_pb(rule: Rule) -> cm_pb2.Rule:
    return cm_pb2.Rule(
        rule_id=rule.rule_id,
        grantee_party_ids=list(rule.grantee_party_ids),
        op_constraints=[
            cm_pb2.Rule.OpConstraint(op_name=o.op_name, constraints=list(o.constraints))
            for o in rule.op_constraints
        ],
        columns=list(rule.columns),
        global_constraints=list(rule.global_constraints),
    )


def policy_to_pb(policy: StoredPolicy) -> cm_pb2.Policy:
    return cm_pb2.Policy(data_uuid=policy.data_uuid, rules=[rule_to_pb(r) for r in policy.rules])


def check_data_key_b64(value: str, uri: str) -> None:
    """A data key must be canonical standard base64 of 16, 24 or 32 bytes."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CMError(Kind.INVALID_ARGUMENT, f"data_key_b64 of {uri} is not base64") from None
    if len(raw) not in (16, 24, 32) or base64.b64encode(raw).decode() != value:
        raise CMError(
            Kind.INVALID_ARGUMENT, f"data_key_b64 of {uri} must be base64 of 16, 24 or 32 bytes"
        )
