"""Metrics and probes of the roles, scraped from a real admin listener (``/metrics``,
``/-/healthz``, ``/-/readyz``) while the online and the offline scenarios run on 127.0.0.1.

The roles of one process share one registry, so each test reads the counters before and
after its scenario and asserts how they moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from trustflow_core.attestation import Policy
from trustflow_core.demo.offline import run_offline
from trustflow_core.demo.online import online_stack, write_app_identity
from trustflow_core.roles._admin import create_admin_app, tcp_reachable
from trustflow_core.roles._server import start_site
from trustflow_core.roles.client.online import OnlineClient
from trustflow_core.roles.data_capsule_proxy.app import readiness_checks
from trustflow_core.roles.data_capsule_proxy.settings import DataCapsuleProxySettings
from trustflow_core.roles.gateway.config import Address, Cluster, GatewayConfig, Listener, Route
from trustflow_core.roles.gateway.server import Gateway

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.plugins("channel_jwe", "tee_sim", "storage_local", "storage_oss"),
    pytest.mark.usefixtures("plugin_env"),
]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-")


@contextlib.asynccontextmanager
async def admin(role: str, pm, checks=()) -> AsyncIterator[str]:
    """A running admin listener; yields its base URL."""
    runner, port = await start_site(create_admin_app(role, pm, checks), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def get(url: str) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(url) as r,
    ):
        return r.status, r.headers.get("Content-Type", ""), await r.text()


async def scrape(base: str) -> Samples:
    status, content_type, text = await get(base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_online_scenario_moves_the_gateway_and_ra_proxy_counters(pm, tmp_path):
    cert, key = write_app_identity(tmp_path)
    async with (
        online_stack(tmp_path, cert, key, pm=pm) as stack,
        admin("gateway", pm) as base,
    ):
        before = await scrape(base)
        async with OnlineClient(
            stack.gateway_url,
            policy=Policy(allow_simulation=True),
            pm=pm,
            verifier_settings=stack.verifier_settings,
        ) as client:
            reply = await client.request("/teeapp", b"hello metrics")
        assert reply.plaintext == b"I got your message: hello metrics\n"
        async with aiohttp.ClientSession() as http:  # an envelope that does not open
            envelope = dict(reply.envelope, ciphertext="AAAA")
            async with http.post(stack.gateway_url + "/teeapp", data=json.dumps(envelope)) as r:
                assert r.status == 400
            stray = "/nowhere/1b4e28ba-2fa1-11d2-883f-0016d3cca427"  # a path is never a label
            async with http.get(stack.gateway_url + stray) as r:
                assert r.status == 404
        after = await scrape(base)
        assert not any(UUID.search(v) for (_, labels) in after for _, v in labels)
        assert moved(before, after, "trustflow_requests_total", route="public_entry:unrouted") == 1

    route = "public_entry:/teeapp"
    assert moved(before, after, "trustflow_requests_total", role="gateway", route=route) == 2
    assert (
        moved(before, after, "trustflow_requests_total", role="gateway", route=route, status="200")
        == 1
    )
    assert (
        moved(
            before,
            after,
            "trustflow_request_duration_seconds_count",
            role="gateway",
            route="public_entry:/RaProxy",
        )
        >= 1
    )
    assert (
        moved(
            before,
            after,
            "trustflow_requests_total",
            role="ra-proxy",
            route="/RaProxy/GetRaCert",
            status="200",
        )
        >= 1
    )
    up = moved(before, after, "trustflow_proxy_bytes_total", direction="upstream")
    down = moved(before, after, "trustflow_proxy_bytes_total", direction="downstream")
    assert up >= len(b"hello metrics") and down > len(reply.plaintext)
    assert moved(before, after, "trustflow_jwe_failures_total", role="gateway") == 1
    assert moved(before, after, "trustflow_jwe_failures_total", cause="open_failed") == 1


async def test_offline_scenario_moves_the_cm_and_proxy_counters(pm, tmp_path):
    async with admin("capsule-manager", pm) as base:
        before = await scrape(base)
        result = await run_offline(work=tmp_path / "work")
        after = await scrape(base)
    assert result.rows > 0

    def cm(name: str, **labels: str) -> float:
        return moved(before, after, name, **labels)

    assert cm("trustflow_requests_total", role="capsule-manager", route="get_data_keys") >= 3
    assert cm("trustflow_requests_total", route="create_result_data_key", status="0") == 1
    assert cm("trustflow_key_releases_total", rpc="get_data_keys") >= 3
    assert (
        cm(
            "trustflow_attestation_verdicts_total",
            role="capsule-manager",
            platform="sim",
            verdict="accepted",
        )
        >= 3
    )
    assert cm("trustflow_db_duration_seconds_count", operation="read", outcome="ok") >= 3
    assert cm("trustflow_db_duration_seconds_count", operation="write", outcome="ok") >= 5
    assert (
        cm(
            "trustflow_requests_total",
            role="data-capsule-proxy",
            route="/DataCapsuleProxy/GetInputData",
            status="200",
        )
        == 2
    )
    assert cm("trustflow_capsule_bytes_total", operation="get_input_data", direction="read") > 0
    assert cm("trustflow_capsule_bytes_total", operation="put_result_data", direction="written") > 0
    assert cm("trustflow_cm_client_requests_total", rpc="GetDataKeys", outcome="0") >= 2
    assert value(after, "trustflow_db_up") == 1.0
    # bounded labels: no uuid, no party id, no request path
    for (_, labels), _ in after.items():
        for _, label in labels:
            assert not UUID.search(label) and "breast_cancer" not in label


async def test_policy_refusal_and_attestation_failure_are_counted(pm, tmp_path):
    """A GetDataKeys for data without a policy is refused (and counted by reason)."""
    from trustflow_core.harness.cm_world import running_cm
    from trustflow_core.keyexchange import Resource, ResourceRequest
    from trustflow_core.registry import ATTESTER, backend_class
    from trustflow_core.roles.capsule_manager.settings import CMSettings
    from trustflow_core.roles.capsule_manager_client.keyexchange import (
        CapsuleManagerKeyExchange,
        ephemeral_credentials,
    )

    platform_key = tmp_path / "platform.pem"
    settings = CMSettings(
        port=0,
        data_dir=tmp_path / "cm",
        attester={"platform_key_file": str(platform_key)},
        verifiers={"sim": {"trusted_platform_keys": [str(platform_key)]}},
    )
    async with running_cm(settings, pm=pm) as world, admin("capsule-manager", pm) as base:
        before = await scrape(base)
        app = ephemeral_credentials("app")
        attester = backend_class(pm, ATTESTER, "sim").from_settings(
            {"platform_key_file": str(platform_key)}
        )
        exchange = CapsuleManagerKeyExchange(
            world.target, attester=attester, credentials=app, pm=pm
        )
        request = ResourceRequest(app.party_id, "default", "psi", (Resource("nothing_here"),))
        async with exchange:
            with pytest.raises(Exception, match="party id is not existed"):
                await exchange.get_data_keys(request)
        untrusted = backend_class(pm, ATTESTER, "sim").from_settings(
            {"platform_key_file": str(tmp_path / "other.pem")}
        )
        outsider = CapsuleManagerKeyExchange(
            world.target, attester=untrusted, credentials=app, pm=pm
        )
        async with outsider:
            with pytest.raises(Exception, match="attestation report verify failed"):
                await outsider.get_data_keys(request)
        after = await scrape(base)
    assert moved(before, after, "trustflow_policy_refusals_total", reason="no_data") == 1
    assert moved(before, after, "trustflow_key_releases_total") == 0
    rejected = {
        dict(labels)["check"]
        for (name, labels), v in after.items()
        if name == "trustflow_attestation_verdicts_total"
        and dict(labels)["verdict"] == "rejected"
        and v > value(before, name, **dict(labels))
    }
    assert len(rejected) == 1 and rejected != {""}


async def test_the_gateways_request_metrics_count_every_request_exactly(pm):
    """Requests, durations (count, sum, buckets) and relayed bytes of the gateway's HTTP
    listener, scraped right after the last reply."""

    async def fast(request: web.Request) -> web.Response:
        return web.Response(body=b"fast!" + await request.read())

    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.Response(body=b"slow")

    app = web.Application()
    app.router.add_post("/app/fast", fast)
    app.router.add_get("/app/slow", slow)
    app_runner, app_port = await start_site(app, "127.0.0.1", 0)
    config = GatewayConfig(
        listeners=(Listener("exact", Address("127.0.0.1", 0), routes=(Route("/app", "app"),)),),
        clusters={"app": Cluster("app", (Address("127.0.0.1", app_port),))},
    )
    try:
        async with (
            Gateway(config, pm) as gateway,
            admin("gateway", pm) as base,
            aiohttp.ClientSession() as http,
        ):
            address = gateway.addresses["exact"]
            url = f"http://{address.host}:{address.port}"
            before = await scrape(base)
            for _ in range(3):
                async with http.post(url + "/app/fast", data=b"abc") as r:
                    assert (r.status, await r.read()) == (200, b"fast!abc")
            async with http.get(url + "/app/slow") as r:
                assert (r.status, await r.read()) == (200, b"slow")
            for _ in range(2):
                async with http.get(url + "/nope") as r:
                    assert (r.status, await r.read()) == (404, b"no route for /nope\n")
            after = await scrape(base)
    finally:
        await app_runner.cleanup()
    ok = {"role": "gateway", "route": "exact:/app", "status": "200"}
    unrouted = {"role": "gateway", "route": "exact:unrouted", "status": "404"}
    assert moved(before, after, "trustflow_requests_total", **ok) == 4
    assert moved(before, after, "trustflow_requests_total", **unrouted) == 2
    seconds = "trustflow_request_duration_seconds"
    assert moved(before, after, seconds + "_count", **ok) == 4
    assert moved(before, after, seconds + "_bucket", le="+Inf", **ok) == 4
    assert moved(before, after, seconds + "_bucket", le="0.25", **ok) <= 3  # not the slow one
    assert moved(before, after, seconds + "_sum", **ok) >= 0.3
    assert moved(before, after, seconds + "_count", **unrouted) == 2
    relayed = "trustflow_proxy_bytes_total"
    assert moved(before, after, relayed, listener="exact", direction="upstream") == 3 * 3
    assert moved(before, after, relayed, listener="exact", direction="downstream") == (
        3 * 8 + 4 + 2 * 19
    )


async def test_probes_and_readiness_of_gateway_and_proxy(pm, tmp_path):
    async with admin("gateway", pm) as base:
        assert (await get(base + "/-/healthz"))[::2] == (200, "OK\n")
        status, _, body = await get(base + "/-/readyz")
        assert (status, body) == (200, "ready\n")
        status, _, body = await get(base + "/-/plugins")
        assert status == 200 and "tee_sim" in {p["name"] for p in json.loads(body)}

    # a gateway whose app is not up is not ready; once the app listens it is
    app_runner, app_port = await start_site(web.Application(), "127.0.0.1", 0)
    await app_runner.cleanup()  # the port is free again: nothing listens there
    config = GatewayConfig(
        listeners=(Listener("public", Address("127.0.0.1", 0), routes=(Route("/", "app"),)),),
        clusters={"app": Cluster("app", (Address("127.0.0.1", app_port),))},
    )
    async with (
        Gateway(config, pm) as gateway,
        admin("gateway", pm, [gateway.upstreams_ready]) as base,
    ):
        status, _, body = await get(base + "/-/readyz")
        assert status == 503 and f"cluster app (127.0.0.1:{app_port})" in body
        up, _ = await start_site(web.Application(), "127.0.0.1", app_port)
        try:
            assert (await get(base + "/-/readyz"))[::2] == (200, "ready\n")
        finally:
            await up.cleanup()

    settings = DataCapsuleProxySettings(
        cert_path=tmp_path / "x.crt",
        private_key_path=tmp_path / "x.key",
        allowed_roots=(str(tmp_path),),
        cm_endpoint=f"127.0.0.1:{app_port}",
    )
    async with admin("data-capsule-proxy", pm, readiness_checks(settings)) as base:
        status, _, body = await get(base + "/-/readyz")
        assert status == 503 and f"capsule manager (127.0.0.1:{app_port})" in body
    static = DataCapsuleProxySettings(
        cert_path=tmp_path / "x.crt",
        private_key_path=tmp_path / "x.key",
        allowed_roots=(str(tmp_path),),
        key_exchange="static",
    )
    assert readiness_checks(static) == []
    assert await tcp_reachable("127.0.0.1", app_port, "x") is not None


async def test_every_metric_is_documented():
    """docs/observability.md lists every metric of roles/_metrics.py with its labels."""
    from prometheus_client import Counter, Gauge, Histogram

    from trustflow_core.roles import _metrics

    docs = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    metrics = [m for m in vars(_metrics).values() if isinstance(m, (Counter, Gauge, Histogram))]
    assert len(metrics) >= 12
    for metric in metrics:
        name = metric._name + ("_total" if isinstance(metric, Counter) else "")
        row = next((line for line in docs.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"{name} is not in docs/observability.md"
        for label in metric._labelnames:
            assert f"`{label}`" in row, f"{name}: label {label} undocumented"
