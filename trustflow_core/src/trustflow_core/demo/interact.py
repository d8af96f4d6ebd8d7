"""The interact scenario end to end on 127.0.0.1 (docs/tls-asset.md,
docs/compat.md#mtls-one-file-trust), in one process, for ``trustflow demo interact``, tests and
docs.

Steps: start a Capsule Manager (SIM attestation, platform key in the work directory); alice
uploads the key of ``breast_cancer_alice`` and the rule ``alice_rule_id2`` granting bob's and
carol's apps the ``interact`` op; bob's and carol's Data Capsule Proxies start with a
``cm_init.yaml`` (the upstream sample's shape) and fetch their group TLS assets through the
attested ``GetTlsAsset``; each party's gateway has an mTLS ingress listener (TLS server, group
client certificate required, forwarding to the local app) and a plain egress listener whose
upstream connection is mTLS to the peer's ingress; the two apps (:mod:`.interact_app`) say hello
to each other through their own egress. Finally an outsider holding a well-formed asset of
another group (its own CA) tries carol's ingress and must be refused at the handshake.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from ..manager import TrustflowPluginManager, get_plugin_manager
from ..roles._server import start_site
from ..roles.gateway.config import Address, Cluster, GatewayConfig, Listener
from ..roles.gateway.server import Gateway
from . import interact_app

LOOPBACK = "127.0.0.1"
SCOPE = "default"
OP = "interact"
DATA = "breast_cancer_alice"
RULE_ID = "alice_rule_id2"
PARTIES = ("bob", "carol")
DOWNSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@dataclass(frozen=True)
class InteractResult:
    """What each app printed (``response:  ...``), the group CA fingerprint both assets chain
    to, and how the outsider was refused."""

    lines: dict[str, str]
    group_ca: str
    outsider_refusal: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def cm_init_yaml(deploy: Path) -> str:
    """The party's ``cm_init.yaml`` (upstream ``interact-sample`` template, files in
    ``deploy``)."""
    return yaml.safe_dump(
        {
            "scope": SCOPE,
            "op_name": OP,
            "resource": [{"resource_uri": DATA, "columns": None, "attrs": ""}],
            "env": "",
            "global_attrs": "",
            "tls_cert_path": str(deploy / "tls.crt"),
            "tls_key_path": str(deploy / "tls.key"),
        },
        sort_keys=False,
    )


def _tls(deploy: Path, server_side: bool) -> dict[str, Any]:
    """The Envoy TLS context of the interact sample: ``tls.crt`` is chain and trusted CA."""
    crt, key = str(deploy / "tls.crt"), str(deploy / "tls.key")
    common = {
        "tls_certificates": [
            {"certificate_chain": {"filename": crt}, "private_key": {"filename": key}}
        ],
        "validation_context": {"trusted_ca": {"filename": crt}},
    }
    if server_side:
        return {
            "@type": DOWNSTREAM,
            "require_client_certificate": True,
            "common_tls_context": common,
        }
    return {"@type": UPSTREAM, "common_tls_context": common}


def gateway_config(
    deploy: Path, ingress_port: int, app_port: int, peer_ingress: int
) -> GatewayConfig:
    """One party's gateway (docs/compat.md#mtls-one-file-trust): ``mtls_ingress`` (TLS, client
    certificate required) → the local app; ``mtls_egress`` (plain, for the local app) → mTLS to the
    peer's ingress."""
    return GatewayConfig(
        listeners=(
            Listener(
                "mtls_ingress",
                Address(LOOPBACK, ingress_port),
                tcp_cluster="app",
                tls=_tls(deploy, True),
            ),
            Listener("mtls_egress", Address(LOOPBACK, 0), tcp_cluster="peer"),
        ),
        clusters={
            "app": Cluster("app", (Address(LOOPBACK, app_port),)),
            "peer": Cluster("peer", (Address(LOOPBACK, peer_ingress),), tls=_tls(deploy, False)),
        },
    )


async def _register(target: str, owner: Any, grantees: list[str]) -> None:
    from ..proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2
    from ..roles.capsule_manager_client.client import CapsuleManagerClient

    async with CapsuleManagerClient(target) as cms:
        await cms.create_data_keys(owner, [(DATA, base64.b64encode(os.urandom(16)).decode())])
        rule = cm_pb2.Rule(
            rule_id=RULE_ID,
            grantee_party_ids=grantees,
            op_constraints=[cm_pb2.Rule.OpConstraint(op_name=OP)],
            columns=["*"],
        )
        await cms.create_data_policy(owner, SCOPE, DATA, [rule])


async def outsider_attempt(port: int, pm: TrustflowPluginManager) -> str:
    """Connect to an mTLS ingress presenting a well-formed asset of another group (own CA,
    derived from another data key), without checking the server at all -- so only the ingress
    can refuse. Return the refusal (the server's TLS alert), raise RuntimeError if the app
    behind the ingress answered."""
    import datetime

    from ..registry import TRANSPORT_CHANNEL, backend_class
    from ..roles.capsule_manager_client.keyexchange import ephemeral_credentials
    from ..tls_asset import issue_group_asset

    asset = issue_group_asset(
        os.urandom(32),
        scope=SCOPE,
        data_uuid=DATA,
        op_name=OP,
        member_public_key=ephemeral_credentials("outsider").chain[0].public_key(),
        now=datetime.datetime.now(datetime.timezone.utc),
    )
    context = (
        backend_class(pm, TRANSPORT_CHANNEL, "mtls").from_settings({}).client_ssl_context(asset)
    )
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the outsider accepts any server
    request = (
        b"POST /teeapp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    )
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, port, ssl=context), 10
        )
        try:
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    except (ssl.SSLError, ConnectionError) as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
    if answer:
        raise RuntimeError(f"an outsider got an answer through the mTLS ingress: {answer[:80]!r}")
    return "the ingress closed the connection without an answer"


@contextlib.asynccontextmanager
async def _apps() -> AsyncIterator[dict[str, int]]:
    runners: list[web.AppRunner] = []
    try:
        ports = {}
        for party in PARTIES:
            runner, ports[party] = await start_site(
                interact_app.create_app(party.capitalize()), LOOPBACK, 0
            )
            runners.append(runner)
        yield ports
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def run_interact(
    *, work: Path | None = None, say: Callable[[str], None] = lambda _: None
) -> InteractResult:
    """Run the scenario in ``work`` (default: a temporary directory) and return its result."""
    if work is None:
        with tempfile.TemporaryDirectory(prefix="trustflow-interact-") as tmp:
            return await run_interact(work=Path(tmp), say=say)
    from ..harness.data_capsule_proxy import running_proxy
    from ..roles.capsule_manager_client.keyexchange import ephemeral_credentials
    from ..roles.data_capsule_proxy.cm_init import load_cm_init
    from ..roles.data_capsule_proxy.settings import DataCapsuleProxySettings
    from ..tls_asset import load_tls_asset
    from .offline import _capsule_manager, _write_identity

    pm = get_plugin_manager()
    platform_key = work / "sim_platform_key.pem"
    creds = {p: ephemeral_credentials(p) for p in ("alice", *PARTIES)}
    deploy = {p: work / p / "deploy" for p in PARTIES}
    async with _capsule_manager(work, platform_key, pm) as target:
        say(f"capsule manager on {target}")
        await _register(target, creds["alice"], [creds[p].party_id for p in PARTIES])
        say(f"alice: uploaded the key of {DATA} and rule {RULE_ID} ({OP}: bob, carol)")
        settings = {}
        for party in PARTIES:
            home = work / party
            (home / "data").mkdir(parents=True, exist_ok=True)
            cert, key = _write_identity(home, creds[party], party)
            (home / "cm_init.yaml").write_text(cm_init_yaml(deploy[party]))
            settings[party] = DataCapsuleProxySettings(
                cert_path=cert,
                private_key_path=key,
                allowed_roots=(str(home / "data"),),
                plat="sim",
                key_exchange_settings={
                    "attester_settings": {"platform_key_file": str(platform_key)}
                },
                cm_endpoint=target,
                cm_init=load_cm_init(home / "cm_init.yaml"),
            )
        async with contextlib.AsyncExitStack() as stack:
            for party in PARTIES:
                url = await stack.enter_async_context(running_proxy(settings[party], pm))
                info = load_tls_asset(deploy[party] / "tls.crt", deploy[party] / "tls.key")[1]
                say(
                    f"{party}: data capsule proxy on {url} fetched the group TLS asset "
                    f"(group CA {info.anchor_fingerprint[:16]}, leaf until "
                    f"{info.not_after:%Y-%m-%d %H:%M} UTC)"
                )
            anchors = {
                load_tls_asset(deploy[p] / "tls.crt", deploy[p] / "tls.key")[1].anchor_fingerprint
                for p in PARTIES
            }
            if len(anchors) != 1:
                raise RuntimeError("bob and carol got assets of different groups")
            app_ports = await stack.enter_async_context(_apps())
            # bob's ingress port is chosen first so carol's egress can point at it
            bob_ingress = _free_port()
            carol = await stack.enter_async_context(
                Gateway(gateway_config(deploy["carol"], 0, app_ports["carol"], bob_ingress), pm)
            )
            carol_ingress = carol.addresses["mtls_ingress"].port
            bob = await stack.enter_async_context(
                Gateway(
                    gateway_config(deploy["bob"], bob_ingress, app_ports["bob"], carol_ingress),
                    pm,
                )
            )
            gateways = {"bob": bob, "carol": carol}
            for party, gw in gateways.items():
                say(
                    f"{party}: app on {LOOPBACK}:{app_ports[party]}, gateway mtls_ingress "
                    f"{gw.addresses['mtls_ingress']} (mTLS) and mtls_egress "
                    f"{gw.addresses['mtls_egress']} (plain, mTLS upstream)"
                )
            results = await asyncio.gather(
                *(
                    interact_app.say_hello(
                        party.capitalize(),
                        f"http://{gateways[party].addresses['mtls_egress']}/teeapp",
                    )
                    for party in PARTIES
                )
            )
            refusal = await outsider_attempt(carol_ingress, pm)
            say(
                f"outsider with another group's certificate at carol's ingress: refused ({refusal})"
            )
    return InteractResult(dict(zip(PARTIES, results, strict=True)), anchors.pop(), refusal)
