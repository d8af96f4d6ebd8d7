"""The ``capsule_manager`` key exchange against a real Capsule Manager (SIM attestation), through
the generic KeyExchange conformance kit, plus its settings and refusals."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from trustflow_core.errors import AccessDenied, InvalidInput, ObjectNotFound
from trustflow_core.harness.capsule_manager import BackgroundCapsuleManager
from trustflow_core.keyexchange import Resource, ResourceRequest
from trustflow_core.manager import get_plugin_manager
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.registry import ATTESTER, backend_class
from trustflow_core.roles.capsule_manager.settings import CMSettings
from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient
from trustflow_core.roles.capsule_manager_client.keyexchange import (
    CapsuleManagerKeyExchange,
    ephemeral_credentials,
)
from trustflow_core.testing.keyexchange import KeyExchangeConformance

SCOPE = "default"


@pytest.fixture(scope="module")
def setup(
    sim_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A CM with alice's two resources granted to bob for op 'psi', and app credentials."""
    settings = CMSettings(port=0, data_dir=tmp_path_factory.mktemp("cm"))
    owner, bob = ephemeral_credentials("alice"), ephemeral_credentials("bob")
    uuids = [f"kx-{os.urandom(4).hex()}" for _ in range(2)]
    denied = f"kx-denied-{os.urandom(4).hex()}"
    with BackgroundCapsuleManager(settings) as cm:

        async def register() -> None:
            async with CapsuleManagerClient(cm.target) as client:
                await client.create_data_keys(
                    owner, [(u, base64.b64encode(os.urandom(32)).decode()) for u in uuids]
                )
                rule = cm_pb2.Rule(
                    rule_id="r",
                    grantee_party_ids=[bob.party_id],
                    op_constraints=[cm_pb2.Rule.OpConstraint(op_name="psi")],
                    columns=["*"],
                    global_constraints=['r.env.tee.platform == "sim"'],
                )
                for u in uuids:
                    await client.create_data_policy(owner, SCOPE, u, [rule])
                await client.create_data_keys(
                    owner, [(denied, base64.b64encode(os.urandom(16)).decode())]
                )
                other = cm_pb2.Rule(rule_id="o", grantee_party_ids=[owner.party_id])
                other.op_constraints.add(op_name="*")
                await client.create_data_policy(owner, SCOPE, denied, [other])

        asyncio.run(register())
        yield {
            "target": cm.target,
            "uuids": uuids,
            "denied": denied,
            "bob": bob.party_id,
            "app": ephemeral_credentials(),
        }


def make_kx(setup: dict[str, Any], **kw: Any) -> CapsuleManagerKeyExchange:
    pm = get_plugin_manager()
    attester = backend_class(pm, ATTESTER, "sim").from_settings()
    kw.setdefault("attester", attester)
    return CapsuleManagerKeyExchange(setup["target"], credentials=setup["app"], pm=pm, **kw)


class TestCapsuleManagerKeyExchangeConformance(KeyExchangeConformance):
    @pytest_asyncio.fixture
    async def key_exchange(self, setup: dict[str, Any]) -> AsyncIterator[CapsuleManagerKeyExchange]:
        async with make_kx(setup) as kx:
            yield kx

    @pytest.fixture
    def granted_request(self, setup: dict[str, Any]) -> ResourceRequest:
        return ResourceRequest(
            setup["bob"], SCOPE, "psi", tuple(Resource(u, ("id",)) for u in setup["uuids"])
        )

    @pytest.fixture
    def denied_or_unknown_request(self, setup: dict[str, Any]) -> ResourceRequest:
        return ResourceRequest(setup["bob"], SCOPE, "psi", (Resource(setup["denied"]),))


@pytest.mark.asyncio
async def test_refusals_map_to_contract_errors(setup: dict[str, Any]) -> None:
    async with make_kx(setup) as kx:
        with pytest.raises(ObjectNotFound):
            await kx.get_data_keys(ResourceRequest(setup["bob"], SCOPE, "psi", (Resource("nope"),)))
        with pytest.raises(AccessDenied):
            await kx.get_data_keys(
                ResourceRequest("X" * 52, SCOPE, "psi", (Resource(setup["uuids"][0]),))
            )
        with pytest.raises(InvalidInput):
            await kx.get_data_keys(ResourceRequest(setup["bob"], SCOPE, "psi", (Resource(""),)))
    async with make_kx(setup, attester=None) as no_report:
        with pytest.raises(AccessDenied, match="attestation"):
            await no_report.get_data_keys(
                ResourceRequest(setup["bob"], SCOPE, "psi", (Resource(setup["uuids"][0]),))
            )


def test_from_settings(setup: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="endpoint"):
        CapsuleManagerKeyExchange.from_settings({})
    with pytest.raises(InvalidInput, match="unknown"):
        CapsuleManagerKeyExchange.from_settings({"endpoint": "x:1", "bogus": 1})
    with pytest.raises(InvalidInput, match="both"):
        CapsuleManagerKeyExchange.from_settings({"endpoint": "x:1", "cert_file": "c"})
    kx = CapsuleManagerKeyExchange.from_settings({"endpoint": setup["target"], "attester": "sim"})
    assert kx.attester is not None and "endpoint" in repr(kx)
