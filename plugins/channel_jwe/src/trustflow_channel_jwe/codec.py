"""The JWE members after strict decoding, and the header members this channel refuses.

Strict base64url, base64 and JSON parsing is core's (:mod:`trustflow_core.jose`): every
``Jwe``/``Jws`` member is base64url without padding, decoded canonically
(docs/compat.md#base64url-unpadded); JOSE headers are strict JSON objects (no duplicate members, so
that two parsers can never read different values from the same header). Its refusals
(:class:`~trustflow_core.jose.MalformedInput`) become :class:`~trustflow_core.errors.EnvelopeError`
at the channel's methods.
"""

from __future__ import annotations

from typing import Any, Final

from trustflow_core.channel import Jwe
from trustflow_core.errors import EnvelopeError
from trustflow_core.jose import b64url_decode, decode_header

#: core's decoders under final names: the compiled build calls them without a globals lookup
_b64url_decode: Final = b64url_decode
_decode_header: Final = decode_header


def reject_unsupported_members(header: dict[str, Any], what: str) -> None:
    """Refuse header members whose meaning we would otherwise silently ignore: ``crit``
    (extensions we must understand — we understand none), ``zip`` (compression)."""
    for member in ("crit", "zip"):
        if member in header:
            raise EnvelopeError(f"{what} member {member!r} is not supported")


class DecodedJwe:
    """Five JWE members after strict base64url decoding; the sixth, ``protected``, is decoded
    with its JSON by :func:`decode_protected`. (A plain class: built once per envelope, at a
    fraction of a frozen dataclass's cost, and compiled with the channel's RFC path, where a
    named tuple's ``__new__`` would stay interpreted.)"""

    __slots__ = ("aad", "ciphertext", "encrypted_key", "iv", "tag")

    def __init__(
        self, encrypted_key: bytes, iv: bytes, ciphertext: bytes, tag: bytes, aad: bytes
    ) -> None:
        self.encrypted_key = encrypted_key
        self.iv = iv
        self.ciphertext = ciphertext
        self.tag = tag
        self.aad = aad

    def __repr__(self) -> str:
        return f"DecodedJwe(iv={self.iv!r}, tag={self.tag!r}, aad={self.aad!r})"


def decode_protected(jwe: Jwe) -> dict[str, Any]:
    """The protected header of ``jwe``: strict base64url, then a strict JSON object (core's
    :func:`~trustflow_core.jose.decode_header`, which returns a header the caller has just
    decoded without decoding it again)."""
    return _decode_header(jwe.protected, "JWE protected header", member="JWE member 'protected'")


def decode_jwe(jwe: Jwe) -> DecodedJwe:
    """Strictly decode the members of ``jwe`` other than ``protected``; the error names the
    first bad member."""
    return DecodedJwe(
        _b64url_decode(jwe.encrypted_key, "JWE member 'encrypted_key'"),
        _b64url_decode(jwe.iv, "JWE member 'iv'"),
        _b64url_decode(jwe.ciphertext, "JWE member 'ciphertext'"),
        _b64url_decode(jwe.tag, "JWE member 'tag'"),
        b"" if jwe.aad == "" else _b64url_decode(jwe.aad, "JWE member 'aad'"),
    )
