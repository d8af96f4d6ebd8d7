"""``examples/interact`` as shipped: the parties' ``cm_init.yaml`` and ``envoy.yml`` (ports
rewritten to free loopback ports) with the real Capsule Manager, Data Capsule Proxies, gateways
and the example ``app.py`` processes; each app prints the upstream line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from test_core_interact_cm_init import settings_for, start, world  # noqa: F401

from trustflow_core.manager import get_plugin_manager
from trustflow_core.roles.data_capsule_proxy.cm_init import load_cm_init
from trustflow_core.roles.gateway.config import load_config
from trustflow_core.roles.gateway.server import Gateway
from trustflow_core.testing.fixtures import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "interact"
# the example's loopback ports: party -> (app, ingress, egress)
PORTS = {"bob": (8000, 30001, 31001), "carol": (8001, 40001, 41001)}
PEER = {"bob": "carol", "carol": "bob"}


async def first_response(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        if line.startswith(b"response: "):
            return line.decode().rstrip("\n")
    raise AssertionError("the app ended without a response line")


@pytest.mark.asyncio
async def test_example_configs_and_app_talk_over_mtls(world, start, tmp_path) -> None:  # noqa: F811
    pm = get_plugin_manager()
    new = {p: tuple(free_port() for _ in range(3)) for p in PORTS}
    for party in PORTS:
        shutil.copytree(EXAMPLE / party, tmp_path / party)
        settings = settings_for(world, tmp_path / party, party)
        config = load_cm_init(tmp_path / party / "cm_init.yaml")  # as shipped: deploy/tls.*
        assert config.tls_cert_path == tmp_path / party / "deploy" / "tls.crt"
        await start(type(settings)(**{**settings.__dict__, "cm_init": config}))
        assert config.tls_key_path.exists()
    procs = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            for party in PORTS:
                mapping = {
                    f"127.0.0.1:{old}": f"127.0.0.1:{port}"
                    for old, port in zip(PORTS[party], new[party], strict=True)
                }
                mapping[f"127.0.0.1:{PORTS[PEER[party]][1]}"] = f"127.0.0.1:{new[PEER[party]][1]}"
                gw = load_config(tmp_path / party / "envoy.yml", address_map=mapping)
                await stack.enter_async_context(Gateway(gw, pm))
            for party in PORTS:
                app_port, _, egress = new[party]
                args = [
                    str(EXAMPLE / "app.py"),
                    "--name", party.capitalize(),
                    "--port", str(app_port),
                    "--peer", f"http://127.0.0.1:{egress}/teeapp",
                    "--interval", "0.3",
                ]  # fmt: skip
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        *args,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                )
            lines = await asyncio.wait_for(asyncio.gather(*map(first_response, procs)), 30)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
    hello = {p: json.dumps({"message": f"Hello from {p.capitalize()}!"}) for p in PORTS}
    assert lines == [
        f"response:  Hi, I'm Carol. I got your message: {hello['bob']}",
        f"response:  Hi, I'm Bob. I got your message: {hello['carol']}",
    ]


@pytest.mark.asyncio
async def test_refreshed_asset_is_reloaded_by_the_running_gateways(world, start, tmp_path):  # noqa: F811
    """The proxies rewrite the files on every refresh (fraction 0: every 0.3 s); the gateways
    pick up each new pair without closing a listener and the apps keep talking."""
    from trustflow_core.demo import interact_app
    from trustflow_core.demo.interact import gateway_config
    from trustflow_core.roles._server import start_site

    pm = get_plugin_manager()
    fetchers, runners, deploy, app_ports = {}, [], {}, {}
    for party in PORTS:
        settings = settings_for(
            world, tmp_path / party, party, tls_refresh_fraction=0.0, tls_retry_interval=0.3
        )
        fetchers[party] = await start(settings)
        deploy[party] = settings.cm_init.tls_cert_path.parent
        runner, app_ports[party] = await start_site(
            interact_app.create_app(party.capitalize()), "127.0.0.1", 0
        )
        runners.append(runner)
    try:
        bob_ingress = free_port()
        carol_cfg = gateway_config(deploy["carol"], 0, app_ports["carol"], bob_ingress)
        async with Gateway(carol_cfg, pm, tls_reload_interval=0.1) as carol:
            carol_ingress = carol.addresses["mtls_ingress"].port
            bob_cfg = gateway_config(deploy["bob"], bob_ingress, app_ports["bob"], carol_ingress)
            async with Gateway(bob_cfg, pm, tls_reload_interval=0.1) as bob:
                egress = f"http://{bob.addresses['mtls_egress']}/teeapp"
                first = await interact_app.say_hello("Bob", egress)
                assert carol.mtls is not None and bob.mtls is not None
                before = [w.generation for gw in (bob, carol) for w in gw.mtls.watchers.values()]
                fetches = {p: f.fetches for p, f in fetchers.items()}
                # both are awaited: a fetch just before the snapshot of ``fetches`` can be what
                # a gateway reloads just after the snapshot of ``before``
                for _ in range(100):
                    now = [w.generation for gw in (bob, carol) for w in gw.mtls.watchers.values()]
                    reloaded = all(n > b for n, b in zip(now, before, strict=True))
                    fetched = all(f.fetches > fetches[p] for p, f in fetchers.items())
                    if reloaded and fetched:
                        break
                    await asyncio.sleep(0.1)
                assert reloaded, (before, now)
                assert fetched, (fetches, {p: f.fetches for p, f in fetchers.items()})
                assert all(f.failures == 0 for f in fetchers.values())
                assert await interact_app.say_hello("Bob", egress) == first
    finally:
        for runner in runners:
            await runner.cleanup()
