"""Where a chip's HSK and CEK come from: a local bundle file, a cert
directory keyed by chip id, or a Hygon KDS through a cached HTTP client.

Nothing here trusts what it finds: the chain module verifies every certificate against the
pinned root, so a wrong or stale source can only make verification fail, never pass.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustflow_core.errors import BackendUnavailable, VerificationError
from trustflow_core.settings_schema import Node

from .evidence import check_chip_id
from .structs import HSK_CEK_SIZE

if TYPE_CHECKING:
    import aiohttp

#: The public Hygon KDS (never contacted unless configured as ``kds_url``).
HYGON_KDS_URL = "https://cert.hygon.cn"


def read_bundle(path: Path) -> bytes:
    """An HSK||CEK bundle file (2916 bytes); unreadable or wrong size is check ``endorsement``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VerificationError("endorsement", f"cannot read HSK/CEK bundle {path}: {exc}") from exc
    if len(data) != HSK_CEK_SIZE:
        raise VerificationError(
            "endorsement", f"HSK/CEK bundle {path} is {len(data)} bytes, expected {HSK_CEK_SIZE}"
        )
    return data


def find_in_cert_dir(cert_dir: Path, chip_id: str) -> Path | None:
    """``<cert_dir>/<chip_id>/hsk_cek.cert`` (trustee layout) or
    ``<cert_dir>/<chip_id>_hsk_cek.cert`` (csv-rs layout), whichever exists first."""
    check_chip_id(chip_id)
    for candidate in (cert_dir / chip_id / "hsk_cek.cert", cert_dir / f"{chip_id}_hsk_cek.cert"):
        if candidate.is_file():
            return candidate
    return None


class KdsClient:
    """Fetches ``GET <base_url>/hsk_cek?snumber=<chip_id>`` (body: exactly 2916 bytes) with a
    per-request timeout and a few retries, and caches successful bodies per chip id for the
    client's lifetime. The HTTP session is created on first use and closed by :meth:`aclose`.
    Its HTTP client (aiohttp) is the ``kds`` extra of trustflow-tee-csv.
    """

    def __init__(self, base_url: str, *, timeout: float = 5.0, retries: int = 2) -> None:
        if importlib.util.find_spec("aiohttp") is None:
            raise BackendUnavailable("kds_url needs aiohttp: pip install 'trustflow-tee-csv[kds]'")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[str, bytes] = {}
        self._lock = asyncio.Lock()

    def cached(self, chip_id: str) -> bytes | None:
        return self._cache.get(chip_id)

    async def hsk_cek(self, chip_id: str) -> bytes:
        """The bundle for ``chip_id``; failures are :class:`VerificationError` (check
        ``endorsement``) naming the chip and the reason."""
        check_chip_id(chip_id)
        found = self._cache.get(chip_id)
        if found is not None:
            return found
        async with self._lock:
            found = self._cache.get(chip_id)
            if found is None:
                found = await self._fetch(chip_id)
                self._cache[chip_id] = found
        return found

    async def _fetch(self, chip_id: str) -> bytes:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        url = f"{self.base_url}/hsk_cek"
        problem = ""
        for _attempt in range(self.retries + 1):
            try:
                async with self._session.get(url, params={"snumber": chip_id}) as response:
                    body = await _read_at_most(response, HSK_CEK_SIZE + 1)
                    if response.status != 200:
                        problem = f"HTTP {response.status}"
                        if response.status < 500:
                            break  # the KDS answered: retrying will not help
                        continue
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if len(body) != HSK_CEK_SIZE:
                problem = f"body is not {HSK_CEK_SIZE} bytes"
                break
            return body
        raise VerificationError(
            "endorsement", f"HSK/CEK for chip {chip_id} not available from KDS {url}: {problem}"
        )

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or its first ``limit`` bytes when it is longer (never reads past them)."""
    body = b""
    while len(body) < limit:
        chunk = await response.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return body


class CertSources:
    """The configured HSK/CEK sources, asked in order: ``hsk_cek_file`` (any chip), then
    ``cert_dir`` (per chip), then the KDS at ``kds_url``. Built from the plain settings both
    the attester and the verifier accept; owns the KDS client (close with :meth:`aclose`)."""

    KEYS = frozenset({"hsk_cek_file", "cert_dir", "kds_url", "kds_timeout_seconds"})

    def __init__(
        self,
        *,
        hsk_cek_file: Path | None = None,
        cert_dir: Path | None = None,
        kds_url: str | None = None,
        kds_timeout: float = 5.0,
    ) -> None:
        self.hsk_cek_file = hsk_cek_file
        self.cert_dir = cert_dir
        self.kds = KdsClient(kds_url, timeout=kds_timeout) if kds_url else None

    @classmethod
    def from_settings(cls, what: str, settings: Mapping[str, Any] | Node) -> CertSources:
        """Read :attr:`KEYS` from ``settings`` (other keys are the caller's business); errors
        name ``what``."""
        root = settings if isinstance(settings, Node) else Node.settings(settings, what)
        kds_url = root.get("kds_url")
        if kds_url.present and not kds_url.string().startswith(("http://", "https://")):
            raise kds_url.expected("an http(s) URL")
        return cls(
            hsk_cek_file=root.get("hsk_cek_file").path(None),
            cert_dir=root.get("cert_dir").path(None),
            kds_url=kds_url.string(None),
            kds_timeout=root.get("kds_timeout_seconds").number(5.0, zero_ok=False),
        )

    @property
    def configured(self) -> bool:
        return any(s is not None for s in (self.hsk_cek_file, self.cert_dir, self.kds))

    async def find(self, chip_id: str) -> tuple[bytes, str] | None:
        """``(hsk_cek bundle, source name)`` for ``chip_id``, or None when no source has it.
        A source that is configured but broken (unreadable file, KDS failure) raises
        :class:`VerificationError` (check ``endorsement``)."""
        if self.hsk_cek_file is not None:
            return read_bundle(self.hsk_cek_file), "hsk_cek_file"
        if self.cert_dir is not None:
            path = find_in_cert_dir(self.cert_dir, chip_id)
            if path is not None:
                return read_bundle(path), "cert_dir"
        if self.kds is not None:
            return await self.kds.hsk_cek(chip_id), "kds"
        return None

    async def aclose(self) -> None:
        if self.kds is not None:
            await self.kds.aclose()
