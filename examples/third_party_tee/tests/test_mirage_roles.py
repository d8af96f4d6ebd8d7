"""Mirage, pip-installed next to the core, works in every role with no change to the core.

Only the Mirage, JWE-channel and local-storage plugins are loaded (no tee_sim), through the
``trustflow`` entry points as a user's installation would:

* online: the RA Proxy (``plat="mirage"``) reports, the online client verifies the report behind
  the gateway under a policy pinning Mirage measurements, and talks to the app;
* offline: the Capsule Manager (its own report by Mirage) verifies app reports and hands keys
  out under data owners' rules over ``r.env.tee.mirage.*``; the Data Capsule Proxy fetches keys
  and registers a result key with Mirage reports; the CM client pins the CM by
  ``tee_plat: mirage`` and ``tee_constraints``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from trustflow_core.attestation import Attributes, Policy
from trustflow_core.capsule import decrypt_file, encrypt_file
from trustflow_core.demo import teeapp
from trustflow_core.demo.online import default_gateway_config, write_app_identity
from trustflow_core.errors import AccessDenied, BackendUnavailable, VerificationError
from trustflow_core.keyexchange import Resource, ResourceRequest
from trustflow_core.manager import TrustflowPluginManager, get_plugin_manager
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.registry import (
    ATTESTER,
    KEY_EXCHANGE,
    VERIFIER,
    backend_class,
    development_default,
)
from trustflow_core.roles._server import start_site
from trustflow_core.roles.capsule_manager.server import CapsuleManager
from trustflow_core.roles.capsule_manager.settings import CMSettings
from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient, Credentials
from trustflow_core.roles.capsule_manager_client.keyexchange import ephemeral_credentials
from trustflow_core.roles.client.online import OnlineClient
from trustflow_core.roles.data_capsule_proxy.app import create_app as create_proxy
from trustflow_core.roles.data_capsule_proxy.settings import DataCapsuleProxySettings
from trustflow_core.roles.gateway.server import Gateway
from trustflow_core.roles.ra_proxy.app import create_app as create_ra_proxy
from trustflow_core.roles.ra_proxy.settings import RaProxySettings

from trustflow_tee_mirage.backends import MirageAttester, MirageVerifier
from trustflow_tee_mirage.report import DEFAULT_MEASUREMENTS, PLATFORM

pytestmark = pytest.mark.asyncio
IMAGE = DEFAULT_MEASUREMENTS["image"]
OTHER_IMAGE = "ab" * 32
SCOPE = "default"


@pytest.fixture
def pm() -> TrustflowPluginManager:
    return get_plugin_manager()


@pytest.fixture
def platform_key(mirage_dir: Path) -> Path:
    """The default key file: the CM client verifies the CM's report with default settings."""
    return mirage_dir / "platform_key.pem"


async def test_the_entry_point_registers_mirage_as_a_simulated_named_only_backend(pm) -> None:
    assert backend_class(pm, ATTESTER, "mirage") is MirageAttester
    assert backend_class(pm, VERIFIER, "mirage") is MirageVerifier
    assert MirageVerifier.simulated and MirageAttester.simulated
    with pytest.raises(BackendUnavailable, match="simulated backends must be named"):
        backend_class(pm, ATTESTER)
    assert development_default(pm, ATTESTER) is None


# ---- online: RA proxy + gateway + online client ---------------------------------------------


@pytest_asyncio.fixture
async def online(tmp_path: Path, pm, platform_key: Path) -> AsyncIterator[str]:
    cert_path, key_path = write_app_identity(tmp_path)
    runners = []
    try:
        runner, app_port = await start_site(teeapp.create_app(), "127.0.0.1", 0)
        runners.append(runner)
        settings = RaProxySettings(
            cert_path=cert_path,
            plat="mirage",
            attester_settings={"platform_key_file": str(platform_key)},
            port=0,
        )
        runner, ra_port = await start_site(create_ra_proxy(settings, pm), "127.0.0.1", 0)
        runners.append(runner)
        config = default_gateway_config(cert_path, key_path)(tmp_path, ra_port, app_port)
        async with Gateway(config, pm) as gateway:
            yield f"http://{next(iter(gateway.addresses.values()))}"
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def online_client(url: str, pm, platform_key: Path, policy: Policy) -> OnlineClient:
    trust = {"mirage": {"trusted_platform_keys": [str(platform_key)]}}
    return OnlineClient(url, policy=policy, pm=pm, verifier_settings=trust)


async def test_online_flow_attests_the_app_by_its_mirage_report(online, pm, platform_key):
    policy = Policy((MirageVerifier.acceptance_entry(hex_ta_measurement=IMAGE),), True)
    async with online_client(online, pm, platform_key, policy) as client:
        reply = await client.request("/teeapp", b'{"hello": "mirage"}')
        assert reply.status == 200
        assert client.app is not None
        attributes = client.app.verified.attributes
        assert attributes.str_tee_platform == PLATFORM
        assert attributes.hex_ta_measurement == IMAGE
        assert attributes.bool_debug_disabled == "true"


@pytest.mark.parametrize(
    ("policy", "check"),
    [
        (Policy((Attributes(str_tee_platform=PLATFORM),), allow_simulation=False), "simulation"),
        (
            Policy((MirageVerifier.acceptance_entry(hex_ta_measurement=OTHER_IMAGE),), True),
            "policy",
        ),
    ],
)
async def test_online_client_refuses_what_its_policy_does_not_allow(
    online, pm, platform_key, policy, check
):
    async with online_client(online, pm, platform_key, policy) as client:
        with pytest.raises(VerificationError) as info:
            await client.request("/teeapp", b"{}")
    assert info.value.check == check


async def test_online_client_refuses_an_untrusted_platform_key(online, pm, tmp_path):
    policy = Policy((Attributes(str_tee_platform=PLATFORM),), True)
    other_key = tmp_path / "other.pem"
    await MirageAttester.from_settings({"platform_key_file": str(other_key)}).generate(b"")
    async with online_client(online, pm, other_key, policy) as client:
        with pytest.raises(VerificationError) as info:
            await client.attest()
    assert info.value.check == "platform_key"


# ---- offline: Capsule Manager + Data Capsule Proxy ------------------------------------------


@pytest_asyncio.fixture
async def cm(tmp_path: Path, pm, platform_key: Path) -> AsyncIterator[CapsuleManager]:
    settings = CMSettings(
        port=0,
        data_dir=tmp_path / "cm",
        plat="mirage",
        attester={"platform_key_file": str(platform_key)},
        verifiers={"mirage": {"trusted_platform_keys": [str(platform_key)]}},
    )
    async with CapsuleManager(settings, pm=pm) as manager:
        yield manager


def cm_client(manager: CapsuleManager, pm, **kwargs: Any) -> CapsuleManagerClient:
    return CapsuleManagerClient(f"127.0.0.1:{manager.port}", pm=pm, **kwargs)


def rule(grantee: str, constraint: str) -> cm_pb2.Rule:
    return cm_pb2.Rule(
        rule_id="r1",
        grantee_party_ids=[grantee],
        op_constraints=[cm_pb2.Rule.OpConstraint(op_name="join")],
        columns=["*"],
        global_constraints=['r.env.tee.platform == "mirage"', constraint],
    )


async def test_owner_cli_pins_a_mirage_capsule_manager(cm, pm, platform_key):
    for constraints, ok in (({"image": IMAGE}, True), ({"image": OTHER_IMAGE}, False)):
        async with cm_client(
            cm, pm, tee_plat="mirage", tee_constraints=constraints, verify_sim=True
        ) as client:
            if ok:
                _, report = await client.get_ra_cert()
                assert report is not None and report.str_tee_platform == PLATFORM
            else:
                with pytest.raises(VerificationError) as info:
                    await client.get_ra_cert()
                assert info.value.check == "policy"
                assert "hex_ta_measurement" in info.value.detail


@pytest.fixture
def app_identity(tmp_path: Path) -> tuple[Path, Path]:
    return write_app_identity(tmp_path, "carol")


@pytest_asyncio.fixture
async def proxy(
    tmp_path: Path, pm, cm, platform_key: Path, app_identity
) -> AsyncIterator[tuple[aiohttp.ClientSession, str, Path]]:
    data = tmp_path / "data"
    data.mkdir()
    cert_path, key_path = app_identity
    settings = DataCapsuleProxySettings(
        cert_path=cert_path,
        private_key_path=key_path,
        allowed_roots=(str(data),),
        plat="mirage",
        key_exchange_settings={"attester_settings": {"platform_key_file": str(platform_key)}},
        cm_endpoint=f"127.0.0.1:{cm.port}",
        port=0,
    )
    runner, port = await start_site(create_proxy(settings, pm), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            yield http, f"http://127.0.0.1:{port}", data
    finally:
        await runner.cleanup()


async def test_offline_flow_keys_under_owner_rules_over_mirage_identity(
    proxy, cm, pm, app_identity
):
    http, url, data = proxy
    carol = Credentials.from_files(app_identity[1], [app_identity[0]])
    alice = ephemeral_credentials("alice")
    plaintext = {"pinned": b"id,x\n1,2\n", "other": b"id,y\n1,3\n"}
    keys = {name: os.urandom(32) for name in plaintext}
    constraints = {
        "pinned": f'r.env.tee.mirage.image == "{IMAGE}"',
        "other": f'r.env.tee.mirage.image == "{OTHER_IMAGE}"',
    }
    async with cm_client(cm, pm) as owner:
        for name, text in plaintext.items():
            (data / f"{name}.plain").write_bytes(text)
            encrypt_file(data / f"{name}.plain", data / f"{name}.enc", keys[name])
            os.unlink(data / f"{name}.plain")
            await owner.create_data_keys(alice, [(name, base64.b64encode(keys[name]).decode())])
            await owner.create_data_policy(
                alice, SCOPE, name, [rule(carol.party_id, constraints[name])]
            )

    async def get(name: str) -> tuple[int, str]:
        body = {
            "cm_resource_config": {"scope": SCOPE, "op_name": "join", "resource_uri": name},
            "local_fs_config": {"path": str(data / f"{name}.enc")},
            "dest_config": {"path": str(data)},
        }
        async with http.post(url + "/DataCapsuleProxy/GetInputData", json=body) as r:
            return r.status, await r.text()

    # The owner pinned the Mirage image the app runs: the key is released.
    status, text = await get("pinned")
    assert status == 200, text
    assert (data / "pinned").read_bytes() == plaintext["pinned"]
    # A rule pinning another image refuses the same app.
    status, text = await get("other")
    assert status != 200
    assert "not satisfied with the policy" in text

    # The result key is registered with a Mirage report bound to the request body.
    (data / "result").write_bytes(b"id,x,y\n")
    body = {
        "cm_result_config": {
            "scope": SCOPE,
            "resource_uri": "result",
            "ancestor_uuids": ["pinned"],
        },
        "source_config": {"path": str(data / "result")},
        "local_fs_config": {"path": str(data)},
    }
    async with http.post(url + "/DataCapsuleProxy/PutResultData", json=body) as r:
        assert r.status == 200, await r.text()
    kx_cls = backend_class(pm, KEY_EXCHANGE, "capsule_manager")
    kx = kx_cls.from_settings(
        {
            "endpoint": f"127.0.0.1:{cm.port}",
            "attester": "mirage",
            "attester_settings": {
                "platform_key_file": str(cm.settings.attester["platform_key_file"])
            },
            "cert_file": str(app_identity[0]),
            "private_key_file": str(app_identity[1]),
        }
    )
    async with kx:
        [key] = await kx.get_data_keys(
            ResourceRequest(carol.party_id, SCOPE, "join", (Resource("result"),))
        )
    decrypt_file(data / "result.enc", data / "result.check", key.key)
    assert (data / "result.check").read_bytes() == b"id,x,y\n"


async def test_capsule_manager_refuses_mirage_reports_signed_by_an_untrusted_key(
    cm, pm, tmp_path, app_identity
):
    kx = backend_class(pm, KEY_EXCHANGE, "capsule_manager").from_settings(
        {
            "endpoint": f"127.0.0.1:{cm.port}",
            "attester": "mirage",
            "attester_settings": {"platform_key_file": str(tmp_path / "rogue.pem")},
        }
    )
    async with kx:
        with pytest.raises(AccessDenied) as info:
            await kx.get_data_keys(ResourceRequest("x", SCOPE, "join", (Resource("nothing"),)))
    assert "attestation report verify failed" in str(info.value)
    assert "platform_key" in str(info.value)
