"""SM3 and SM2 signature verification (GB/T 32905, GB/T 32918) for the Hygon chain.

SM3 and HMAC-SM3 come from OpenSSL through ``cryptography``. SM2 verification has two engines,
both checked on the same vectors: the system OpenSSL through ctypes (:mod:`._openssl`, about
1 ms, used when available and for the recommended curve) and ``gmssl`` (PyPI ``gmssl`` 3.2.x,
pure Python, about 25 ms; any curve). For gmssl this module adds what it gets wrong or leaves
out for Hygon data:

* the digest ``e = SM3(Z_A || M)`` with ``Z_A`` computed for the **signer's** user ID (gmssl's
  ``verify_with_sm3`` hard-codes the default ID ``1234567812345678``, which Hygon never uses);
* the range checks ``1 <= r, s < n`` and an on-curve check of the public key (gmssl does
  neither);
* setting the public key directly, because gmssl's constructor ``lstrip("04")``-s it, which
  corrupts keys whose hex starts with ``0`` or ``4``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

__all__ = ["SM2_CURVE", "Curve", "hmac_sm3", "sm2_engine", "sm2_verify", "sm2_z", "sm3"]

Engine = Literal["auto", "openssl", "gmssl"]


@dataclass(frozen=True)
class Curve:
    """Short Weierstrass curve ``y^2 = x^3 + ax + b`` over GF(p) with base point G of order n."""

    p: int
    a: int
    b: int
    gx: int
    gy: int
    n: int

    @property
    def size(self) -> int:
        """Bytes per field element / scalar."""
        return (self.p.bit_length() + 7) // 8

    def contains(self, x: int, y: int) -> bool:
        """Whether ``(x, y)`` is an affine point of the curve (coordinates reduced)."""
        if not (0 <= x < self.p and 0 <= y < self.p):
            return False
        return (y * y - (x * x * x + self.a * x + self.b)) % self.p == 0


#: The GB/T 32918.5 recommended 256-bit curve (``sm2p256v1``), the one Hygon uses (curve id 3).
SM2_CURVE = Curve(
    p=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF,
    a=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC,
    b=0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93,
    gx=0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
    gy=0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0,
    n=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123,
)


def sm3(data: bytes) -> bytes:
    """SM3 digest (32 bytes)."""
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize()


def hmac_sm3(key: bytes, data: bytes) -> bytes:
    """HMAC-SM3 (RFC 2104 with SM3), 32 bytes."""
    mac = crypto_hmac.HMAC(key, hashes.SM3())
    mac.update(data)
    return mac.finalize()


def sm2_z(user_id: bytes, x: int, y: int, curve: Curve = SM2_CURVE) -> bytes:
    """``Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA)`` (GB/T 32918.2 §5.5).

    ``ENTL`` is the bit length of ``user_id`` as a 16-bit big-endian integer; the curve
    values are big-endian, ``curve.size`` bytes each.
    """
    bits = len(user_id) * 8
    if bits > 0xFFFF:
        raise ValueError(f"SM2 user ID of {len(user_id)} bytes is too long")
    size = curve.size
    values = (curve.a, curve.b, curve.gx, curve.gy, x, y)
    encoded = b"".join(v.to_bytes(size, "big") for v in values)
    return sm3(bits.to_bytes(2, "big") + user_id + encoded)


def sm2_verify(
    x: int,
    y: int,
    user_id: bytes,
    message: bytes,
    r: int,
    s: int,
    curve: Curve = SM2_CURVE,
    *,
    engine: Engine = "auto",
) -> bool:
    """Whether ``(r, s)`` is a valid SM2 signature of ``message`` by the key ``(x, y)`` whose
    owner's user ID is ``user_id`` (GB/T 32918.2 §7). Never raises for bad input.

    ``engine`` "auto" uses OpenSSL when it is available and ``curve`` is the SM2 curve, else
    gmssl; "openssl" raises :class:`RuntimeError` when OpenSSL cannot be used."""
    if not (1 <= r < curve.n and 1 <= s < curve.n) or not curve.contains(x, y):
        return False
    if (r + s) % curve.n == 0:
        return False
    if engine != "gmssl" and curve == SM2_CURVE:
        from . import _openssl

        native = _openssl.load()
        if native is not None:
            return native(x, y, user_id, message, r, s)
    if engine == "openssl":
        raise RuntimeError("OpenSSL SM2 verification is not available here")
    try:
        e = sm3(sm2_z(user_id, x, y, curve) + message)
    except ValueError:
        return False
    return _gmssl_verify(x, y, e, r, s, curve)


def sm2_engine() -> str:
    """The engine ``sm2_verify`` uses for the SM2 curve by default: "openssl" or "gmssl"."""
    from . import _openssl

    return "openssl" if _openssl.load() is not None else "gmssl"


def _gmssl_verify(x: int, y: int, e: bytes, r: int, s: int, curve: Curve) -> bool:
    from gmssl.sm2 import CryptSM2

    width = curve.size * 2
    table = {
        "n": f"{curve.n:0{width}X}",
        "p": f"{curve.p:0{width}X}",
        "g": f"{curve.gx:0{width}x}{curve.gy:0{width}x}",
        "a": f"{curve.a:0{width}X}",
        "b": f"{curve.b:0{width}X}",
    }
    engine = CryptSM2(private_key=None, public_key="", ecc_table=table)
    engine.public_key = f"{x:0{width}x}{y:0{width}x}"  # bypass gmssl's lstrip("04")
    try:
        return bool(engine.verify(f"{r:0{width}x}{s:0{width}x}", e))
    except (TypeError, ValueError):  # sG + tP at infinity: gmssl returns None coordinates
        return False
