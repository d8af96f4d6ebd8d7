"""``OnlineClient``: the whole client side of the online scenario.

1. ``GetRaCert`` with a fresh nonce (32 random bytes, hex) through the gateway.
2. Verify the report: the verifier for its platform checks the evidence and the user's policy
   (platform, measurements, ...; simulated evidence only with ``allow_simulation``); then the
   report's user data must equal ``SHA-256(cert || "." || nonce)`` — so a report made for
   another nonce or another certificate is refused.
3. Take the app's RSA public key from the attested certificate and, when the attested ``cert``
   also holds the app's ECDH offer (a P-256 key-agreement certificate after the RSA one,
   :mod:`trustflow_core.ecdh_offer`) and a report was verified, its P-256 key. The offer lies
   inside the bound ``cert`` text, so it is bound exactly as the RSA key is: a network attacker
   can neither add an offer (its own key) nor strip one without the report check failing; a
   reply without a report (``upstream_sim``) never enables ECDH.
4. Seal the request (``rfc`` profile by default, sent as ``application/jose+json``: to the
   attested P-256 key with ``ECDH-ES+A128KW`` when offered, unless ``ecdh=False``, else to the
   RSA key, docs/online.md#ecdh-profile; ``upstream`` = the ``jwe_client.py`` dialect:
   RSA-OAEP-256, A128GCM, 12-byte IV, empty AAD, ``application/json``), send it, open the
   reply with the request's content key.

Every failed check raises :class:`~trustflow_core.errors.VerificationError` whose ``check``
names it (``ra_proxy``, ``cert``, ``missing_report``, ``user_data``, ``policy``, ``platform``,
``simulation``, ...) and whose message says what was expected and what came; transport
failures raise :class:`OnlineError`; a reply that does not open raises
:class:`~trustflow_core.errors.EnvelopeError`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from ...attestation import Attributes, Policy, Report, VerifiedReport, ra_user_data, verify_optional
from ...channel import EnvelopeChannel, EnvelopeRecipient, Jwe
from ...ecdh_offer import find_offer
from ...errors import (
    BackendNotFound,
    EnvelopeError,
    InvalidInput,
    TrustflowError,
    VerificationError,
)
from ...jose import decode_header
from ...manager import TrustflowPluginManager
from ...registry import ENVELOPE_CHANNEL, backend_class, verifier_for_platform
from .._net import http_failure

RA_PATH = "/RaProxy/GetRaCert"
PROFILES = ("rfc", "upstream")
JOSE_JSON = "application/jose+json"


class OnlineError(TrustflowError):
    """The RA proxy or gateway could not be reached or answered with an HTTP error."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class AttestedApp:
    """What attestation established: the app certificate text, its RSA key, the verified
    report, and the app's P-256 key-agreement key when the attested ``cert`` offers one and a
    report bound it (else None)."""

    cert_pem: bytes
    public_key: RSAPublicKey
    verified: VerifiedReport
    nonce: str
    ecdh_key: EllipticCurvePublicKey | None = None


@dataclass(frozen=True)
class Reply:
    """An opened reply: HTTP status, the envelope as received, the plaintext, the ``alg``
    the request was sealed with (``ECDH-ES+A128KW`` or an RSA one) and the request's whole
    protected header (its ``epk``, ``iat``, ``jti``, ...; public values only)."""

    status: int
    envelope: Mapping[str, str]
    plaintext: bytes = field(repr=False)
    request_alg: str = ""
    request_header: Mapping[str, Any] = field(default_factory=dict)


class OnlineClient:
    """``async with OnlineClient(url, policy=...) as client: reply = await client.request(...)``.

    ``policy`` constrains the report (platform, measurements, ``allow_simulation``); its user
    data is filled in per call. ``upstream_sim`` accepts a reply without any report (the
    upstream sim RA Proxy) — only together with ``policy.allow_simulation``, and it proves
    nothing about the app. ``verifier_settings`` maps a verifier name to its settings.
    ``envelope_channel`` names the envelope channel backend in ``pm`` (default ``jwe``).
    ``ecdh`` (default True): in the rfc profile, seal to the app's P-256 key when the verified
    report binds an offer of one; False always uses the RSA key. ``epk_reuse_seconds`` and
    ``epk_reuse_envelopes`` (rfc profile): ECDH requests reuse one ephemeral P-256 key per app
    key for at most that long and that many envelopes, each with its own random content key,
    ``iat`` and ``jti`` (default 60 s and 10,000; 1 envelope = a fresh key each time;
    docs/online.md#ecdh-profile).
    """

    def __init__(
        self,
        base_url: str,
        *,
        policy: Policy,
        pm: TrustflowPluginManager,
        profile: str = "rfc",
        upstream_sim: bool = False,
        verifier_settings: Mapping[str, Mapping[str, Any]] | None = None,
        timeout: float = 30.0,
        ra_path: str = RA_PATH,
        envelope_channel: str = "jwe",
        ecdh: bool = True,
        epk_reuse_seconds: float = 60.0,
        epk_reuse_envelopes: int = 10_000,
    ) -> None:
        if profile not in PROFILES:
            raise InvalidInput(f"profile must be one of {PROFILES}, got {profile!r}")
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.pm = pm
        self.profile = profile
        self.upstream_sim = upstream_sim
        self.ecdh = ecdh
        self.verifier_settings = dict(verifier_settings or {})
        self.ra_path = ra_path
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        settings: dict[str, Any] = {"profile": profile}
        if profile == "upstream":
            settings["alg"] = "RSA-OAEP-256"  # what the gateway (Envoy) decrypts
        else:
            settings["epk_reuse_seconds"] = epk_reuse_seconds
            settings["epk_reuse_envelopes"] = epk_reuse_envelopes
        channel_cls = backend_class(pm, ENVELOPE_CHANNEL, envelope_channel)
        self.channel: EnvelopeChannel = channel_cls.from_role(settings, pm=pm)
        self.app: AttestedApp | None = None

    async def __aenter__(self) -> OnlineClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use OnlineClient as 'async with OnlineClient(...) as client'")
        return self._session

    async def _post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes, str]:
        url = self.base_url + path
        try:
            async with self.session.post(
                url, data=body, headers={"Content-Type": content_type}
            ) as resp:
                return resp.status, await resp.read(), resp.content_type
        except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError) as exc:  # 3.10: distinct
            reason = http_failure(
                exc, f"gateway {self.base_url}", f"POST {path}", self._timeout.total
            )
            raise OnlineError(reason) from exc

    async def get_ra_cert(self, nonce: str) -> dict[str, Any]:
        """Call GetRaCert; return the reply JSON (brpc dialect)."""
        body = json.dumps({"nonce": nonce}).encode()
        status, data, _ = await self._post(self.ra_path, body, "application/json")
        text = data.decode("utf-8", "replace")
        if status != 200:
            raise OnlineError(f"GetRaCert: HTTP {status}: {text.strip()}", status, text)
        try:
            reply = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise VerificationError("ra_proxy", f"GetRaCert reply is not JSON: {exc}") from None
        if not isinstance(reply, dict):
            raise VerificationError("ra_proxy", "GetRaCert reply is not a JSON object")
        status_obj = reply.get("status") or {}
        code = status_obj.get("code", 0) if isinstance(status_obj, dict) else None
        if code != 0:
            raise VerificationError("ra_proxy", f"GetRaCert status {status_obj!r}, expected code 0")
        return reply

    async def attest(self) -> AttestedApp:
        """Steps 1-3: fetch, verify and bind the report; remember and return the app."""
        nonce = secrets.token_hex(32)
        reply = await self.get_ra_cert(nonce)
        cert = reply.get("cert")
        if not isinstance(cert, str) or not cert:
            raise VerificationError("cert", "GetRaCert reply has no cert")
        cert_pem = cert.encode("utf-8")
        raw_report = reply.get("attestation_report")
        try:
            report = None if raw_report is None else Report.from_dict(raw_report)
        except InvalidInput as exc:
            raise VerificationError("report_format", str(exc)) from None
        verified = await self._verify(report)
        if report is not None:
            expected = ra_user_data(cert_pem, nonce.encode("utf-8")).hex()
            got = verified.attributes.hex_user_data.lower()
            if not hmac.compare_digest(expected, got):
                raise VerificationError(
                    "user_data",
                    f"the report binds {got or '(nothing)'}, expected SHA-256(cert || '.' || "
                    f"nonce) = {expected}: it was made for another nonce or another certificate",
                )
        try:
            certs = x509.load_pem_x509_certificates(cert_pem)
        except ValueError as exc:
            raise VerificationError("cert", f"cert is not a PEM X.509 certificate: {exc}") from None
        public_key = certs[0].public_key()
        if not isinstance(public_key, RSAPublicKey):
            raise VerificationError("cert", f"cert key is {type(public_key).__name__}, not RSA")
        # only a report binds the offer: without one (upstream_sim) nothing is bound
        ecdh_key = find_offer(certs) if report is not None else None
        self.app = AttestedApp(cert_pem, public_key, verified, nonce, ecdh_key)
        return self.app

    def recipient(self, app: AttestedApp) -> EnvelopeRecipient:
        """The key a request to ``app`` is sealed to: its attested P-256 key in the rfc profile
        when offered (and ``ecdh``), else its RSA key."""
        if self.profile == "rfc" and self.ecdh and app.ecdh_key is not None:
            return app.ecdh_key
        return app.public_key

    async def _verify(self, report: Report | None) -> VerifiedReport:
        policy = self.policy
        if not policy.main_attributes:
            policy = Policy((Attributes(),), policy.allow_simulation)
        verifiers = []

        def verifier_for(platform: str) -> Any:
            try:
                cls = verifier_for_platform(self.pm, platform)
            except BackendNotFound as exc:
                raise VerificationError("platform", str(exc)) from None
            verifier = cls.from_role(self.verifier_settings.get(cls.name, {}), pm=self.pm)
            verifiers.append(verifier)
            return verifier

        try:
            return await verify_optional(
                report, policy, verifier_for, upstream_sim=self.upstream_sim
            )
        finally:
            for verifier in verifiers:
                await verifier.aclose()

    async def request(
        self, path: str, body: bytes, *, content_type: str = "application/json"
    ) -> Reply:
        """Seal ``body`` to the attested app (attesting first if needed), POST it to ``path``,
        open the reply. ``content_type`` is sent in the upstream profile; the rfc profile sends
        ``application/jose+json``."""
        app = self.app or await self.attest()
        sealed = self.channel.seal(body, self.recipient(app))
        members = sealed.jwe.to_dict()
        if self.profile == "rfc":
            members = {k: v for k, v in members.items() if v}
            content_type = JOSE_JSON
        status, data, _ = await self._post(path, json.dumps(members).encode(), content_type)
        text = data.decode("utf-8", "replace")
        try:
            envelope = json.loads(data)
            jwe = Jwe.from_dict(envelope)
        except (ValueError, RecursionError, EnvelopeError):
            raise OnlineError(
                f"POST {path}: HTTP {status}, reply is not a JWE envelope: {text.strip()[:500]}",
                status,
                text,
            ) from None
        plaintext = self.channel.open_reply(jwe, sealed.cek)
        header = decode_header(sealed.jwe.protected, "JWE protected header")
        return Reply(status, envelope, plaintext, str(header.get("alg", "")), header)
