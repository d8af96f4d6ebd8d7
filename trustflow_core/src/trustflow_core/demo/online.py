"""The online scenario end to end on 127.0.0.1 (docs/online.md), in one process.

:func:`online_stack` starts the TEE app (default :mod:`.teeapp`), the RA Proxy (sim attester
with a platform key in the work directory) and the gateway with the JWE filter on free
loopback ports, and stops them on exit; the demo, the tests and the benchmark build on it.
:func:`run_online` adds the client and one sealed request.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ..attestation import Policy
from ..fileio import atomic_write_bytes
from ..manager import TrustflowPluginManager, get_plugin_manager
from ..roles._server import start_site
from ..roles.client.online import OnlineClient, Reply
from ..roles.gateway.config import Address, Cluster, GatewayConfig, JweFilterConfig, Listener, Route
from ..roles.gateway.server import Gateway
from ..roles.ra_proxy.app import create_app as create_ra_proxy
from ..roles.ra_proxy.settings import RaProxySettings
from . import teeapp

LOOPBACK = "127.0.0.1"
#: Builds the gateway config from (work dir, RA proxy port, app port).
ConfigFactory = Callable[[Path, int, int], GatewayConfig]


def write_app_identity(directory: Path, name: str = "app") -> tuple[Path, Path]:
    """A fresh RSA-3072 key (``<name>.key``, mode 0600) and self-signed certificate
    (``<name>.crt``) in ``directory``; returns (cert path, key path)."""
    from ..cli.util import generate_self_signed

    key_pem, cert_pem, _ = generate_self_signed(days=1)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    atomic_write_bytes(key_path, key_pem, mode=0o600)
    atomic_write_bytes(cert_path, cert_pem)
    return cert_path, key_path


def write_ecdh_identity(directory: Path, name: str = "app-ecdh") -> tuple[Path, Path]:
    """A fresh P-256 key (``<name>.key``, mode 0600) and its ECDH offer certificate
    (``<name>.crt``, :func:`trustflow_core.ecdh_offer.offer_certificate`) in ``directory``;
    returns (cert path, key path)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from ..ecdh_offer import offer_certificate

    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = offer_certificate(key).public_bytes(serialization.Encoding.PEM)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    atomic_write_bytes(key_path, key_pem, mode=0o600)
    atomic_write_bytes(cert_path, cert_pem)
    return cert_path, key_path


def default_gateway_config(
    cert_path: Path, key_path: Path, ecdh: tuple[Path, Path] | None = None
) -> ConfigFactory:
    """One listener like the upstream online sample: ``/RaProxy`` and ``/teeapp`` routes and
    the JWE filter (with the ECDH key pair ``ecdh`` = (cert, key) when given)."""

    def build(work: Path, ra_port: int, app_port: int) -> GatewayConfig:
        return GatewayConfig(
            listeners=(
                Listener(
                    "public_entry",
                    Address(LOOPBACK, 0),
                    routes=(Route("/RaProxy", "ra_proxy"), Route("/teeapp", "teeapp")),
                    jwe=JweFilterConfig(
                        cert_path,
                        key_path,
                        ecdh_cert_path=ecdh[0] if ecdh else None,
                        ecdh_private_key_path=ecdh[1] if ecdh else None,
                    ),
                ),
            ),
            clusters={
                "ra_proxy": Cluster("ra_proxy", (Address(LOOPBACK, ra_port),)),
                "teeapp": Cluster("teeapp", (Address(LOOPBACK, app_port),)),
            },
        )

    return build


@dataclass(frozen=True)
class OnlineStack:
    """The running servers: URLs and the files a client needs."""

    work: Path
    cert_path: Path
    platform_key: Path
    app_url: str
    ra_url: str
    gateway: Gateway

    @property
    def gateway_url(self) -> str:
        return f"http://{next(iter(self.gateway.addresses.values()))}"

    @property
    def verifier_settings(self) -> dict[str, dict[str, Any]]:
        """Verifier settings that trust this stack's sim platform key."""
        return {"sim": {"trusted_platform_keys": [str(self.platform_key)]}}


@contextlib.asynccontextmanager
async def online_stack(
    work: Path,
    cert_path: Path,
    key_path: Path,
    *,
    pm: TrustflowPluginManager,
    app: web.Application | None = None,
    gateway_config: ConfigFactory | None = None,
    upstream_sim: bool = False,
    ecdh: tuple[Path, Path] | None = None,
) -> AsyncIterator[OnlineStack]:
    """Start app, RA proxy and gateway on free loopback ports; stop them all on exit. ``ecdh``
    = (offer cert, P-256 key): the RA proxy offers it and the default gateway config opens
    ECDH envelopes with it."""
    platform_key = work / "sim_platform_key.pem"
    runners: list[web.AppRunner] = []
    try:
        runner, app_port = await start_site(app or teeapp.create_app(), LOOPBACK, 0)
        runners.append(runner)
        settings = RaProxySettings(
            cert_path=cert_path,
            plat="sim",
            upstream_sim=upstream_sim,
            attester_settings={"platform_key_file": str(platform_key)},
            port=0,
            ecdh_cert_path=ecdh[0] if ecdh else None,
        )
        runner, ra_port = await start_site(create_ra_proxy(settings, pm), LOOPBACK, 0)
        runners.append(runner)
        build = gateway_config or default_gateway_config(cert_path, key_path, ecdh)
        async with Gateway(build(work, ra_port, app_port), pm) as gateway:
            yield OnlineStack(
                work,
                cert_path,
                platform_key,
                f"http://{LOOPBACK}:{app_port}",
                f"http://{LOOPBACK}:{ra_port}",
                gateway,
            )
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def run_online(
    message: bytes = b"hello",
    *,
    compat: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> Reply:
    """Run the scenario once (temporary keys, removed afterwards) and return the client's
    opened reply."""
    pm = get_plugin_manager()
    with tempfile.TemporaryDirectory(prefix="trustflow-online-") as tmp:
        work = Path(tmp)
        cert_path, key_path = write_app_identity(work)
        async with online_stack(work, cert_path, key_path, pm=pm) as stack:
            say(f"teeapp   on {stack.app_url}/teeapp")
            say(f"ra-proxy on {stack.ra_url}/RaProxy/GetRaCert (plat sim)")
            say(f"gateway  on {stack.gateway_url} (routes /RaProxy, /teeapp; jwe filter)")
            async with OnlineClient(
                stack.gateway_url,
                policy=Policy(allow_simulation=True),
                pm=pm,
                profile="upstream" if compat else "rfc",
                verifier_settings=stack.verifier_settings,
            ) as client:
                attested = await client.attest()
                say(
                    f"client: {attested.verified.attributes.str_tee_platform} report verified "
                    f"and bound to the app cert + nonce; sending "
                    f"{'an upstream-dialect' if compat else 'an RFC 7516'} envelope"
                )
                return await client.request("/teeapp", message)
