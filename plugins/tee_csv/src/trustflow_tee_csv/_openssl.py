"""SM2 signature verification by the system OpenSSL (``libcrypto.so.3``) through ctypes.

``cryptography`` exposes SM3 but not SM2, so this calls the same EVP functions the OpenSSL CLI
uses for ``pkeyutl -verify -digest sm3 -pkeyopt distid:<ID>``: the key is loaded from an SPKI
(id-ecPublicKey on curve 1.2.156.10197.1.301), the signer's user ID is set with
``EVP_PKEY_CTX_set1_id`` and ``EVP_DigestVerify`` computes ``SM3(Z_A || M)`` and checks the
DER signature. Only the recommended SM2 curve is possible here.

:func:`load` returns None when no usable libcrypto is found, or when it fails a known-answer
self-test (e.g. builds with SM2 disabled); callers then use gmssl.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

# SEQUENCE { SEQUENCE { id-ecPublicKey, sm2p256v1 }, BIT STRING 04 || x || y }
_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d034200") + b"\x04"

# Known answer made with gmssl (an independent implementation): private key 0x5ec0de..., signer
# ID "TRUSTFLOW-SELFTEST", nonce k = 0x1d1d....
_KAT_X = 0x468B2BD2F192E11237D6D702E678A2B67254886191F63D65F63E07F8E503B964
_KAT_Y = 0xA9DC35339238BCA71C1102AE1BE41BF2F04848A9C4341826333E83BC8CE77593
_KAT_ID = b"TRUSTFLOW-SELFTEST"
_KAT_MESSAGE = b"trustflow csv sm2 engine self-test"
_KAT_R = 0x46E1DDF3D63F23E76A70C8D2FAC443966081BC03159001DF29A1B9F249AB4087
_KAT_S = 0x51430474CB4325E7455999607EC8A1547831405B4CF0A713F988A7E82EFC6BE3

Verify = Callable[[int, int, bytes, bytes, int, int], bool]
_loaded: tuple[Verify | None] | None = None
_lock = threading.Lock()


def load() -> Verify | None:
    """The verify function, or None when libcrypto with SM2/SM3 is unavailable (cached)."""
    global _loaded
    with _lock:
        if _loaded is None:
            verify = _bind()
            if verify is not None and not _self_test(verify):
                verify = None
            _loaded = (verify,)
        return _loaded[0]


def _self_test(verify: Verify) -> bool:
    try:
        good = verify(_KAT_X, _KAT_Y, _KAT_ID, _KAT_MESSAGE, _KAT_R, _KAT_S)
        bad = verify(_KAT_X, _KAT_Y, _KAT_ID, _KAT_MESSAGE + b"!", _KAT_R, _KAT_S)
        wrong_id = verify(_KAT_X, _KAT_Y, b"1234567812345678", _KAT_MESSAGE, _KAT_R, _KAT_S)
    except (OSError, MemoryError, ValueError):
        return False
    return good and not bad and not wrong_id


def _bind() -> Verify | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        p = ctypes.c_void_p
        signatures = {
            "d2i_PUBKEY": (p, [p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long]),
            "EVP_PKEY_free": (None, [p]),
            "EVP_MD_CTX_new": (p, []),
            "EVP_MD_CTX_free": (None, [p]),
            "EVP_PKEY_CTX_new": (p, [p, p]),
            "EVP_PKEY_CTX_free": (None, [p]),
            "EVP_PKEY_CTX_set1_id": (ctypes.c_int, [p, ctypes.c_char_p, ctypes.c_int]),
            "EVP_MD_CTX_set_pkey_ctx": (None, [p, p]),
            "EVP_sm3": (p, []),
            "EVP_DigestVerifyInit": (ctypes.c_int, [p, p, p, p, p]),
            "EVP_DigestVerify": (
                ctypes.c_int,
                [p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t],
            ),
            "ERR_clear_error": (None, []),
        }
        for symbol, (restype, argtypes) in signatures.items():
            function = getattr(lib, symbol)
            function.restype = restype
            function.argtypes = argtypes
        if not lib.EVP_sm3():
            return None
    except (OSError, AttributeError):
        return None

    def verify(x: int, y: int, user_id: bytes, message: bytes, r: int, s: int) -> bool:
        spki = _SPKI_PREFIX + x.to_bytes(32, "big") + y.to_bytes(32, "big")
        cursor = ctypes.c_char_p(spki)
        pkey = lib.d2i_PUBKEY(None, ctypes.byref(cursor), len(spki))
        if not pkey:
            lib.ERR_clear_error()
            return False
        mctx = pctx = None
        try:
            mctx = lib.EVP_MD_CTX_new()
            pctx = lib.EVP_PKEY_CTX_new(pkey, None)
            if not mctx or not pctx:
                raise MemoryError("OpenSSL could not allocate an SM2 context")
            if lib.EVP_PKEY_CTX_set1_id(pctx, user_id, len(user_id)) <= 0:
                return False
            lib.EVP_MD_CTX_set_pkey_ctx(mctx, pctx)
            if lib.EVP_DigestVerifyInit(mctx, None, lib.EVP_sm3(), None, pkey) != 1:
                return False
            signature = encode_dss_signature(r, s)
            verified: int = lib.EVP_DigestVerify(
                mctx, signature, len(signature), message, len(message)
            )
            return verified == 1
        finally:
            lib.ERR_clear_error()
            if mctx:
                lib.EVP_MD_CTX_free(mctx)
            if pctx:
                lib.EVP_PKEY_CTX_free(pctx)
            lib.EVP_PKEY_free(pkey)

    return verify
