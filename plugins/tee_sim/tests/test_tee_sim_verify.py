"""What the sim verifier proves and rejects (docs/compat.md#sim-report-omitted, README "Report
format")."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from trustflow_core.attestation import Attributes, Policy, Report
from trustflow_core.errors import VerificationError
from trustflow_core.testing.attestation import flipped

from trustflow_tee_sim.attester import SimAttester
from trustflow_tee_sim.keys import load_or_create_private_key
from trustflow_tee_sim.verifier import SimVerifier

USER_DATA = b"sim verifier test"
MEASUREMENTS = ("hex_platform_measurement", "hex_boot_measurement", "hex_ta_measurement")


def padded_hex(data: bytes) -> str:
    return data.ljust(32, b"\0").hex()


def policy(*entries: Attributes, allow_simulation: bool = True) -> Policy:
    return Policy(entries or (Attributes(),), allow_simulation).with_user_data(
        USER_DATA.ljust(32, b"\0")
    )


# ---- building reports independently of the plugin's encoder ---------------------------------


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def split(report: Report) -> tuple[dict, str]:
    outer = json.loads(report.json_report)
    return json.loads(outer["json_body"]), outer["hex_signature"]


def signed(report: Report, body_json: str, key: ec.EllipticCurvePrivateKey) -> Report:
    """``report`` with ``body_json`` (any text) signed by ``key`` as the README describes."""
    r, s = decode_dss_signature(key.sign(body_json.encode(), ec.ECDSA(hashes.SHA256())))
    signature = (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()
    outer = canonical({"hex_signature": signature, "json_body": body_json})
    return dataclasses.replace(report, json_report=outer)


def with_body(report: Report, body: dict, signature: str) -> Report:
    outer = canonical({"hex_signature": signature, "json_body": canonical(body)})
    return dataclasses.replace(report, json_report=outer)


def pem_of(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest_asyncio.fixture
async def report(attester: SimAttester) -> Report:
    return await attester.generate(USER_DATA)


@pytest.fixture
def platform_key(report, sim_dir) -> ec.EllipticCurvePrivateKey:
    return load_or_create_private_key(sim_dir / "platform_key.pem")


async def rejection(verifier, report, pol=None, **kwargs) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        await verifier.verify(report, pol or policy(), **kwargs)
    return info.value


# ---- positive ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_report_verifies_with_allow_simulation(verifier, report):
    verified = await verifier.verify(report, policy(Attributes(str_tee_platform="SIM")))
    assert verified.simulated
    assert verified.user_data == USER_DATA.ljust(32, b"\0")
    assert verified.attributes.str_tee_platform == "SIM"
    assert verified.attributes.bool_debug_disabled == "true"


@pytest.mark.asyncio
async def test_report_follows_the_documented_format(verifier, report, platform_key):
    body, signature = split(report)
    assert report.str_report_version == "1.0" and report.str_report_type == "Passport"
    assert body["str_tee_platform"] == "SIM" and body["str_format"] == "trustflow-sim/1"
    assert body["hex_user_data"] == padded_hex(USER_DATA)
    assert body["hex_hash_or_pem_pubkey"] == "00" * 32
    assert body["pem_platform_public_key"] == pem_of(platform_key)
    raw = bytes.fromhex(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    platform_key.public_key().verify(
        der, canonical(body).encode(), ec.ECDSA(hashes.SHA256())
    )  # raises if the signature is not over the canonical body


@pytest.mark.asyncio
async def test_default_measurements_are_the_documented_label_hashes(verifier, report):
    expected = {
        "hex_platform_measurement": hashlib.sha384(b"trustflow-sim platform measurement v1"),
        "hex_boot_measurement": hashlib.sha384(b"trustflow-sim boot measurement v1"),
        "hex_ta_measurement": hashlib.sha256(b"trustflow-sim ta measurement v1"),
    }
    pinned = Attributes(**{name: h.hexdigest() for name, h in expected.items()})
    attributes = (await verifier.verify(report, policy(pinned))).attributes
    for name, digest in expected.items():
        assert getattr(attributes, name) == digest.hexdigest()


@pytest.mark.asyncio
async def test_configured_measurements_and_debug_flag_are_reported(verifier):
    settings = {
        "measurements": {"hex_boot_measurement": "AB" * 48, "hex_ta_measurement": "01"},
        "debug": True,
    }
    report = await SimAttester.from_settings(settings).generate(USER_DATA)
    attributes = (await verifier.verify(report, policy())).attributes
    assert attributes.hex_boot_measurement == "ab" * 48
    assert attributes.hex_ta_measurement == "01"
    assert attributes.bool_debug_disabled == "false"
    error = await rejection(verifier, report, policy(Attributes(bool_debug_disabled="1")))
    assert error.check == "policy" and "bool_debug_disabled" in error.detail


@pytest.mark.asyncio
async def test_explicitly_trusted_keys_as_pem_text_and_path(tmp_path):
    key_file = tmp_path / "other" / "key.pem"
    report = await SimAttester.from_settings({"platform_key_file": str(key_file)}).generate(
        USER_DATA
    )
    pem = pem_of(load_or_create_private_key(key_file))
    (tmp_path / "pub.pem").write_text(pem)
    for trusted in ([pem], [str(tmp_path / "pub.pem")], [str(key_file)]):
        verifier = SimVerifier.from_settings({"trusted_platform_keys": trusted})
        assert (await verifier.verify(report, policy())).simulated
    verifier = SimVerifier.from_settings({"platform_key_file": str(key_file)})
    assert (await verifier.verify(report, policy())).simulated


# ---- core rules applied to sim reports ---------------------------------------------------------


@pytest.mark.asyncio
async def test_rejected_without_allow_simulation(verifier, report):
    error = await rejection(verifier, report, policy(allow_simulation=False))
    assert error.check == "simulation"


@pytest.mark.asyncio
async def test_user_data_mismatch_is_rejected(verifier, report):
    other = Policy((Attributes(),), allow_simulation=True).with_user_data(b"\x01" * 32)
    error = await rejection(verifier, report, other)
    assert error.check == "policy" and "hex_user_data" in error.detail


@pytest.mark.asyncio
@pytest.mark.parametrize("name", MEASUREMENTS)
async def test_measurement_mismatch_is_rejected(verifier, report, name):
    error = await rejection(verifier, report, policy(Attributes(**{name: "00" * 32})))
    assert error.check == "policy" and name in error.detail


@pytest.mark.asyncio
@pytest.mark.parametrize("platform", ["TDX", "SGX_DCAP", "CSV", "sim", "Sim", ""])
async def test_wrong_platform_string_is_rejected(verifier, report, platform):
    error = await rejection(verifier, dataclasses.replace(report, str_tee_platform=platform))
    assert error.check == "platform"


# ---- tampering ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_every_flipped_bit_of_json_report_is_rejected(verifier, report):
    await verifier.verify(report, policy())
    masks = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40)
    accepted, count = [], 0
    for data in flipped(report.json_report.encode(), masks):
        count += 1
        tampered = dataclasses.replace(report, json_report=data.decode())
        try:
            await verifier.verify(tampered, policy())
        except VerificationError:
            continue
        accepted.append(data)
    assert count == 7 * len(report.json_report)
    assert not accepted


@pytest.mark.asyncio
async def test_changed_field_values_break_the_signature(verifier, report):
    body, signature = split(report)
    for name, value in body.items():
        if name in ("str_tee_platform", "str_format", "pem_platform_public_key"):
            continue  # checked before the signature; see the format tests
        if name == "bool_debug_disabled":
            changed = "false"
        elif name == "str_timestamp":
            changed = "2000-01-01T00:00:00Z"
        else:
            changed = ("1" if value[0] == "0" else "0") + value[1:]
        error = await rejection(verifier, with_body(report, {**body, name: changed}, signature))
        assert error.check == "signature", name


@pytest.mark.asyncio
async def test_every_signature_byte_matters(verifier, report):
    body, signature = split(report)
    raw = bytes.fromhex(signature)
    for data in flipped(raw, (0x01, 0x80)):
        error = await rejection(verifier, with_body(report, body, data.hex()))
        assert error.check == "signature"


@pytest.mark.asyncio
async def test_report_signed_by_an_untrusted_key_is_rejected(verifier, report, tmp_path):
    # A well-formed report from another sim installation (its own self-made key).
    other_attester = SimAttester.from_settings({"platform_key_file": str(tmp_path / "other.pem")})
    foreign = await other_attester.generate(USER_DATA)
    error = await rejection(verifier, foreign)
    assert error.check == "platform_key"


@pytest.mark.asyncio
async def test_trusted_key_named_but_signed_by_another_key_is_rejected(verifier, report):
    body, _ = split(report)
    forger = ec.generate_private_key(ec.SECP256R1())
    error = await rejection(verifier, signed(report, canonical(body), forger))
    assert error.check == "signature"


@pytest.mark.asyncio
async def test_explicit_trust_list_excludes_the_local_key(report, tmp_path):
    other = ec.generate_private_key(ec.SECP256R1())
    verifier = SimVerifier.from_settings({"trusted_platform_keys": [pem_of(other)]})
    assert (await rejection(verifier, report)).check == "platform_key"


@pytest.mark.asyncio
async def test_without_a_local_key_nothing_is_trusted(verifier, sim_dir, tmp_path):
    attester = SimAttester.from_settings({"platform_key_file": str(tmp_path / "other.pem")})
    report = await attester.generate(USER_DATA)
    error = await rejection(verifier, report)
    assert error.check == "platform_key" and "does not exist" in error.detail
    assert not (sim_dir / "platform_key.pem").exists()  # the verifier creates no key


@pytest.mark.asyncio
async def test_one_verifier_follows_a_replaced_platform_key_file(verifier, sim_dir):
    """The parsed key file is cached, but a new key in the file is what gets trusted next."""
    old_report = await SimAttester.from_settings({}).generate(USER_DATA)
    await verifier.verify(old_report, policy())
    key_file = sim_dir / "platform_key.pem"
    replacement = key_file.with_name("new.pem")
    load_or_create_private_key(replacement)
    replacement.replace(key_file)
    new_report = await SimAttester.from_settings({}).generate(USER_DATA)
    assert (await rejection(verifier, old_report)).check == "platform_key"
    await verifier.verify(new_report, policy())
    key_file.unlink()
    assert "does not exist" in (await rejection(verifier, new_report)).detail


# ---- strict format (signed correctly by the trusted key, but malformed) -------------------------


@pytest.mark.asyncio
async def test_non_canonical_body_is_rejected(verifier, report, platform_key):
    body, _ = split(report)
    for text in (json.dumps(body, sort_keys=True), json.dumps(body), canonical(body) + " "):
        error = await rejection(verifier, signed(report, text, platform_key))
        assert error.check == "format" and "canonical" in error.detail


@pytest.mark.asyncio
async def test_non_canonical_outer_json_is_rejected(verifier, report):
    outer = json.loads(report.json_report)
    for text in (json.dumps(outer), json.dumps(outer, sort_keys=True, indent=1)):
        error = await rejection(verifier, dataclasses.replace(report, json_report=text))
        assert error.check == "format"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hex_user_data": "00" * 31}, "hex_user_data"),
        ({"hex_user_data": "AB" * 32}, "hex_user_data"),
        ({"hex_hash_or_pem_pubkey": ""}, "hex_hash_or_pem_pubkey"),
        ({"hex_ta_measurement": "abc"}, "hex_ta_measurement"),
        ({"hex_boot_measurement": "00" * 65}, "hex_boot_measurement"),
        ({"hex_platform_measurement": ""}, "hex_platform_measurement"),
        ({"bool_debug_disabled": "1"}, "bool_debug_disabled"),
        ({"str_timestamp": "2024-02-30T00:00:00Z"}, "str_timestamp"),
        ({"str_timestamp": "2024-01-01 00:00:00"}, "str_timestamp"),
        ({"str_format": "trustflow-sim/2"}, "str_format"),
        ({"pem_platform_public_key": "not a key"}, "pem_platform_public_key"),
        ({"extra": "x"}, "extra"),
        ({"hex_user_data": None}, "hex_user_data"),
        ({"hex_user_data": 1}, "hex_user_data"),
    ],
)
async def test_malformed_fields_are_named(verifier, report, platform_key, change, field):
    body, _ = split(report)
    body = {k: v for k, v in {**body, **change}.items() if v is not None}
    error = await rejection(verifier, signed(report, canonical(body), platform_key))
    assert error.check == "format"
    assert field in error.detail


@pytest.mark.asyncio
async def test_body_for_another_platform_is_rejected(verifier, report, platform_key):
    body, _ = split(report)
    forged = signed(report, canonical({**body, "str_tee_platform": "TDX"}), platform_key)
    assert (await rejection(verifier, forged)).check == "platform"


@pytest.mark.asyncio
async def test_key_on_another_curve_is_rejected(verifier, report, platform_key):
    body, _ = split(report)
    p384 = ec.generate_private_key(ec.SECP384R1())
    text = canonical({**body, "pem_platform_public_key": pem_of(p384)})
    forged = signed(report, text, platform_key)  # the key check comes before the signature
    error = await rejection(verifier, forged)
    assert error.check == "format" and "P-256" in error.detail


# ---- time --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_report_from_the_future_is_rejected(verifier, report):
    issued = datetime.strptime(split(report)[0]["str_timestamp"], "%Y-%m-%dT%H:%M:%SZ")
    issued = issued.replace(tzinfo=timezone.utc)
    await verifier.verify(report, policy(), now=issued - timedelta(minutes=4))  # clock skew
    error = await rejection(verifier, report, now=issued - timedelta(minutes=6))
    assert error.check == "timestamp"
    naive = (issued - timedelta(hours=1)).replace(tzinfo=None)  # naive = UTC
    assert (await rejection(verifier, report, now=naive)).check == "timestamp"


@pytest.mark.asyncio
async def test_max_age(report):
    issued = datetime.strptime(split(report)[0]["str_timestamp"], "%Y-%m-%dT%H:%M:%SZ")
    issued = issued.replace(tzinfo=timezone.utc)
    verifier = SimVerifier.from_settings({"max_age_seconds": 60})
    await verifier.verify(report, policy(), now=issued + timedelta(seconds=60))
    error = await rejection(verifier, report, now=issued + timedelta(seconds=61))
    assert error.check == "timestamp" and "older" in error.detail


@pytest.mark.asyncio
async def test_verified_time_is_the_verification_time(verifier, report):
    now = datetime.now(timezone.utc) + timedelta(hours=1)
    attributes = (await verifier.verify(report, policy(), now=now)).attributes
    assert attributes.str_verified_time == now.strftime("%Y-%m-%dT%H:%M:%SZ")
