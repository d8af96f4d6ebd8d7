"""Settings of the RA Proxy role."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import InvalidInput


@dataclass(frozen=True)
class RaProxySettings:
    """What ``trustflow ra-proxy`` is started with.

    * ``cert_path`` -- the app certificate PEM; its exact bytes are returned as ``cert`` and
      hashed into every report (upstream ``--cert_path``).
    * ``plat`` -- attester backend name (``sim``, ``tdx``, ``csv``, ...), chosen through the
      plugin registry (upstream ``--plat``); None: the development default attester.
    * ``upstream_sim`` -- emit **no** report, as the upstream sim proxy does
      (docs/compat.md#sim-report-omitted); only with a simulated attester (checked at startup).
      Default: emit the attester's verifiable report.
    * ``attester_settings`` -- the attester backend's settings mapping.
    * ``host``/``port`` -- where to listen (port 0 = any free port).
    * ``max_body_bytes`` -- largest accepted request body.
    * ``report_timeout`` -- seconds a report generation may take (then HTTP 500).
    """

    cert_path: Path
    plat: str | None = None
    upstream_sim: bool = False
    attester_settings: Mapping[str, Any] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8010
    max_body_bytes: int = 64 * 1024
    report_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"port must be 0..65535, got {self.port}")

    def read_cert(self) -> bytes:
        """The certificate file's bytes; it must hold at least one PEM X.509 certificate (the
        upstream proxy does not check, but a client cannot use anything else)."""
        from cryptography import x509

        try:
            data = self.cert_path.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read --cert-path {self.cert_path}: {exc}") from exc
        try:
            x509.load_pem_x509_certificates(data)
            data.decode("utf-8")
        except ValueError as exc:
            raise InvalidInput(
                f"--cert-path {self.cert_path} is not a PEM X.509 certificate: {exc}"
            ) from exc
        return data
