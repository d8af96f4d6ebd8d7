"""Online scenario (docs/online.md) over real loopback servers: the gateway runs the
upstream deployment file ``online-envoy.yml`` (addresses rewritten to loopback), in front of
the RA proxy (sim attester) and a TEE app that counts what reaches it.

* both JWE profiles through :class:`OnlineClient`;
* a client written only from the upstream wire description (``jwe_client.py`` flow with raw
  ``cryptography``: RSA-OAEP-256, A128GCM, 12-byte IV, empty AAD);
* every negative: wrong nonce, report for another cert, tampered report, tampered
  JWE/tag/IV/reply, wrong key, truncated/oversized body, non-JSON, unknown alg/enc — each a
  specific error, and the app never sees the request.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustflow_core.attestation import Policy
from trustflow_core.demo.online import online_stack, write_app_identity
from trustflow_core.errors import EnvelopeError, VerificationError
from trustflow_core.roles._server import start_site
from trustflow_core.roles.client.online import OnlineClient
from trustflow_core.roles.gateway.config import load_config

pytestmark = [pytest.mark.asyncio, pytest.mark.plugins("tee_sim", "channel_jwe")]

ENVOY_SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "envoy"
ENVOY_SAMPLE = Path(os.environ.get("TRUSTFLOW_ENVOY_SAMPLES", ENVOY_SAMPLE)) / "online-envoy.yml"
ALLOW_SIM = Policy(allow_simulation=True)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TeeApp:
    """``demo_http_server.py`` behaviour, plus a record of every request that reached it."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def create_app(self) -> web.Application:
        async def teeapp(request: web.Request) -> web.Response:
            body = await request.read()
            self.seen.append(body)
            return web.Response(
                body=b"I got your message: " + body + b"\n", content_type="application/json"
            )

        app = web.Application()
        app.router.add_post("/teeapp", teeapp)
        return app


@pytest.fixture(scope="module")
def deploy(tmp_path_factory):
    """carol.crt / carol.key, as the upstream sample names them."""
    directory = tmp_path_factory.mktemp("deploy")
    write_app_identity(directory, "carol")
    return directory


def envoy_config(deploy: Path, **overrides):
    def build(work, ra_port, app_port):
        return load_config(
            ENVOY_SAMPLE,
            address_map={
                "0.0.0.0:50001": "127.0.0.1:0",
                "ra-proxy:50002": f"127.0.0.1:{ra_port}",
                "teeapp:8000": f"127.0.0.1:{app_port}",
            },
            path_map={"/shared/deploy": str(deploy)},
        )

    return build


@pytest_asyncio.fixture
async def stack(pm, deploy, tmp_path):
    app = TeeApp()
    async with online_stack(
        tmp_path,
        deploy / "carol.crt",
        deploy / "carol.key",
        pm=pm,
        app=app.create_app(),
        gateway_config=envoy_config(deploy),
    ) as running:
        yield running, app


def client(stack, pm, **options) -> OnlineClient:
    running, _ = stack
    options.setdefault("policy", ALLOW_SIM)
    return OnlineClient(
        running.gateway_url, pm=pm, verifier_settings=running.verifier_settings, **options
    )


# ---- success ----------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["rfc", "upstream"])
async def test_both_profiles_end_to_end(stack, pm, profile):
    _, app = stack
    async with client(stack, pm, profile=profile) as online:
        reply = await online.request("/teeapp", b"hello")
        again = await online.request("/teeapp", b'{"message": "again"}')
    assert reply.status == 200
    assert reply.plaintext == b"I got your message: hello\n"
    assert again.plaintext == b'I got your message: {"message": "again"}\n'
    assert app.seen == [b"hello", b'{"message": "again"}']
    header = json.loads(b64u_decode(reply.envelope["protected"]))
    if profile == "upstream":
        assert header == {"alg": "RSA-OAEP-256", "enc": "A128GCM"}
        assert reply.envelope["encrypted_key"] == ""
    else:
        assert header == {"alg": "dir", "enc": "A256GCM"}


async def test_client_written_from_the_upstream_wire_description(stack):
    """jwe_client.py: plain GetRaCert, SPKI from the cert, CEK/IV random, RSA-OAEP-SHA256,
    AES-128-GCM with empty AAD, the six members as JSON; reply opened with the CEK."""
    running, app = stack
    nonce = os.urandom(16).hex()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.post(
            running.gateway_url + "/RaProxy/GetRaCert",
            data=json.dumps({"nonce": nonce}),
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 200
            ra = json.loads(await r.read())
        report_json = json.loads(ra["attestation_report"]["json_report"])
        body = json.loads(report_json["json_body"])
        want = hashlib.sha256(ra["cert"].encode() + b"." + nonce.encode()).hexdigest()
        assert body["hex_user_data"] == want
        public_key = x509.load_pem_x509_certificate(ra["cert"].encode()).public_key()
        cek, iv = os.urandom(16), os.urandom(12)
        sealed = AESGCM(cek).encrypt(iv, b"hello", b"")
        oaep = padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
        )
        request = {
            "protected": b64u(json.dumps({"alg": "RSA-OAEP-256", "enc": "A128GCM"}).encode()),
            "encrypted_key": b64u(public_key.encrypt(cek, oaep)),
            "iv": b64u(iv),
            "aad": "",
            "ciphertext": b64u(sealed[:-16]),
            "tag": b64u(sealed[-16:]),
        }
        async with session.post(
            running.gateway_url + "/teeapp",
            data=json.dumps(request),
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 200
            reply = await r.json(content_type=None)
    plaintext = AESGCM(cek).decrypt(
        b64u_decode(reply["iv"]),
        b64u_decode(reply["ciphertext"]) + b64u_decode(reply["tag"]),
        b64u_decode(reply["aad"]),
    )
    assert plaintext == b"I got your message: hello\n"
    assert len(b64u_decode(reply["iv"])) == 12
    assert app.seen == [b"hello"]


# ---- a man in the middle on the RA exchange ----------------------------------------------------


@contextlib.asynccontextmanager
async def tampering_proxy(
    target: str,
    *,
    request: Callable[[dict], dict] = lambda r: r,
    reply: Callable[[dict], dict] = lambda r: r,
    sealed_reply: Callable[[dict], dict] = lambda r: r,
):
    """Relays to ``target``, rewriting the GetRaCert request/reply or the sealed app reply."""

    async def relay(incoming: web.Request) -> web.Response:
        body = await incoming.read()
        is_ra = incoming.path.startswith("/RaProxy")
        if is_ra:
            body = json.dumps(request(json.loads(body))).encode()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                target + incoming.path,
                data=body,
                headers={"Content-Type": incoming.headers.get("Content-Type", "")},
            ) as r,
        ):
            data = await r.read()
            status = r.status
        if status == 200:
            data = json.dumps((reply if is_ra else sealed_reply)(json.loads(data))).encode()
        return web.Response(status=status, body=data, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", relay)
    runner, port = await start_site(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _flip(text: str, index: int = 0) -> str:
    raw = bytearray(b64u_decode(text))
    raw[index] ^= 1
    return b64u(bytes(raw))


def _other_cert(tmp_path) -> str:
    cert_path, _ = write_app_identity(tmp_path, "mallory")
    return cert_path.read_text()


def _tamper_report(reply: dict) -> dict:
    """Change one hex digit of the signed body's user data (still well-formed)."""
    text = reply["attestation_report"]["json_report"]
    marker = '\\"hex_user_data\\":\\"'  # inside the escaped json_body string
    at = text.index(marker) + len(marker)
    digit = "1" if text[at] == "0" else "0"
    reply["attestation_report"]["json_report"] = text[:at] + digit + text[at + 1 :]
    return reply


def _other_platform(reply: dict) -> dict:
    reply["attestation_report"]["str_tee_platform"] = "NOPE"
    return reply


@pytest.mark.parametrize(
    ("tamper", "check", "fragment"),
    [
        ({"request": lambda r: {**r, "nonce": "0" * 64}}, "user_data", "another nonce"),
        ({"reply": "OTHER_CERT"}, "user_data", "another certificate"),
        ({"reply": _tamper_report}, "signature", "not signed by its platform key"),
        ({"reply": _other_platform}, "platform", "no verifier for TEE platform 'NOPE'"),
        (
            {"reply": lambda r: {k: v for k, v in r.items() if k != "attestation_report"}},
            "missing_report",
            "no attestation report",
        ),
    ],
)
async def test_attestation_tampering_is_caught_before_anything_is_sent(
    stack, pm, tmp_path, tamper, check, fragment
):
    running, app = stack
    if tamper.get("reply") == "OTHER_CERT":
        other = _other_cert(tmp_path)
        tamper = {"reply": lambda r: {**r, "cert": other}}
    async with (
        tampering_proxy(running.gateway_url, **tamper) as url,
        OnlineClient(
            url, policy=ALLOW_SIM, pm=pm, verifier_settings=running.verifier_settings
        ) as online,
    ):
        with pytest.raises(VerificationError) as info:
            await online.request("/teeapp", b"secret")
    assert info.value.check == check
    assert fragment in str(info.value)
    assert "Traceback" not in str(info.value)
    assert app.seen == []


@pytest.mark.parametrize("member", ["ciphertext", "tag", "iv"])
async def test_tampered_reply_is_refused_by_the_client(stack, pm, member):
    running, _ = stack

    def tamper(reply: dict) -> dict:
        return {**reply, member: _flip(reply[member])}

    async with (
        tampering_proxy(running.gateway_url, sealed_reply=tamper) as url,
        OnlineClient(
            url,
            policy=ALLOW_SIM,
            pm=pm,
            profile="upstream",
            verifier_settings=running.verifier_settings,
        ) as online,
    ):
        with pytest.raises(EnvelopeError, match="does not authenticate"):
            await online.request("/teeapp", b"hello")


# ---- bad envelopes never reach the app --------------------------------------------------------


async def _seal_upstream(stack, pm, plaintext: bytes, public_key=None) -> dict:
    async with client(stack, pm, profile="upstream") as online:
        app = await online.attest()
        sealed = online.channel.seal(plaintext, public_key or app.public_key)
    return sealed.jwe.to_dict()


async def _post(stack, body: bytes, content_type="application/json", path="/teeapp"):
    running, _ = stack
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.post(
            running.gateway_url + path,
            data=io.BytesIO(body),
            headers={"Content-Type": content_type},
        ) as r,
    ):
        return r.status, r.headers.get("Content-Type", ""), (await r.read()).decode()


def _header(**header) -> str:
    return b64u(json.dumps(header).encode())


@pytest.mark.parametrize(
    ("mutate", "status", "fragment"),
    [
        (lambda j: {**j, "ciphertext": _flip(j["ciphertext"])}, 400, "does not authenticate"),
        (lambda j: {**j, "tag": _flip(j["tag"])}, 400, "does not authenticate"),
        (lambda j: {**j, "iv": _flip(j["iv"])}, 400, "does not authenticate"),
        (lambda j: {**j, "aad": b64u(b"x")}, 400, "does not authenticate"),
        (lambda j: {**j, "tag": j["tag"][:12]}, 400, "tag must be 16 bytes"),
        (lambda j: {**j, "iv": j["iv"] + "="}, 400, "member 'iv' is not base64url"),
        (
            lambda j: {**j, "encrypted_key": _flip(j["encrypted_key"], 5)},
            400,
            "cannot decrypt JWE encrypted_key",
        ),
        (
            lambda j: {**j, "protected": _header(alg="ECDH-ES", enc="A128GCM")},
            400,
            "JWE alg 'ECDH-ES' is not supported",
        ),
        (
            lambda j: {**j, "protected": _header(alg="RSA-OAEP-256", enc="A128CBC-HS256")},
            400,
            "JWE enc 'A128CBC-HS256' is not supported",
        ),
        (
            lambda j: {**j, "protected": _header(alg="RSA1_5", enc="A128GCM")},
            400,
            "'RSA1_5' (RSAES-PKCS1-v1_5) is refused",
        ),
        (lambda j: {}, 400, "JWE envelope rejected"),
    ],
)
async def test_bad_envelopes_get_400_and_never_reach_the_app(stack, pm, mutate, status, fragment):
    _, app = stack
    jwe = mutate(await _seal_upstream(stack, pm, b"secret"))
    got_status, content_type, text = await _post(stack, json.dumps(jwe).encode())
    assert (got_status, fragment in text) == (status, True), text
    assert content_type.startswith("text/plain")
    assert "Traceback" not in text
    assert app.seen == []


async def test_wrong_key_truncated_and_oversized_bodies(stack, pm):
    _, app = stack
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwe = await _seal_upstream(stack, pm, b"secret", other)
    status, _, text = await _post(stack, json.dumps(jwe).encode())
    assert status == 400 and "cannot decrypt JWE encrypted_key" in text
    body = json.dumps(await _seal_upstream(stack, pm, b"secret")).encode()
    status, _, text = await _post(stack, body[: len(body) // 2])
    assert status == 400 and "malformed or truncated JWE envelope" in text
    running, _ = stack
    limit = running.gateway.config.max_body_bytes
    huge = b'{"protected": "' + b"A" * limit + b'"}'
    status, _, text = await _post(stack, huge)
    assert (status, text) == (413, f"request body larger than {limit} bytes\n")
    assert app.seen == []


async def test_non_json_to_the_ra_proxy_is_a_specific_400(stack):
    _, app = stack
    status, content_type, text = await _post(stack, b"nonce=1", path="/RaProxy/GetRaCert")
    assert status == 400 and "GetRaCertRequest: not valid JSON" in text
    assert content_type.startswith("text/plain")
    assert app.seen == []


async def test_plain_requests_still_pass_like_upstream(stack):
    """Not an envelope → forwarded unchanged (the upstream filter's rule; use a native
    ``require_jwe`` route to refuse them)."""
    _, app = stack
    status, _, text = await _post(stack, b"plain text")
    assert (status, text) == (200, "I got your message: plain text\n")
    assert app.seen == [b"plain text"]
