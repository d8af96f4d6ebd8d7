"""A running Capsule Manager and the parties that talk to it, for tests on 127.0.0.1.

:func:`running_cm` starts an in-process CM (real gRPC on an ephemeral port) and a client for it,
and stops both; the ``cm_world`` fixture of the core's tests runs one per module and database
backend. The small builders (:func:`new_data_uuid`, :func:`data_key_b64`, :func:`grant_rule`)
make the requests most CM tests send.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from ..manager import TrustflowPluginManager, get_plugin_manager

if TYPE_CHECKING:
    from ..proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2
    from ..roles.capsule_manager.server import CapsuleManager
    from ..roles.capsule_manager.settings import CMSettings
    from ..roles.capsule_manager_client.client import CapsuleManagerClient, Credentials

#: RSA size of the test parties' keys: 2048 bits keeps key generation fast.
PARTY_KEY_BITS = 2048


@dataclasses.dataclass
class CMWorld:
    """A started CM, a client connected to it, the plugin manager both use, and four parties
    with fresh certificates: owners ``alice``, ``bob``, ``carol`` and an ``app``."""

    cm: CapsuleManager
    client: CapsuleManagerClient
    pm: TrustflowPluginManager
    alice: Credentials
    bob: Credentials
    carol: Credentials
    app: Credentials

    @property
    def target(self) -> str:
        """``host:port`` of the CM."""
        return self.client.target


@contextlib.asynccontextmanager
async def running_cm(
    settings: CMSettings,
    *,
    pm: TrustflowPluginManager | None = None,
    **client_options: Any,
) -> AsyncIterator[CMWorld]:
    """Start a CM with ``settings`` (``port=0`` picks a free port) and a client for it (extra
    keyword arguments go to :class:`CapsuleManagerClient`); stop both on exit."""
    from ..roles.capsule_manager.server import CapsuleManager
    from ..roles.capsule_manager_client.client import CapsuleManagerClient

    pm = pm or get_plugin_manager()
    cm = CapsuleManager(settings, pm=pm)
    try:
        port = await cm.start()
        client = CapsuleManagerClient(f"127.0.0.1:{port}", pm=pm, **client_options)
        parties = [new_party(name) for name in ("alice", "bob", "carol", "app")]
        try:
            yield CMWorld(cm, client, pm, *parties)
        finally:
            await client.aclose()
    finally:
        await cm.stop()


def new_party(name: str) -> Credentials:
    """A party with a fresh self-signed certificate whose common name is ``name``."""
    from ..roles.capsule_manager_client.keyexchange import ephemeral_credentials

    return ephemeral_credentials(name, key_size=PARTY_KEY_BITS)


def new_data_uuid() -> str:
    """A data uuid no test has used."""
    return "d-" + os.urandom(6).hex()


def data_key_b64(size: int = 16) -> str:
    """A fresh data key, base64 as owners register them."""
    return base64.b64encode(os.urandom(size)).decode()


def grant_rule(
    grantee: str,
    op: str = "psi",
    columns: Sequence[str] = ("*",),
    *,
    rule_id: str = "r1",
    constraints: Sequence[str] = (),
    global_constraints: Sequence[str] = (),
) -> cm_pb2.Rule:
    """A policy rule letting ``grantee`` run ``op`` over ``columns``."""
    from ..proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2

    return cm_pb2.Rule(
        rule_id=rule_id,
        grantee_party_ids=[grantee],
        op_constraints=[cm_pb2.Rule.OpConstraint(op_name=op, constraints=list(constraints))],
        columns=list(columns),
        global_constraints=list(global_constraints),
    )
