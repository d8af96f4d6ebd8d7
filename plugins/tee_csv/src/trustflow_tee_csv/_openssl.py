"""SM2 signature verification by the system OpenSSL (``libcrypto.so.3``) through ctypes.

``cryptography`` exposes SM3 but not SM2, so this calls the same EVP functions the OpenSSL CLI
uses for ``pkeyutl -verify -digest sm3 -pkeyopt distid:<ID>``: the key is loaded from an SPKI
(id-ecPublicKey on curve 1.2.156.10197.1.301), the signer's user ID is set with
``EVP_PKEY_CTX_set1_id`` and ``EVP_DigestVerify`` computes ``SM3(Z_A || M)`` and checks the
DER signature. Only the recommended SM2 curve is possible here.

:func:`load` returns None when no usable libcrypto is found; callers then use gmssl.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

# SEQUENCE { SEQUENCE { id-ecPublicKey, sm2p256v1 }, BIT STRING 04 || x || y }
_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d034200") + b"\x04"

Verify = Callable[[int, int, bytes, bytes, int, int], bool]
_loaded: tuple[Verify | None] | None = None
_lock = threading.Lock()


def load() -> Verify | None:
    """The verify function, or None when libcrypto with SM2/SM3 is unavailable (cached)."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = (_bind(),)
        return _loaded[0]


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
            return lib.EVP_DigestVerify(mctx, signature, len(signature), message, len(message)) == 1
        finally:
            lib.ERR_clear_error()
            if mctx:
                lib.EVP_MD_CTX_free(mctx)
            if pctx:
                lib.EVP_PKEY_CTX_free(pctx)
            lib.EVP_PKEY_free(pkey)

    return verify
