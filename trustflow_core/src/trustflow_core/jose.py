"""Strict parsing of JSON and JOSE material: the one implementation every role and the ``jwe``
channel use.

* **base64url** (every ``Jwe``/``Jws`` member) is decoded strictly: only the URL-safe alphabet,
  no ``=`` padding, no impossible length, canonical trailing bits
  (docs/compat.md#base64url-unpadded; the upstream Capsule Manager and the C++ proxies decode the
  same way).
* **standard base64** (``x5c`` entries, RFC 7515 §4.1.6) must carry canonical padding.
* **JSON** is UTF-8 text whose objects have no duplicate member names (so that two parsers can
  never read different values from the same header), no ``NaN``/``Infinity`` constants, no
  nesting past the parser's limit and no string that is not valid Unicode (an escaped unpaired
  surrogate such as ``"\\ud800"``). Whitespace is free: upstream's Python SDK pretty-prints its
  headers; whether a profile insists on the compact form is the caller's decision.

Every refusal raises :class:`MalformedInput` (an
:class:`~trustflow_core.errors.InvalidInput`) whose message names the input and the problem;
callers map it to their own status (the CM's in-band codes, the gateway's 400,
:class:`~trustflow_core.errors.EnvelopeError` in the ``jwe`` channel).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any, Final, Literal

from .errors import InvalidInput

__all__ = [
    "MalformedInput",
    "b64std_decode",
    "b64std_encode",
    "b64url_decode",
    "b64url_encode",
    "compact_json",
    "decode_header",
    "header_string",
    "loads",
    "parse_object",
]

Problem = Literal["base64", "json", "object", "member"]
_MESSAGES: Final[dict[Problem, str]] = {
    "base64": "{what} {reason}",
    "json": "{what} is not valid JSON: {reason}",
    "object": "{what} must be a JSON object, {reason}",
    "member": "{what} {reason}",
}
_B64URL_NOPAD: Final = re.compile(r"[A-Za-z0-9_-]*")
_URL_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_URL_TO_STD: Final = bytes.maketrans(b"-_", b"+/")
_STD_TO_URL: Final = bytes.maketrans(b"+/", b"-_")
#: byte -> its 6-bit value in the base64url alphabet (0 for bytes outside it)
_B64URL_VALUE: Final = bytes(_URL_ALPHABET.find(bytes([b])) % 64 for b in range(256))
#: by ``len % 4`` of base64url text: the bits of its last character that encode no data (4 of
#: them when 2, 2 when 3; none when 0), and the ``=`` padding the standard decoder wants
_UNUSED_BITS: Final = (0, 0, 0x0F, 0x03)
_PADDING: Final = (b"", b"", b"==", b"=")
#: binascii's codecs under final names (the compiled build calls them without two lookups)
_a2b_base64: Final = binascii.a2b_base64
_b2a_base64: Final = binascii.b2a_base64
_B64STD_PADDED: Final = re.compile(
    r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
)
# A surrogate escaped as \uD800..\uDFFF: with UTF-8 text, the only way a parsed JSON string can
# end up holding an unpaired surrogate.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


class MalformedInput(InvalidInput):
    """Strict parsing refused the input. ``str()`` names the input and the problem;
    :attr:`problem` says which check failed (``"base64"``; ``"json"``: not strict JSON;
    ``"object"``: JSON but not an object; ``"member"``: a header member is missing or of the
    wrong type) and :attr:`reason` why, without the input's name."""

    def __init__(self, what: str, problem: Problem, reason: str) -> None:
        super().__init__(_MESSAGES[problem].format(what=what, reason=reason))
        self.what = what
        self.problem: Problem = problem
        self.reason = reason


def b64url_encode(data: bytes) -> str:
    """base64url of ``data`` without padding."""
    return _b2a_base64(data, newline=False).translate(_STD_TO_URL, b"=").decode("ascii")


def b64url_decode(value: object, what: str) -> bytes:
    """Decode canonical base64url without padding; :class:`MalformedInput` naming ``what`` for
    a value that is not a string, padding, characters outside the URL-safe alphabet, an
    impossible length or non-canonical trailing bits. (``value`` is typed ``object``: it comes
    from parsed JSON, and the compiled build checks annotations at the call.)"""
    if isinstance(value, str) and value.isascii():
        raw = value.encode("ascii")
        tail = len(raw) % 4
        # every byte in the URL-safe alphabet (nothing is left once they are deleted)
        if tail != 1 and not raw.translate(None, _URL_ALPHABET):
            # the bits of the last character that encode no data must be zero
            if tail and _B64URL_VALUE[raw[-1]] & _UNUSED_BITS[tail]:
                raise MalformedInput(
                    what, "base64", "is non-canonical base64url (stray trailing bits)"
                )
            return _a2b_base64(raw.translate(_URL_TO_STD) + _PADDING[tail])
    if not isinstance(value, str) or not _B64URL_NOPAD.fullmatch(value):
        raise MalformedInput(what, "base64", "is not base64url without padding")
    if len(value) % 4 == 1:
        raise MalformedInput(what, "base64", f"has an impossible base64url length ({len(value)})")
    raise AssertionError("unreachable")  # pragma: no cover


def b64std_encode(data: bytes) -> str:
    """Standard base64 of ``data`` with padding (for ``x5c``)."""
    return base64.b64encode(data).decode("ascii")


def b64std_decode(value: object, what: str) -> bytes:
    """Decode canonical standard base64 with padding; :class:`MalformedInput` naming ``what``
    otherwise (a value that is not a string included)."""
    if not isinstance(value, str) or not _B64STD_PADDED.fullmatch(value):
        raise MalformedInput(what, "base64", "is not standard base64 with padding")
    data = base64.b64decode(value, validate=True)
    if b64std_encode(data) != value:
        raise MalformedInput(what, "base64", "is non-canonical base64 (stray trailing bits)")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # a name came twice: find the first repeat for the message
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


#: One decoder for every call (``json.loads`` with hooks builds a new one each time); its C
#: scanner is called directly, as ``JSONDecoder.decode`` and ``raw_decode`` would, with their
#: whitespace rule and messages (they are two interpreted frames a parse, also in the compiled
#: build).
_DECODER: Final = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = _DECODER.scan_once  # type: ignore[attr-defined]
_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")
#: What :data:`_WHITESPACE` matches, one character at a time.
_JSON_SPACE: Final = " \t\n\r"


def _decode(text: str) -> Any:
    """``_DECODER.decode(text)``: one JSON value, whitespace around it and nothing else."""
    start = 0
    if text[:1] in _JSON_SPACE:  # rare: the pattern only then (two method calls a parse)
        start = _WHITESPACE.match(text).end()  # type: ignore[union-attr]  # always matches
    try:
        value, end = _SCAN(text, start)
    except StopIteration as stop:
        raise json.JSONDecodeError("Expecting value", text, stop.value) from None
    if end != len(text):
        end = _WHITESPACE.match(text, end).end()  # type: ignore[union-attr]
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def loads(raw: bytes | bytearray | str, what: str) -> Any:
    """Parse strict JSON (see the module docstring) of any shape; :class:`MalformedInput`
    (problem ``"json"``) naming ``what`` otherwise."""
    try:
        if isinstance(raw, str):
            raw.encode("utf-8")  # refuses raw surrogates
            text = raw
        else:
            text = raw.decode("utf-8")
        if text.startswith("\ufeff"):  # as json.loads does
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _decode(text)
        if "\\u" in text and _SURROGATE_ESCAPE.search(text):  # the pairs must still encode
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:  # bytes, or an unpaired surrogate
        raise MalformedInput(what, "json", f"not valid Unicode ({exc.reason})") from None
    except RecursionError:
        raise MalformedInput(what, "json", "nested too deeply") from None
    except ValueError as exc:
        raise MalformedInput(what, "json", str(exc)) from None
    return value


def parse_object(raw: bytes | bytearray | str, what: str) -> dict[str, Any]:
    """:func:`loads` for input that must be a JSON object (problem ``"object"`` otherwise)."""
    value = loads(raw, what)
    if not isinstance(value, dict):
        raise MalformedInput(what, "object", f"got {type(value).__name__}")
    return value


#: The last header :func:`decode_header` decoded: its ``protected`` text and the object.
_last_header: tuple[str, dict[str, Any]] | None = None


def decode_header(protected: str, what: str, *, member: str | None = None) -> dict[str, Any]:
    """The JOSE header object in the base64url member ``protected`` (a new dict each call;
    treat nested values, e.g. an ``epk`` object, as read-only). Errors name ``what``, those of
    the base64url layer ``member`` when given (e.g. ``"JWE member 'protected'"``).

    The last header decoded is kept with its exact ``protected`` text and returned again for
    the same text without decoding it again: a gateway reads ``alg``/``enc`` to pick the
    profile and key, then the channel decodes the same member to open the envelope. A result
    depends on nothing but the text, and only successfully decoded headers are kept."""
    global _last_header
    last = _last_header
    if last is not None and last[0] == protected:
        return dict(last[1])
    header = parse_object(b64url_decode(protected, member or what), what)
    _last_header = (protected, header)
    return dict(header)


def compact_json(obj: Any) -> bytes:
    """Compact ASCII JSON (no spaces), as the upstream CM, C++ proxy and Envoy write headers."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def header_string(header: dict[str, Any], member: str, what: str) -> str:
    """A required string member of a JOSE header; :class:`MalformedInput` naming it otherwise."""
    value = header.get(member)
    if not isinstance(value, str):
        state = "missing" if value is None else f"not a string ({type(value).__name__})"
        raise MalformedInput(what, "member", f"member {member!r} is {state}")
    return value
