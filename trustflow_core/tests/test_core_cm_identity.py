"""The CM key pair: generated once (key 0600), reloaded, mismatches refused; settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from trustflow_core.errors import InvalidInput
from trustflow_core.roles.capsule_manager import identity_keys
from trustflow_core.roles.capsule_manager.resource_uri import parse_resource_uri
from trustflow_core.roles.capsule_manager_protocol.errors import CMError, Kind, kind_of_message


def test_generated_once_then_loaded(tmp_path: Path) -> None:
    key, cert = tmp_path / "k" / "cm.key", tmp_path / "c" / "cm.crt"
    first = identity_keys.load_or_create(key, cert)
    assert key.stat().st_mode & 0o777 == 0o600
    again = identity_keys.load_or_create(key, cert)
    assert again.cert_pem == first.cert_pem and again.party_id == first.party_id
    parsed = x509.load_pem_x509_certificate(first.cert_pem.encode())
    assert parsed.serial_number > 0  # docs/compat.md#cm-certificate: not upstream's 0
    usage = parsed.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_encipherment and usage.key_cert_sign
    assert "PRIVATE" not in repr(first) and "private_key" not in repr(first)


def test_half_or_mismatched_identity_refused(tmp_path: Path) -> None:
    a = identity_keys.load_or_create(tmp_path / "a.key", tmp_path / "a.crt")
    identity_keys.load_or_create(tmp_path / "b.key", tmp_path / "b.crt")
    with pytest.raises(InvalidInput, match="does not match"):
        identity_keys.load(tmp_path / "a.key", tmp_path / "b.crt")
    with pytest.raises(InvalidInput, match="incomplete"):
        identity_keys.load_or_create(tmp_path / "a.key", tmp_path / "missing.crt")
    (tmp_path / "junk.key").write_text("junk")
    with pytest.raises(InvalidInput, match="cannot be loaded"):
        identity_keys.load(tmp_path / "junk.key", tmp_path / "a.crt")
    assert a.party_id and len(a.party_id) == 52


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("u", ("u", "", None, None)),
        ("u/p", ("u", "p", None, None)),
        ("u/p/1/2", ("u", "p", 1, 2)),
        ("u/p//9", ("u", "p", None, None)),  # an empty component ends parsing
    ],
)
def test_resource_uri(uri: str, expected: tuple[object, ...]) -> None:
    r = parse_resource_uri(uri)
    assert (r.data_uuid, r.partition_id, r.segment_id, r.shard_id) == expected


@pytest.mark.parametrize("uri", ["", "/p", "u/p/x", "u/p/1/-2", "u/p/4294967296", "x" * 600])
def test_resource_uri_refused(uri: str) -> None:
    with pytest.raises(CMError) as err:
        parse_resource_uri(uri)
    assert err.value.code == 3


def test_error_messages_round_trip() -> None:
    for kind in Kind:
        err = CMError(kind, "detail")
        assert err.message.startswith(f"err code: {kind.text}; err detail: detail")
        assert kind_of_message(err.message) is kind
    assert kind_of_message("err: not all ancestors are voting") is None  # compat testdata form
    assert {k.code for k in Kind} == {2, 3, 7, 12, 13}
