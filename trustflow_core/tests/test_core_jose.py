"""Strict JSON / base64 / JOSE header parsing (trustflow_core.jose): every refusal is a
MalformedInput naming the input, the check that failed and why; well-formed input (pretty-printed
SDK headers included) passes."""

from __future__ import annotations

import base64
import json

import pytest

from trustflow_core import jose
from trustflow_core.errors import InvalidInput

# ---- base64url -------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x00", b"ab", b"abc", bytes(range(256))])
def test_b64url_round_trip_without_padding(data: bytes) -> None:
    encoded = jose.b64url_encode(data)
    assert "=" not in encoded
    assert jose.b64url_decode(encoded, "x") == data


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("YWI=", "member 'iv' is not base64url without padding"),  # padding
        ("a+b/", "member 'iv' is not base64url without padding"),  # standard alphabet
        ("YW I", "member 'iv' is not base64url without padding"),  # a space
        ("YWJj!", "member 'iv' is not base64url without padding"),  # silently dropped before
        ("YWJjZ", "member 'iv' has an impossible base64url length (5)"),
        ("YWJ", "member 'iv' is non-canonical base64url (stray trailing bits)"),  # 'YWI' is ab
        ("YR", "member 'iv' is non-canonical base64url (stray trailing bits)"),
    ],
)
def test_b64url_refusals(value: str, message: str) -> None:
    with pytest.raises(jose.MalformedInput) as caught:
        jose.b64url_decode(value, "member 'iv'")
    assert str(caught.value) == message
    assert caught.value.problem == "base64" and caught.value.what == "member 'iv'"


def test_b64url_refuses_a_non_string() -> None:
    with pytest.raises(jose.MalformedInput, match="is not base64url"):
        jose.b64url_decode(None, "x")


# ---- standard base64 (x5c) ------------------------------------------------------------------


def test_b64std_round_trip_and_refusals() -> None:
    for data in (b"", b"a", b"ab", b"abc", bytes(range(256))):
        assert jose.b64std_decode(jose.b64std_encode(data), "x5c[0]") == data
    for value, problem in (
        ("YWI", "is not standard base64 with padding"),  # missing padding
        ("YW-_", "is not standard base64 with padding"),  # URL-safe alphabet
        ("YWJ=", "is non-canonical base64 (stray trailing bits)"),
        ("YR==", "is non-canonical base64 (stray trailing bits)"),
    ):
        with pytest.raises(jose.MalformedInput) as caught:
            jose.b64std_decode(value, "x5c[0]")
        assert str(caught.value) == f"x5c[0] {problem}", value


# ---- JSON ------------------------------------------------------------------------------------

REFUSED_JSON = {
    "duplicate key": (b'{"alg": "RS256", "alg": "none"}', "duplicate key 'alg'"),
    "duplicate nested key": (b'{"a": [{"b": 1, "b": 2}]}', "duplicate key 'b'"),
    "NaN": (b'{"iat": NaN}', "NaN is not valid JSON"),
    "Infinity": (b'{"iat": Infinity}', "Infinity is not valid JSON"),
    "-Infinity": (b"[-Infinity]", "-Infinity is not valid JSON"),
    "nesting": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "invalid UTF-8": (b'{"a": "\xff"}', "not valid Unicode (invalid start byte)"),
    "unpaired surrogate escape": (b'{"a": "\\ud800"}', "not valid Unicode"),
    "unpaired low surrogate key": (b'{"\\udc00": 1}', "not valid Unicode"),
    "truncated": (b'{"a": ', "Expecting value"),
    "trailing data": (b"{} {}", "Extra data"),
    "empty": (b"", "Expecting value"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_JSON))
def test_json_refusals(case: str) -> None:
    raw, reason = REFUSED_JSON[case]
    with pytest.raises(jose.MalformedInput) as caught:
        jose.loads(raw, "JWS header")
    error = caught.value
    assert isinstance(error, InvalidInput)
    assert error.problem == "json" and reason in error.reason
    assert str(error).startswith("JWS header is not valid JSON: "), str(error)


def test_json_refuses_a_raw_surrogate_in_str_input() -> None:
    with pytest.raises(jose.MalformedInput, match="not valid Unicode"):
        jose.loads('{"a": "\ud800"}', "x")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": "\\ud83d\\ude00"}',  # a surrogate pair is one character
        b'{"a": "\\\\ud800"}',  # an escaped backslash, then the text "ud800"
        '{"a": "\u00e9"}'.encode(),
        b"[" * 500 + b"]" * 500,
    ],
)
def test_json_accepts_well_formed_input(raw: bytes) -> None:
    assert jose.loads(raw, "x") == json.loads(raw)


def test_parse_object_refuses_other_shapes() -> None:
    for raw, kind in ((b"[1]", "list"), (b'"a"', "str"), (b"1", "int"), (b"null", "NoneType")):
        with pytest.raises(jose.MalformedInput) as caught:
            jose.parse_object(raw, "JWE protected header")
        assert caught.value.problem == "object"
        assert str(caught.value) == f"JWE protected header must be a JSON object, got {kind}"


# ---- JOSE headers ----------------------------------------------------------------------------


def test_decode_header_accepts_the_sdks_pretty_printed_header() -> None:
    pretty = json.dumps({"alg": "RSA-OAEP-256", "enc": "A128GCM"}, indent=2).encode()
    header = jose.decode_header(jose.b64url_encode(pretty), "JWE protected header")
    assert header == {"alg": "RSA-OAEP-256", "enc": "A128GCM"}
    assert jose.compact_json(header) == b'{"alg":"RSA-OAEP-256","enc":"A128GCM"}'


def test_decode_header_refusals_name_the_header() -> None:
    for protected, problem in (
        ("e30=", "base64"),  # "{}" padded
        (jose.b64url_encode(b'{"alg":"a","alg":"b"}'), "json"),
        (jose.b64url_encode(b"[]"), "object"),
    ):
        with pytest.raises(jose.MalformedInput) as caught:
            jose.decode_header(protected, "JWE protected header")
        assert caught.value.problem == problem
        assert str(caught.value).startswith("JWE protected header ")


def test_decode_header_hands_back_only_the_header_of_the_same_text() -> None:
    """The last decoded header is returned again for the same ``protected`` text (the gateway
    and the channel read one header): a different text is decoded anew, a text that fails is
    refused again every time, and a caller changing its copy changes no later result."""
    first = jose.b64url_encode(b'{"alg":"A","jti":"1"}')
    header = jose.decode_header(first, "JWE protected header")
    assert header == {"alg": "A", "jti": "1"}
    header["jti"] = "changed"
    assert jose.decode_header(first, "JWE protected header") == {"alg": "A", "jti": "1"}
    other = jose.b64url_encode(b'{"alg":"A","jti":"2"}')
    assert jose.decode_header(other, "JWE protected header") == {"alg": "A", "jti": "2"}
    assert jose.decode_header(first, "JWE protected header") == {"alg": "A", "jti": "1"}
    duplicate = jose.b64url_encode(b'{"alg":"A","alg":"B"}')
    for _ in range(2):
        with pytest.raises(jose.MalformedInput, match="duplicate key 'alg'"):
            jose.decode_header(duplicate, "JWE protected header")
    with pytest.raises(jose.MalformedInput) as caught:
        jose.decode_header(first + "=", "JWE protected header", member="JWE member 'protected'")
    assert str(caught.value).startswith("JWE member 'protected' ")


def test_header_string_member() -> None:
    header = {"alg": "RS256", "enc": 7}
    assert jose.header_string(header, "alg", "JWS header") == "RS256"
    for member, state in (("enc", "not a string (int)"), ("kid", "missing")):
        with pytest.raises(jose.MalformedInput) as caught:
            jose.header_string(header, member, "JWS header")
        assert str(caught.value) == f"JWS header member {member!r} is {state}"
        assert caught.value.problem == "member"


def test_compact_json_is_ascii_without_spaces() -> None:
    assert jose.compact_json({"a": "é", "b": [1, 2]}) == b'{"a":"\\u00e9","b":[1,2]}'


def test_base64_helpers_match_the_standard_library() -> None:
    data = bytes(range(200))
    assert jose.b64url_encode(data) == base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert jose.b64std_encode(data) == base64.b64encode(data).decode()


def _reference_b64url_decode(value: object) -> bytes | str:
    """The definition b64url_decode implements (its former code): the alphabet by a regex, the
    length, canonical trailing bits by re-encoding; a refusal as its message."""
    import re

    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", value):
        return "x is not base64url without padding"
    if len(value) % 4 == 1:
        return f"x has an impossible base64url length ({len(value)})"
    data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != value:
        return "x is non-canonical base64url (stray trailing bits)"
    return data


def test_b64url_decode_agrees_with_its_definition_on_random_and_mutated_input() -> None:
    import random

    rng = random.Random(18)
    alphabet = "AZaz09-_+/= \n\té.\x00" + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    cases: list[object] = ["", "A", "AA", "AB", "AAA", "AAB", "YQ", "YR", "YWJ", "AA==", None, 5]
    for _ in range(20000):
        text = jose.b64url_encode(rng.randbytes(rng.randint(0, 9)))
        if text and rng.random() < 0.6:
            at = rng.randrange(len(text))
            text = text[:at] + rng.choice(alphabet) + text[at + 1 :]
        cases.append(text)
    for case in cases:
        try:
            got: bytes | str = jose.b64url_decode(case, "x")
        except jose.MalformedInput as exc:
            got = str(exc)
        assert got == _reference_b64url_decode(case), repr(case)
