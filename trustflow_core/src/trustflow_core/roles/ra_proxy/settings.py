"""Settings of the RA Proxy role."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import InvalidInput
from ...settings_schema import Node
from .._options import DEFAULT_PORTS, LOG_KEYS

#: The keys of ``trustflow ra-proxy -c FILE`` and how each is read.
CONFIG_KEYS: Mapping[str, Callable[[Node], Any]] = {
    "cert_path": Node.path,
    "ecdh_cert_path": Node.path,
    "plat": Node.name,
    "upstream_sim": Node.boolean,
    "host": Node.string,
    "port": Node.port,
    "attester": Node.mapping,
    "max_body_bytes": lambda node: node.integer(minimum=1),
    "report_timeout": lambda node: node.number(zero_ok=False),
    **LOG_KEYS,
}


@dataclass(frozen=True)
class RaProxySettings:
    """What ``trustflow ra-proxy`` is started with.

    * ``cert_path`` -- the app certificate PEM; its exact bytes are returned as ``cert`` and
      hashed into every report (upstream ``--cert_path``).
    * ``ecdh_cert_path`` -- optional: the app's P-256 key-agreement certificate
      (:mod:`trustflow_core.ecdh_offer`), served after the RSA certificate in ``cert`` and so
      bound into every report with it: the app's offer of ``ECDH-ES+A128KW`` envelopes
      (docs/online.md#ecdh-profile). Upstream clients use the first certificate only.
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
    port: int = DEFAULT_PORTS["ra-proxy"]
    max_body_bytes: int = 64 * 1024
    report_timeout: float = 60.0
    ecdh_cert_path: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"port must be 0..65535, got {self.port}")

    def read_cert(self) -> bytes:
        """The ``cert`` to serve: the certificate file's bytes (it must hold at least one PEM
        X.509 certificate: the upstream proxy does not check, but a client cannot use anything
        else), followed by the ECDH offer certificate when ``ecdh_cert_path`` is set."""
        from cryptography import x509

        data = self._read_rsa_cert()
        if self.ecdh_cert_path is None:
            return data
        from ...ecdh_offer import is_offer

        try:
            offer = self.ecdh_cert_path.read_bytes()
        except OSError as exc:
            raise InvalidInput(
                f"cannot read --ecdh-cert-path {self.ecdh_cert_path}: {exc}"
            ) from exc
        try:
            certs = x509.load_pem_x509_certificates(offer)
            offer.decode("ascii")
        except ValueError as exc:
            raise InvalidInput(
                f"--ecdh-cert-path {self.ecdh_cert_path} is not a PEM X.509 certificate: {exc}"
            ) from exc
        if len(certs) != 1 or not is_offer(certs[0]):
            raise InvalidInput(
                f"--ecdh-cert-path {self.ecdh_cert_path} must hold one P-256 certificate with a "
                "critical keyUsage of keyAgreement only (trustflow_core.ecdh_offer)"
            )
        return data + (b"" if data.endswith(b"\n") else b"\n") + offer

    def _read_rsa_cert(self) -> bytes:
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


def settings_from(values: Mapping[str, Any]) -> RaProxySettings:
    """The settings from the command's merged values (options and ``CONFIG_KEYS``)."""
    optional = {k: values[k] for k in ("max_body_bytes", "report_timeout") if k in values}
    ecdh = values.get("ecdh_cert_path")
    return RaProxySettings(
        cert_path=Path(values["cert_path"]),
        ecdh_cert_path=None if ecdh is None else Path(ecdh),
        plat=values["plat"],
        upstream_sim=values["upstream_sim"],
        attester_settings=values["attester"].value if "attester" in values else {},
        host=values["host"],
        port=values["port"],
        **optional,
    )
