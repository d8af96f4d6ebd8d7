"""A small PCS/PCCS client fetching TDX collateral, cached per (FMSPC, PCK CA) until the
earliest ``nextUpdate`` of what it fetched.

Paths (below ``base_url``): ``/tdx/certification/v4/tcb?fmspc=<HEX>``,
``/tdx/certification/v4/qe/identity``, ``/sgx/certification/v4/pckcrl?ca=<platform|processor>
&encoding=der`` and ``/sgx/certification/v4/rootcacrl`` (or ``root_ca_crl_url``). Issuer chains
come URL-encoded in the response headers. Every request has a timeout; any failure raises
:class:`VerificationError` with check ``"collateral"``. Nothing is fetched from the network
unless a URL is configured. The HTTP client (aiohttp) is the ``pccs`` extra of
trustflow-tee-tdx: verifying quotes with bundled or file collateral does not need it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from trustflow_core.errors import BackendUnavailable, InvalidInput, VerificationError
from trustflow_core.settings_schema import Node

from . import certs
from .collateral import Collateral, parse_time

if TYPE_CHECKING:
    import aiohttp

TCB_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
QE_CHAIN_HEADERS = ("SGX-Enclave-Identity-Issuer-Chain",)
CRL_CHAIN_HEADERS = ("SGX-PCK-CRL-Issuer-Chain",)
MAX_RESPONSE = 4 * 1024 * 1024


def check_url(url: object, what: str) -> str:
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        raise InvalidInput(f"{what} must be an http(s) URL, got {url!r}")
    if not urlsplit(url).netloc:
        raise InvalidInput(f"{what} has no host: {url!r}")
    return url.rstrip("/")


def expiry(collateral: Collateral) -> datetime | None:
    """The earliest ``nextUpdate`` among the collateral's TCB info, QE identity and CRLs."""
    times = []
    for raw in (collateral.tcb_info, collateral.qe_identity):
        if raw is not None:
            try:
                times.append(parse_time(json.loads(raw).get("nextUpdate"), "nextUpdate"))
            except (ValueError, AttributeError):
                return None
    for crl in (collateral.pck_crl, collateral.root_ca_crl):
        if crl is not None:
            next_update = certs.load_crl(crl, "crl").next_update_utc
            if next_update is None:
                return None
            times.append(next_update)
    return min(times) if times else None


class PccsClient:
    """Fetches and caches collateral. Use inside one event loop; close with :meth:`aclose`."""

    def __init__(
        self, base_url: str, *, timeout: float = 10.0, root_ca_crl_url: str | None = None
    ) -> None:
        self.base_url = check_url(base_url, "pccs_url")
        self.root_ca_crl_url = (
            check_url(root_ca_crl_url, "root_ca_crl_url")
            if root_ca_crl_url
            else f"{self.base_url}/sgx/certification/v4/rootcacrl"
        )
        try:
            import aiohttp
        except ImportError:
            raise BackendUnavailable(
                "pccs_url needs aiohttp: pip install 'trustflow-tee-tdx[pccs]'"
            ) from None
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[tuple[bytes, str], tuple[Collateral, datetime]] = {}
        self._lock = asyncio.Lock()
        #: Number of HTTP requests made (for tests and diagnostics).
        self.requests = 0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | Node, what: str) -> PccsClient | None:
        """A client for the ``pccs_url`` / ``root_ca_crl_url`` / ``pccs_timeout_seconds``
        backend settings (other keys are the caller's business), or None without
        ``pccs_url``; errors name ``what``."""
        root = settings if isinstance(settings, Node) else Node.settings(settings, what)
        url = root.get("pccs_url").string(None)
        if url is None:
            return None
        return cls(
            url,
            timeout=root.get("pccs_timeout_seconds").number(10.0, zero_ok=False),
            root_ca_crl_url=root.get("root_ca_crl_url").string(None),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(self, url: str, chain_headers: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        self.requests += 1
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise VerificationError(
                        "collateral", f"PCCS answered {response.status} for {url}"
                    )
                body = await response.content.read(MAX_RESPONSE + 1)
                if len(body) > MAX_RESPONSE:
                    raise VerificationError("collateral", f"PCCS response too large: {url}")
                chain = next(
                    (response.headers[h] for h in chain_headers if h in response.headers), ""
                )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise VerificationError("collateral", f"PCCS request {url} failed: {exc!r}") from exc
        if chain_headers and not chain:
            raise VerificationError("collateral", f"PCCS response has no issuer chain: {url}")
        return body, unquote(chain).encode()

    async def _fetch(self, fmspc: bytes, ca: str) -> Collateral:
        tdx, sgx = f"{self.base_url}/tdx/certification/v4", f"{self.base_url}/sgx/certification/v4"
        (tcb, tcb_chain), (qe, qe_chain), (crl, crl_chain), (root_crl, _) = await asyncio.gather(
            self._get(f"{tdx}/tcb?fmspc={fmspc.hex().upper()}", TCB_CHAIN_HEADERS),
            self._get(f"{tdx}/qe/identity", QE_CHAIN_HEADERS),
            self._get(f"{sgx}/pckcrl?ca={ca}&encoding=der", CRL_CHAIN_HEADERS),
            self._get(self.root_ca_crl_url),
        )
        try:
            return Collateral.from_pcs(
                tcb_info_response=tcb,
                qe_identity_response=qe,
                tcb_info_issuer_chain=tcb_chain,
                qe_identity_issuer_chain=qe_chain,
                pck_crl=crl,
                pck_crl_issuer_chain=crl_chain,
                root_ca_crl=root_crl,
            )
        except InvalidInput as exc:
            raise VerificationError("collateral", f"PCCS sent malformed collateral: {exc}") from exc

    async def collateral(self, fmspc: bytes, ca: str, now: datetime) -> Collateral:
        """Collateral for a platform, from the cache while ``now`` is before its expiry."""
        key = (fmspc, ca)
        async with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now < cached[1]:
                return cached[0]
            collateral = await self._fetch(fmspc, ca)
            expires = expiry(collateral)
            if expires is not None:
                self._cache[key] = (collateral, expires)
            return collateral
