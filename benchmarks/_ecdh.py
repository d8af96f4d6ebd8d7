"""The JWE ECDH row of ``benchmarks/gateway.py`` (issue 18, item 3): the app's P-256 offer
files, a pool of single-use envelopes, and the (d)/(b) report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

#: (d) JWE ECDH req/s over (b) plain pass-through req/s in the same run.
ECDH_TARGET = 0.70


class Fresh:
    """A pool for ``drive`` that ignores the index and hands out each body once (drive's
    workers restart at their offset after the warm-up, which would resend envelopes, and the
    gateway refuses replays); when the pool runs dry it seals more with ``make`` (inside the
    measured time: counted in ``extra``)."""

    def __init__(self, bodies: list, make: Callable[[], tuple]) -> None:
        self._bodies = iter(bodies)
        self._size = len(bodies)
        self._make = make
        self.extra = 0

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, _: int):
        try:
            return next(self._bodies)
        except StopIteration:
            self.extra += 1
            return self._make()


def write_ecdh_identity(work: Path):
    """The app's P-256 key-agreement key (``app-ecdh.key``, 0600) and its offer certificate
    (``app-ecdh.crt``) in ``work``; returns the public key."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from trustflow_core.ecdh_offer import offer_certificate

    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (work / "app-ecdh.key").write_bytes(key_pem)
    (work / "app-ecdh.key").chmod(0o600)
    (work / "app-ecdh.crt").write_bytes(
        offer_certificate(key).public_bytes(serialization.Encoding.PEM)
    )
    return key.public_key()


def print_ecdh(results: dict[str, Any], ratio_d: float, ratio_e: float) -> bool:
    """Print the (d) and (e) figures and the target line; return whether the target is met."""
    ecdh_cost = results["d_gateway_jwe_ecdh"]["gateway_cpu_us_per_req"]
    fresh_cost = results["e_gateway_jwe_ecdh_fresh"]["gateway_cpu_us_per_req"]
    plain_cost = results["b_gateway_plain"]["gateway_cpu_us_per_req"]
    print(
        f"gateway CPU per JWE ECDH request {ecdh_cost:.0f} us vs plain {plain_cost:.0f} us "
        f"(+{ecdh_cost - plain_cost:.0f} us: reused epk, KEK cached: JOSE parsing, AES key "
        f"unwrap, AES-GCM, replay check); fresh epk each {fresh_cost:.0f} us "
        f"(+{fresh_cost - plain_cost:.0f} us: plus one P-256 ECDH); (e)/(b) = {ratio_e:.0%}"
    )
    met = ratio_d >= ECDH_TARGET
    print(
        f"(d)/(b) = {ratio_d:.0%}   (target >= {ECDH_TARGET:.0%}: JWE ECDH req/s vs plain "
        f"pass-through) {'met' if met else 'MISSED'}"
    )
    return met
