"""ECDH-ES+A128KW envelopes in the online scenario (docs/online.md#ecdh-profile), over real
loopback servers: RA proxy (sim attester) offering the app's P-256 key after its RSA
certificate, the gateway with the JWE filter holding both keys, a TEE app recording what
reaches it, and :class:`OnlineClient`.

* round trip with ECDH; the client picks ECDH when offered and RSA when not (no offer,
  ``ecdh=False``, upstream profile, or no report to bind the offer);
* the offer is bound by the report: a network attacker adding its own offer, or stripping the
  app's, makes the client refuse the report (a client that did not check the binding over the
  whole ``cert`` would seal to the attacker's key);
* the gateway refuses an invalid-curve ``epk``, ``alg``/``enc`` outside the allowlist, an
  ECDH envelope where it holds no EC key, a tampered and a replayed ECDH envelope — the app
  never sees any of them;
* key-agreement reuse: the client keeps one ephemeral key per window and rotates after it;
  with the epk's KEK cached in the gateway, a tampered envelope is still 400, a replayed one
  409, an invalid-curve point still refused; jwcrypto's fresh-key envelopes open beside them.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from trustflow_core.attestation import Policy
from trustflow_core.demo.online import (
    default_gateway_config,
    online_stack,
    write_app_identity,
    write_ecdh_identity,
)
from trustflow_core.ecdh_offer import offer_certificate
from trustflow_core.errors import VerificationError
from trustflow_core.registry import ENVELOPE_CHANNEL, backend_class
from trustflow_core.roles._server import start_site
from trustflow_core.roles.client.online import OnlineClient
from trustflow_core.roles.gateway.config import Address, GatewayConfig, Listener, Route

pytestmark = [pytest.mark.asyncio, pytest.mark.plugins("tee_sim", "channel_jwe")]

ALLOW_SIM = Policy(allow_simulation=True)
ECDH = "ECDH-ES+A128KW"
JOSE = {"Content-Type": "application/jose+json"}
P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TeeApp:
    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def create_app(self) -> web.Application:
        async def teeapp(request: web.Request) -> web.Response:
            body = await request.read()
            self.seen.append(body)
            return web.Response(body=b"got " + body, content_type="text/plain")

        app = web.Application()
        app.router.add_post("/teeapp", teeapp)
        return app


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    rsa = write_app_identity(directory, "app")
    ecdh = write_ecdh_identity(directory, "app-ecdh")
    return rsa, ecdh


async def _stack(pm, keys, tmp_path, *, offer: bool, upstream_sim: bool = False):
    (cert, key), ecdh = keys
    app = TeeApp()
    async with online_stack(
        tmp_path,
        cert,
        key,
        pm=pm,
        app=app.create_app(),
        ecdh=ecdh if offer else None,
        upstream_sim=upstream_sim,
    ) as running:
        yield running, app


@pytest_asyncio.fixture
async def stack(pm, keys, tmp_path):
    async for running in _stack(pm, keys, tmp_path, offer=True):
        yield running


@pytest_asyncio.fixture
async def rsa_only_stack(pm, keys, tmp_path):
    async for running in _stack(pm, keys, tmp_path, offer=False):
        yield running


def client(running, pm, url: str | None = None, **options) -> OnlineClient:
    options.setdefault("policy", ALLOW_SIM)
    return OnlineClient(
        url or running.gateway_url, pm=pm, verifier_settings=running.verifier_settings, **options
    )


# ---- negotiation ------------------------------------------------------------------------------


async def test_ecdh_round_trip_when_offered(stack, pm):
    running, app = stack
    async with client(running, pm) as online:
        attested = await online.attest()
        assert attested.ecdh_key is not None
        reply = await online.request("/teeapp", b"hello")
        again = await online.request("/teeapp", b"again")
    assert reply.request_alg == ECDH and again.request_alg == ECDH
    assert reply.status == 200 and reply.plaintext == b"got hello"
    assert again.plaintext == b"got again"
    assert json.loads(b64u_decode(reply.envelope["protected"])) == {"alg": "dir", "enc": "A256GCM"}
    assert app.seen == [b"hello", b"again"]


@pytest.mark.parametrize(
    ("options", "alg"),
    [({"ecdh": False}, "RSA-OAEP-256"), ({"profile": "upstream"}, "RSA-OAEP-256")],
)
async def test_rsa_when_asked_or_upstream_profile(stack, pm, options, alg):
    """The offer does not change the upstream dialect: the same RSA envelope as before."""
    running, _ = stack
    async with client(running, pm, **options) as online:
        reply = await online.request("/teeapp", b"hello")
    assert reply.request_alg == alg and reply.plaintext == b"got hello"
    if options.get("profile") == "upstream":
        assert json.loads(b64u_decode(reply.envelope["protected"])) == {
            "alg": "RSA-OAEP-256",
            "enc": "A128GCM",
        }


async def test_rsa_when_not_offered(rsa_only_stack, pm):
    running, _ = rsa_only_stack
    async with client(running, pm) as online:
        attested = await online.attest()
        reply = await online.request("/teeapp", b"hello")
    assert attested.ecdh_key is None
    assert reply.request_alg == "RSA-OAEP-256" and reply.plaintext == b"got hello"


async def test_no_report_no_ecdh(pm, keys, tmp_path):
    """An upstream sim RA proxy sends no report: nothing binds the offer, so it is not used."""
    async for running, app in _stack(pm, keys, tmp_path, offer=True, upstream_sim=True):
        async with client(running, pm, upstream_sim=True) as online:
            attested = await online.attest()
            reply = await online.request("/teeapp", b"hello")
        assert attested.ecdh_key is None and reply.request_alg == "RSA-OAEP-256"
        assert app.seen == [b"hello"]


# ---- the offer is bound by the report --------------------------------------------------------


async def mitm(target: str, rewrite_cert):
    """A network attacker in front of the gateway rewriting GetRaCert's ``cert``."""

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                target + request.path, data=body, headers={"Content-Type": request.content_type}
            ) as resp,
        ):
            data = await resp.read()
            if request.path.startswith("/RaProxy") and resp.status == 200:
                reply = json.loads(data)
                reply["cert"] = rewrite_cert(reply["cert"])
                data = json.dumps(reply).encode()
            return web.Response(body=data, status=resp.status, content_type=resp.content_type)

    app = web.Application()
    app.router.add_post("/{tail:.*}", forward)
    return await start_site(app, "127.0.0.1", 0)


def attacker_offer() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return offer_certificate(key).public_bytes(serialization.Encoding.PEM).decode()


async def test_added_offer_refused(rsa_only_stack, pm):
    """The attacker appends an offer for its own P-256 key to an RSA-only app's reply."""
    running, app = rsa_only_stack
    runner, port = await mitm(running.gateway_url, lambda cert: cert + attacker_offer())
    try:
        async with client(running, pm, url=f"http://127.0.0.1:{port}") as online:
            with pytest.raises(VerificationError) as info:
                await online.request("/teeapp", b"secret")
        assert info.value.check == "user_data"
        assert online.app is None and app.seen == []
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("change", ["replace", "strip"])
async def test_replaced_or_stripped_offer_refused(stack, pm, change):
    """Swapping the app's offer for the attacker's, or removing it, breaks the binding: the
    client refuses the report instead of sealing to an unbound key or silently falling back."""
    running, app = stack
    marker = "-----BEGIN CERTIFICATE-----"

    def rewrite(cert: str) -> str:
        first = cert[: cert.index(marker, len(marker))]
        return first + (attacker_offer() if change == "replace" else "")

    runner, port = await mitm(running.gateway_url, rewrite)
    try:
        async with client(running, pm, url=f"http://127.0.0.1:{port}") as online:
            with pytest.raises(VerificationError) as info:
                await online.request("/teeapp", b"secret")
        assert info.value.check == "user_data" and app.seen == []
    finally:
        await runner.cleanup()


# ---- the gateway's refusals -------------------------------------------------------------------


def forged(header: dict) -> bytes:
    """An attacker-made RFC envelope with ``header`` (authenticated with a random CEK)."""
    protected = b64u(json.dumps(header, separators=(",", ":")).encode())
    iv = os.urandom(12)
    sealed = AESGCM(os.urandom(32)).encrypt(iv, b"x", protected.encode())
    members = {
        "protected": protected,
        "encrypted_key": b64u(os.urandom(40)),
        "iv": b64u(iv),
        "ciphertext": b64u(sealed[:-16]),
        "tag": b64u(sealed[-16:]),
    }
    return json.dumps(members).encode()


def epk_of(key: ec.EllipticCurvePrivateKey, y_delta: int = 0) -> dict:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64u(numbers.x.to_bytes(32, "big")),
        "y": b64u(
            ((numbers.y + y_delta) % (2**256 - 2**224 + 2**192 + 2**96 - 1)).to_bytes(32, "big")
        ),
    }


async def post(url: str, body: bytes) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=JOSE) as r:
        return r.status, await r.text()


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"alg": ECDH, "enc": "A256GCM", "epk": "invalid-curve"}, "epk is not a point on P-256"),
        ({"alg": ECDH, "enc": "A256GCM", "epk": "p384"}, "crv 'P-256'"),
        ({"alg": "ECDH-ES", "enc": "A256GCM", "epk": "valid"}, "alg 'ECDH-ES' is not accepted"),
        (
            {"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "epk": "valid"},
            "alg 'ECDH-ES+A256KW' is not accepted",
        ),
        ({"alg": ECDH, "enc": "A128CBC-HS256", "epk": "valid"}, "enc 'A128CBC-HS256'"),
        ({"alg": ECDH, "enc": "A256GCM"}, "needs an 'epk'"),
    ],
)
async def test_gateway_refuses_bad_ecdh_envelopes(stack, header, message):
    running, app = stack
    key = ec.generate_private_key(ec.SECP256R1())
    epk = {
        "valid": epk_of(key),
        "invalid-curve": epk_of(key, y_delta=1),
        "p384": epk_of(key) | {"crv": "P-384"},
    }
    if "epk" in header:
        header = header | {"epk": epk[header["epk"]]}
    status, text = await post(running.gateway_url + "/teeapp", forged(header))
    assert status == 400, text
    assert message in text
    assert app.seen == []


async def test_gateway_refuses_replayed_ecdh_envelope(stack, pm):
    running, app = stack
    async with client(running, pm) as online:
        attested = await online.attest()
    channel = backend_class(pm, ENVELOPE_CHANNEL, "jwe").from_settings({"profile": "rfc"})
    assert attested.ecdh_key is not None
    sealed = channel.seal(b"once", attested.ecdh_key)
    body = json.dumps({k: v for k, v in sealed.jwe.to_dict().items() if v}).encode()
    url = running.gateway_url + "/teeapp"
    assert (await post(url, body))[0] == 200
    status, text = await post(url, body)
    assert status == 409 and "replayed" in text
    assert app.seen == [b"once"]


async def test_gateway_refuses_tampered_ecdh_envelope(stack, pm):
    """A real ECDH envelope with one bit of its tag flipped is refused (400, the app sees
    nothing) and does not use up its ``jti``: the intact envelope still passes, once."""
    running, app = stack
    async with client(running, pm) as online:
        attested = await online.attest()
    channel = backend_class(pm, ENVELOPE_CHANNEL, "jwe").from_settings({"profile": "rfc"})
    assert attested.ecdh_key is not None
    members = {k: v for k, v in channel.seal(b"once", attested.ecdh_key).jwe.to_dict().items() if v}
    tag = bytearray(b64u_decode(members["tag"]))
    tag[0] ^= 0x80
    url = running.gateway_url + "/teeapp"
    status, text = await post(url, json.dumps(members | {"tag": b64u(bytes(tag))}).encode())
    assert status == 400 and "does not authenticate" in text
    assert app.seen == []
    assert (await post(url, json.dumps(members).encode()))[0] == 200
    assert (await post(url, json.dumps(members).encode()))[0] == 409
    assert app.seen == [b"once"]


async def test_gateway_without_ecdh_key_refuses_ecdh(rsa_only_stack, pm, keys):
    """Sealed to a P-256 key the listener does not hold: refused by the RSA allowlist."""
    running, app = rsa_only_stack
    ecdh_cert = Path(keys[1][0])

    public = x509.load_pem_x509_certificate(ecdh_cert.read_bytes()).public_key()
    channel = backend_class(pm, ENVELOPE_CHANNEL, "jwe").from_settings({"profile": "rfc"})
    body = json.dumps(
        {k: v for k, v in channel.seal(b"x", public).jwe.to_dict().items() if v}
    ).encode()
    status, text = await post(running.gateway_url + "/teeapp", body)
    assert status == 400 and "is not accepted here" in text
    assert app.seen == []


# ---- key-agreement reuse (docs/online.md#ecdh-profile) --------------------------------------


async def test_client_reuses_its_ephemeral_key_within_the_window(stack, pm):
    """The online client seals up to ``epk_reuse_envelopes`` requests with one ephemeral key,
    then makes a new one; every request keeps its own jti, and the gateway opens them all."""
    running, app = stack
    async with client(running, pm, epk_reuse_envelopes=2) as online:
        replies = [await online.request("/teeapp", f"m{i}".encode()) for i in range(5)]
    epks = [json.dumps(r.request_header["epk"], sort_keys=True) for r in replies]
    assert epks[0] == epks[1] != epks[2] == epks[3] != epks[4]
    assert len({r.request_header["jti"] for r in replies}) == 5
    assert [r.plaintext for r in replies] == [f"got m{i}".encode() for i in range(5)]
    assert app.seen == [f"m{i}".encode() for i in range(5)]
    async with client(running, pm, epk_reuse_seconds=0) as online:
        fresh = [await online.request("/teeapp", b"x") for _ in range(3)]
    assert len({json.dumps(r.request_header["epk"]) for r in fresh}) == 3
    async with client(running, pm) as online:  # the default window: one key for all
        default = [await online.request("/teeapp", b"x") for _ in range(3)]
    assert len({json.dumps(r.request_header["epk"]) for r in default}) == 1


def flip(members: dict, member: str) -> dict:
    value = bytearray(b64u_decode(members[member]))
    value[len(value) // 2] ^= 0x01
    return members | {member: b64u(bytes(value))}


async def sealed_pair(pm, stack):
    """Two envelopes to the app's P-256 key with the same (reused) epk."""
    running, _ = stack
    async with client(running, pm) as online:
        attested = await online.attest()
    channel = backend_class(pm, ENVELOPE_CHANNEL, "jwe").from_settings({"profile": "rfc"})
    assert attested.ecdh_key is not None
    pair = [
        {k: v for k, v in channel.seal(m, attested.ecdh_key).jwe.to_dict().items() if v}
        for m in (b"first", b"second")
    ]
    header = [json.loads(b64u_decode(m["protected"])) for m in pair]
    assert header[0]["epk"] == header[1]["epk"]
    return pair


async def test_gateway_refuses_tampered_envelope_with_a_cached_epk(stack, pm):
    """Once an epk's KEK is cached, an envelope with that epk but an altered wrapped key,
    ciphertext or tag is still refused (400) and the app sees nothing; the intact one passes,
    once (a replay with a cached epk is 409)."""
    running, app = stack
    first, second = await sealed_pair(pm, stack)
    url = running.gateway_url + "/teeapp"
    assert (await post(url, json.dumps(first).encode()))[0] == 200
    for member, message in (
        ("encrypted_key", "cannot decrypt JWE encrypted_key"),
        ("ciphertext", "does not authenticate"),
        ("tag", "does not authenticate"),
    ):
        status, text = await post(url, json.dumps(flip(second, member)).encode())
        assert status == 400 and message in text, (member, text)
    assert app.seen == [b"first"]
    assert (await post(url, json.dumps(second).encode()))[0] == 200
    status, text = await post(url, json.dumps(second).encode())
    assert status == 409 and "replayed" in text
    assert app.seen == [b"first", b"second"]


async def test_gateway_refuses_invalid_curve_epk_after_valid_ones_filled_the_cache(stack, pm):
    """Valid envelopes fill the gateway's KEK cache; a point off the curve built from a
    cached epk (same x, y + 1) is still refused before any key agreement."""
    running, app = stack
    url = running.gateway_url + "/teeapp"
    async with client(running, pm, epk_reuse_envelopes=1) as online:
        replies = [await online.request("/teeapp", b"fill") for _ in range(4)]
    assert all(r.status == 200 for r in replies)
    epk = replies[-1].request_header["epk"]
    y = int.from_bytes(b64u_decode(epk["y"]), "big")
    off_curve = dict(epk) | {"y": b64u(((y + 1) % P256_P).to_bytes(32, "big"))}
    header = {"alg": ECDH, "enc": "A256GCM", "epk": off_curve}
    status, text = await post(url, forged(header))
    assert status == 400 and "epk is not a point on P-256" in text
    assert app.seen == [b"fill"] * 4


async def test_gateway_opens_fresh_jwcrypto_envelopes_beside_reused_ones(stack, pm, keys):
    """Interop: envelopes made by plain jwcrypto (a fresh epk each) open beside the reusing
    client's; the app sees both."""
    from jwcrypto.jwe import JWE
    from jwcrypto.jwk import JWK

    running, app = stack
    public = x509.load_pem_x509_certificate(Path(keys[1][0]).read_bytes()).public_key()
    url = running.gateway_url + "/teeapp"
    async with client(running, pm) as online:
        assert (await online.request("/teeapp", b"reused")).status == 200
    for i in range(2):
        token = JWE(
            f"jwcrypto {i}".encode(),
            protected={"alg": ECDH, "enc": "A256GCM", "iat": int(time.time()), "jti": f"j{i}"},
        )
        token.add_recipient(JWK.from_pyca(public))
        protected, encrypted_key, iv, ciphertext, tag = token.serialize(compact=True).split(".")
        members = {
            "protected": protected,
            "encrypted_key": encrypted_key,
            "iv": iv,
            "ciphertext": ciphertext,
            "tag": tag,
        }
        status, text = await post(url, json.dumps(members).encode())
        assert status == 200, text
    assert app.seen == [b"reused", b"jwcrypto 0", b"jwcrypto 1"]


async def test_gateway_never_opens_with_a_kek_cached_for_its_other_key(pm, keys, tmp_path):
    """One gateway, two listeners with different P-256 keys: the same epk sent to both opens
    on each with its own KEK; an envelope for one key is refused by the other listener even
    after that epk was cached there (400, the app sees only what opened)."""
    (cert, key), first = keys
    second = write_ecdh_identity(tmp_path, "second-ecdh")
    base = default_gateway_config(cert, key, first)
    other = default_gateway_config(cert, key, second)

    def build(work, ra_port, app_port) -> GatewayConfig:
        one, two = base(work, ra_port, app_port), other(work, ra_port, app_port)
        listener = two.listeners[0]
        renamed = Listener(
            "second",
            Address("127.0.0.1", 0),
            routes=(Route("/teeapp", "teeapp"),),
            jwe=listener.jwe,
        )
        return GatewayConfig(listeners=(*one.listeners, renamed), clusters=one.clusters)

    def public(path) -> ec.EllipticCurvePublicKey:
        return x509.load_pem_x509_certificate(Path(path).read_bytes()).public_key()

    ephemeral = ec.generate_private_key(ec.SECP256R1())

    def envelope(recipient, message: bytes) -> bytes:
        alg = ECDH.encode()
        otherinfo = len(alg).to_bytes(4, "big") + alg + bytes(8) + (128).to_bytes(4, "big")
        kek = ConcatKDFHash(hashes.SHA256(), 16, otherinfo).derive(
            ephemeral.exchange(ec.ECDH(), recipient)
        )
        header = {
            "alg": ECDH,
            "enc": "A256GCM",
            "epk": epk_of(ephemeral),
            "iat": int(time.time()),
            "jti": b64u(os.urandom(16)),
        }
        protected = b64u(json.dumps(header).encode())
        cek, iv = os.urandom(32), os.urandom(12)
        sealed = AESGCM(cek).encrypt(iv, message, protected.encode())
        return json.dumps(
            {
                "protected": protected,
                "encrypted_key": b64u(aes_key_wrap(kek, cek)),
                "iv": b64u(iv),
                "ciphertext": b64u(sealed[:-16]),
                "tag": b64u(sealed[-16:]),
            }
        ).encode()

    app = TeeApp()
    async with online_stack(
        tmp_path, cert, key, pm=pm, app=app.create_app(), ecdh=first, gateway_config=build
    ) as running:
        urls = [f"http://{a}/teeapp" for a in running.gateway.addresses.values()]
        assert len(urls) == 2
        assert (await post(urls[0], envelope(public(first[0]), b"to first")))[0] == 200
        assert (await post(urls[1], envelope(public(second[0]), b"to second")))[0] == 200
        for url, recipient in ((urls[1], first[0]), (urls[0], second[0])):
            status, text = await post(url, envelope(public(recipient), b"crossed"))
            assert status == 400 and "cannot decrypt JWE encrypted_key" in text
    assert app.seen == [b"to first", b"to second"]
