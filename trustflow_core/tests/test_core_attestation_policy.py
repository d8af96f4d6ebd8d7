"""Policy parsing and matching shared by every verifier
(docs/compat.md#attributes-match-any-entry)."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from trustflow_core.attestation import (
    Attributes,
    Policy,
    Report,
    match_policy,
    public_key_binding,
    public_key_digest,
    ra_user_data,
)
from trustflow_core.errors import InvalidInput, VerificationError

ACTUAL = Attributes(
    str_tee_platform="TDX",
    hex_boot_measurement="ab" * 48,
    hex_ta_measurement="cd" * 48,
    str_min_isvsvn="7",
    bool_debug_disabled="true",
    hex_user_data="11" * 32,
    hex_hash_or_pem_pubkey=hashlib.sha256(b"-----PEM-----").hexdigest(),
)


def policy(*entries: dict[str, str], allow_simulation: bool = False) -> Policy:
    return Policy.from_dict(
        {"main_attributes": list(entries), "allow_simulation": allow_simulation}
    )


def test_equality_is_case_insensitive():
    match_policy(ACTUAL, policy({"str_tee_platform": "tdx", "hex_ta_measurement": "CD" * 48}))


def test_empty_policy_fields_are_not_compared():
    match_policy(ACTUAL, policy({"str_tee_platform": "TDX", "hex_signer": ""}))


def test_a_mismatch_names_field_expected_and_actual():
    with pytest.raises(VerificationError) as info:
        match_policy(ACTUAL, policy({"hex_boot_measurement": "00" * 48}))
    assert info.value.check == "policy"
    assert "hex_boot_measurement" in str(info.value)
    assert "00" * 48 in str(info.value) and "ab" * 48 in str(info.value)


def test_some_entry_matching_is_enough_even_after_a_string_mismatch():
    # Upstream stops at the first string mismatch (docs/compat.md#attributes-match-any-entry); we
    # try every entry.
    match_policy(
        ACTUAL,
        policy({"hex_ta_measurement": "ff" * 48}, {"hex_ta_measurement": "cd" * 48}),
    )


def test_every_entry_failing_reports_each():
    with pytest.raises(VerificationError, match=r"#0: .*\| #1: "):
        match_policy(ACTUAL, policy({"hex_signer": "aa"}, {"hex_prod_id": "bb"}))


def test_empty_policy_is_rejected():
    with pytest.raises(VerificationError, match="no main_attributes"):
        match_policy(ACTUAL, Policy())


@pytest.mark.parametrize(("want", "ok"), [("7", True), ("6", True), ("8", False), ("x", False)])
def test_min_isvsvn_is_a_numeric_lower_bound(want, ok):
    p = policy({"str_min_isvsvn": want})
    if ok:
        match_policy(ACTUAL, p)
    else:
        with pytest.raises(VerificationError, match="str_min_isvsvn"):
            match_policy(ACTUAL, p)


@pytest.mark.parametrize(("want", "ok"), [("1", True), ("TRUE", True), ("false", False)])
def test_debug_disabled_is_boolean(want, ok):
    p = policy({"bool_debug_disabled": want})
    if ok:
        match_policy(ACTUAL, p)
    else:
        with pytest.raises(VerificationError, match="bool_debug_disabled"):
            match_policy(ACTUAL, p)


def test_pem_pubkey_policy_value_is_hashed_like_upstream():
    match_policy(ACTUAL, policy({"hex_hash_or_pem_pubkey": "-----PEM-----"}))
    with pytest.raises(VerificationError, match="hex_hash_or_pem_pubkey"):
        match_policy(ACTUAL, policy({"hex_hash_or_pem_pubkey": "-----OTHER-----"}))


def _ec_public_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_pem_pubkey_binding_accepts_any_formatting_of_the_same_key_and_the_hex_digest():
    pem = _ec_public_pem()
    bound = dataclasses.replace(ACTUAL, hex_hash_or_pem_pubkey=public_key_digest(pem).hex())
    assert public_key_digest(pem) == hashlib.sha256(pem).digest()  # canonical = openssl's
    reformatted = pem.decode().replace("\n", "\r\n").rstrip()  # CRLF, no final newline
    for value in (pem.decode(), reformatted, public_key_digest(pem).hex().upper()):
        match_policy(bound, policy({"hex_hash_or_pem_pubkey": value}))
    other = _ec_public_pem().decode()
    with pytest.raises(VerificationError, match="hex_hash_or_pem_pubkey"):
        match_policy(bound, policy({"hex_hash_or_pem_pubkey": other}))
    unbound = dataclasses.replace(ACTUAL, hex_hash_or_pem_pubkey="00" * 32)
    with pytest.raises(VerificationError, match="hex_hash_or_pem_pubkey"):
        match_policy(unbound, policy({"hex_hash_or_pem_pubkey": pem.decode()}))


def test_public_key_binding_setting(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    assert public_key_binding(None, "x") == bytes(32)
    pem = _ec_public_pem()
    path = tmp_path / "key.pem"
    path.write_bytes(pem.replace(b"\n", b"\r\n"))
    assert public_key_binding(str(path), "x") == hashlib.sha256(pem).digest()
    private = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(private)
    with pytest.raises(InvalidInput, match="not a private key"):
        public_key_binding(str(path), "x")
    path.write_bytes(b"not pem")
    with pytest.raises(InvalidInput, match="not a PEM public key"):
        public_key_binding(str(path), "x")
    with pytest.raises(InvalidInput, match="cannot read"):
        public_key_binding(str(tmp_path / "absent.pem"), "x")


def test_with_user_data_adds_the_binding_to_every_entry():
    p = policy({"str_tee_platform": "TDX"}, {"hex_ta_measurement": "cd" * 48})
    bound = p.with_user_data(bytes.fromhex("11" * 32))
    match_policy(ACTUAL, bound)
    with pytest.raises(VerificationError, match="hex_user_data"):
        match_policy(ACTUAL, p.with_user_data(b"\x22" * 32))
    assert Policy().with_user_data(b"\x11" * 32).main_attributes[0].hex_user_data == "11" * 32
    assert Policy().with_user_data(b"\x11").main_attributes[0].hex_user_data == "11" + "00" * 31
    with pytest.raises(InvalidInput, match="at most 32"):
        Policy().with_user_data(b"\x11" * 33)


def test_policy_parsing_is_strict():
    with pytest.raises(InvalidInput, match="unknown field"):
        Policy.from_dict({"main_attributes": [], "allow_sim": True})
    with pytest.raises(InvalidInput, match="unknown field"):
        Policy.from_dict({"main_attributes": [{"hex_mrenclave": "00"}]})
    with pytest.raises(InvalidInput, match="true or false"):
        Policy.from_dict({"allow_simulation": "yes"})
    # upstream policies carry pem_public_key / nested_policies, which verifiers ignore
    Policy.from_dict({"pem_public_key": "", "nested_policies": None, "main_attributes": []})


def test_report_round_trips_wire_json_and_rejects_unknown_fields():
    report = Report(str_tee_platform="TDX", json_report='{"b64_quote":"AA=="}')
    assert Report.from_dict(report.to_dict()) == report
    assert "json_nested_reports" not in report.to_dict()
    with pytest.raises(InvalidInput, match="unknown field"):
        Report.from_dict({**report.to_dict(), "extra": "1"})
    with pytest.raises(InvalidInput, match="str_tee_platform"):
        Report.from_dict({"json_report": "{}"})


def test_ra_user_data_is_sha256_of_cert_dot_suffix():
    assert ra_user_data(b"CERT", b"nonce") == hashlib.sha256(b"CERT.nonce").digest()
