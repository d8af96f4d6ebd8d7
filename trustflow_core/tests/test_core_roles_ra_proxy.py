"""RA Proxy role over a real loopback socket: wire shape, report binding, errors, startup."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from trustflow_core.attestation import Attester, Policy, Report
from trustflow_core.errors import BackendNotFound, InvalidInput
from trustflow_core.hookspecs import hookimpl
from trustflow_core.identity import self_signed_cert
from trustflow_core.manager import get_plugin_manager
from trustflow_core.registry import verifier_for_platform
from trustflow_core.roles._admin import create_admin_app
from trustflow_core.roles._server import start_site
from trustflow_core.roles.ra_proxy.app import create_app
from trustflow_core.roles.ra_proxy.settings import RaProxySettings

pytestmark = [pytest.mark.asyncio, pytest.mark.plugins("tee_sim", "channel_jwe")]


@pytest.fixture(scope="module")
def cert_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = self_signed_cert(key, "carol", backdate=datetime.timedelta(days=1))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def cert_file(tmp_path, cert_pem):
    path = tmp_path / "carol.crt"
    path.write_bytes(cert_pem)
    return path


@contextlib.asynccontextmanager
async def running(settings, pm):
    runner, port = await start_site(create_app(settings, pm), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(
            base_url=f"http://127.0.0.1:{port}", timeout=aiohttp.ClientTimeout(total=10)
        ) as session:
            yield session
    finally:
        await runner.cleanup()


async def post(session, path, body: bytes):
    async with session.post(path, data=body, headers={"Content-Type": "application/json"}) as r:
        return r.status, r.headers, await r.read()


async def verify(pm, reply: dict, cert_pem: bytes, nonce: str):
    report = Report.from_dict(reply["attestation_report"])
    want = hashlib.sha256(cert_pem + b"." + nonce.encode()).digest()
    policy = Policy(allow_simulation=True).with_user_data(want)
    async with verifier_for_platform(pm, report.str_tee_platform).from_settings({}) as verifier:
        return await verifier.verify(report, policy)


@pytest.mark.parametrize(
    "path", ["/RaProxy/GetRaCert", "/secretflowapis.v2.sdc.ra_proxy.RaProxy/GetRaCert"]
)
async def test_get_ra_cert_returns_cert_and_report_bound_to_cert_and_nonce(
    pm, cert_file, cert_pem, path
):
    async with running(RaProxySettings(cert_file, port=0), pm) as session:
        status, headers, body = await post(session, path, b'{"nonce": "3f9c0b6e"}')
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    reply = json.loads(body)
    assert reply["status"] == {"message": "success"}  # brpc omits code 0
    assert reply["cert"].encode() == cert_pem
    verified = await verify(pm, reply, cert_pem, "3f9c0b6e")
    assert verified.simulated


async def test_every_reply_is_fresh_and_bound_to_its_own_nonce(pm, cert_file, cert_pem):
    async with running(RaProxySettings(cert_file, port=0), pm) as session:
        replies = {}
        for nonce, refresh in (("n1", False), ("n2", False), ("n3", True)):
            body = json.dumps({"nonce": nonce, "refresh_ra_report": refresh}).encode()
            status, _, data = await post(session, "/RaProxy/GetRaCert", body)
            assert status == 200
            replies[nonce] = json.loads(data)
    for nonce, reply in replies.items():
        await verify(pm, reply, cert_pem, nonce)
    reports = {json.dumps(r["attestation_report"]) for r in replies.values()}
    assert len(reports) == 3


async def test_unknown_keys_and_null_are_ignored_like_brpc(pm, cert_file, cert_pem):
    async with running(RaProxySettings(cert_file, port=0), pm) as session:
        body = b'{"nonce": "abc", "header": null, "future_field": 1}'
        status, _, data = await post(session, "/RaProxy/GetRaCert", body)
    assert status == 200
    await verify(pm, json.loads(data), cert_pem, "abc")


async def test_upstream_sim_sends_no_report(pm, cert_file, cert_pem):
    settings = RaProxySettings(cert_file, plat="sim", upstream_sim=True, port=0)
    async with running(settings, pm) as session:
        status, _, data = await post(session, "/RaProxy/GetRaCert", b'{"nonce": "x"}')
    assert status == 200
    assert json.loads(data) == {"status": {"message": "success"}, "cert": cert_pem.decode()}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"nonce": ', "not valid JSON"),
        (b"nonce=abc", "not valid JSON"),
        (b'["abc"]', "top level must be an object"),
        (b'{"nonce": 5}', "nonce"),
        (b'{"nonce": "a", "nonce": "b"}', "duplicate key"),
    ],
)
async def test_bad_request_json_is_400_naming_the_problem(pm, cert_file, body, fragment):
    async with running(RaProxySettings(cert_file, port=0), pm) as session:
        status, headers, data = await post(session, "/RaProxy/GetRaCert", body)
    assert status == 400
    assert headers["Content-Type"].startswith("text/plain")
    assert "GetRaCertRequest" in data.decode()
    assert fragment in data.decode()


async def test_oversized_request_is_413(pm, cert_file):
    settings = RaProxySettings(cert_file, port=0, max_body_bytes=1024)
    async with running(settings, pm) as session:
        status, _, _ = await post(
            session, "/RaProxy/GetRaCert", b'{"nonce":"' + b"a" * 4096 + b'"}'
        )
    assert status == 413


async def test_report_generation_failure_is_brpc_style_500(pm, cert_file, tmp_path):
    bad_key = tmp_path / "not_a_key.pem"
    bad_key.write_text("garbage")
    settings = RaProxySettings(
        cert_file, port=0, attester_settings={"platform_key_file": str(bad_key)}
    )
    async with running(settings, pm) as session:
        status, headers, data = await post(session, "/RaProxy/GetRaCert", b'{"nonce": "x"}')
    assert status == 500
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["x-bd-error-code"] == "2001"
    assert "not_a_key.pem" in data.decode()
    assert "Traceback" not in data.decode()


async def test_health_on_the_public_listener_plugins_only_on_the_admin_one(pm, cert_file):
    async with running(RaProxySettings(cert_file, port=0), pm) as session:
        async with session.get("/health") as r:
            assert (r.status, await r.text()) == (200, "OK")
        async with session.get("/-/plugins") as r:
            assert r.status == 404
    runner, port = await start_site(create_admin_app("ra-proxy", pm), "127.0.0.1", 0)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/-/plugins") as r,
        ):
            listed = {p["name"]: p for p in await r.json()}
    finally:
        await runner.cleanup()
    assert {(b["kind"], b["name"]) for b in listed["tee_sim"]["backends"]} == {
        ("attester", "sim"),
        ("verifier", "sim"),
    }


async def test_startup_fails_for_unknown_platform_or_bad_cert(pm, cert_file, tmp_path):
    with pytest.raises(BackendNotFound, match="no attester backend 'nope'"):
        async with running(RaProxySettings(cert_file, plat="nope", port=0), pm):
            pass
    not_pem = tmp_path / "x.crt"
    not_pem.write_text("hello")
    with pytest.raises(InvalidInput, match=r"not a PEM X\.509 certificate"):
        async with running(RaProxySettings(not_pem, port=0), pm):
            pass
    with pytest.raises(InvalidInput, match="cannot read --cert-path"):
        async with running(RaProxySettings(tmp_path / "missing.crt", port=0), pm):
            pass


async def test_upstream_sim_without_plat_needs_no_attester_installed(cert_file, cert_pem):
    bare = get_plugin_manager(load_entrypoints=False)  # no TEE plugin at all
    settings = RaProxySettings(cert_file, upstream_sim=True, port=0)
    async with running(settings, bare) as session:
        status, _, data = await post(session, "/RaProxy/GetRaCert", b'{"nonce": "x"}')
    assert status == 200
    assert json.loads(data) == {"status": {"message": "success"}, "cert": cert_pem.decode()}


async def test_no_plat_and_no_development_default_fails_startup(cert_file):
    bare = get_plugin_manager(load_entrypoints=False)
    with pytest.raises(BackendNotFound, match="no development default attester"):
        async with running(RaProxySettings(cert_file, port=0), bare):
            pass


async def test_upstream_sim_requires_a_simulated_attester(pm, cert_file):
    settings = RaProxySettings(cert_file, plat="slow", upstream_sim=True, port=0)
    pm.register(_SlowPlugin(), name="slow")
    with pytest.raises(InvalidInput, match="--upstream-sim needs a simulated attester"):
        async with running(settings, pm):
            pass


class _SlowAttester(Attester):
    """A platform whose report generation hangs (a stuck TEE driver)."""

    name = "slow"
    platform = "SLOW"

    async def generate(self, user_data: bytes, *, report_type: str = "Passport") -> Report:
        await asyncio.sleep(30)
        raise AssertionError("not reached")


class _SlowPlugin:
    @hookimpl
    def trustflow_register_attesters(self, register):
        register(_SlowAttester)


async def test_a_hanging_attester_times_out_with_500(pm, cert_file):
    pm.register(_SlowPlugin(), name="slow_test_plugin")
    settings = RaProxySettings(cert_file, plat="slow", port=0, report_timeout=0.2)
    async with running(settings, pm) as session:
        status, headers, data = await post(session, "/RaProxy/GetRaCert", b'{"nonce": "x"}')
    assert status == 500
    assert headers["x-bd-error-code"] == "2001"
    assert "report generation took longer than 0.2 s" in data.decode()
