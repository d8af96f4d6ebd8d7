"""``Jwe.from_dict`` / ``Jws.from_dict``: the JSON object form of an envelope, member by member."""

from __future__ import annotations

import pytest

from trustflow_core.channel import Jwe, Jws
from trustflow_core.errors import EnvelopeError


def test_missing_and_null_members_are_empty() -> None:
    jwe = Jwe.from_dict({"protected": "p", "iv": None, "ciphertext": "c", "tag": "t"})
    assert jwe == Jwe("p", "", "", "c", "t", "")
    assert Jws.from_dict({"payload": "x"}) == Jws("", "x", "")
    assert Jwe.from_dict(jwe.to_dict()) == jwe


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([("protected", "p")], "JWE must be a JSON object"),
        ({"protected": "p", "zip": "DEF", "kid": "k"}, r"unknown member\(s\) \['kid', 'zip'\]"),
        ({"protected": "p", "iv": 7}, "JWE member 'iv' must be a string"),
        ({"tag": b"t"}, "JWE member 'tag' must be a string"),
    ],
)
def test_refused_members(data: object, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        Jwe.from_dict(data)  # type: ignore[arg-type]


def test_jws_refuses_jwe_members() -> None:
    with pytest.raises(EnvelopeError, match=r"JWS has unknown member\(s\) \['iv'\]"):
        Jws.from_dict({"payload": "x", "iv": "i"})
