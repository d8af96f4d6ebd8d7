"""The platform key file and the backends' settings."""

from __future__ import annotations

import json
import re
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from trustflow_core.errors import BackendUnavailable, InvalidInput

from trustflow_tee_sim import keys
from trustflow_tee_sim.attester import SimAttester
from trustflow_tee_sim.verifier import SimVerifier


def key_in(report) -> str:
    return json.loads(json.loads(report.json_report)["json_body"])["pem_platform_public_key"]


def test_default_key_file_location(monkeypatch, tmp_path, sim_dir):
    assert keys.default_key_file() == sim_dir / "platform_key.pem"
    monkeypatch.delenv("TRUSTFLOW_SIM_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert keys.default_key_file() == tmp_path / "xdg/trustflow/sim/platform_key.pem"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert keys.default_key_file() == tmp_path / "home/.local/share/trustflow/sim/platform_key.pem"


@pytest.mark.asyncio
async def test_key_is_created_on_first_use_with_mode_0600(attester, sim_dir):
    path = sim_dir / "platform_key.pem"
    assert not path.exists()  # building the attester creates nothing
    report = await attester.generate(b"x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(sim_dir.stat().st_mode) == 0o700
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert key_in(report) == keys.public_key_pem(key.public_key())
    assert [p.name for p in sim_dir.iterdir()] == ["platform_key.pem"]  # no temporary leftovers


@pytest.mark.asyncio
async def test_key_is_reused_by_later_attesters(sim_dir):
    first = await SimAttester.from_settings({}).generate(b"1")
    before = (sim_dir / "platform_key.pem").read_bytes()
    second = await SimAttester.from_settings({}).generate(b"2")
    assert key_in(first) == key_in(second)
    assert (sim_dir / "platform_key.pem").read_bytes() == before


def test_concurrent_first_use_agrees_on_one_key(tmp_path):
    path = tmp_path / "race" / "platform_key.pem"
    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda _: keys.load_or_create_private_key(path), range(16)))
    pems = {keys.public_key_pem(k.public_key()) for k in loaded}
    assert len(pems) == 1
    assert pems == {keys.public_key_pem(keys.load_private_key(path).public_key())}
    assert [p.name for p in path.parent.iterdir()] == ["platform_key.pem"]


@pytest.mark.parametrize(
    "content",
    [
        b"garbage",
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    ],
)
@pytest.mark.asyncio
async def test_bad_key_file_is_reported(tmp_path, content):
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(BackendUnavailable, match=str(path)):
        await SimAttester.from_settings({"platform_key_file": str(path)}).generate(b"x")


@pytest.mark.asyncio
async def test_unwritable_key_directory_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    attester = SimAttester.from_settings({"platform_key_file": str(blocker / "key.pem")})
    with pytest.raises(BackendUnavailable, match="sim platform key file"):
        await attester.generate(b"x")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"colour": "blue"}, "sim attester settings: unknown key(s) colour; known: debug, "),
        ({"measurements": {"hex_signer": "00"}}, "measurements: unknown key(s) hex_signer"),
        ({"measurements": {"hex_ta_measurement": "xyz"}}, "hex_ta_measurement"),
        ({"measurements": {"hex_ta_measurement": "0"}}, "hex_ta_measurement"),
        ({"measurements": {"hex_ta_measurement": "00" * 65}}, "hex_ta_measurement"),
        ({"measurements": {"hex_ta_measurement": 12}}, "hex_ta_measurement"),
        ({"measurements": ["x"]}, "measurements"),
        ({"debug": "yes"}, "debug"),
        ({"platform_key_file": ""}, "platform_key_file"),
    ],
)
def test_attester_settings_are_validated(settings, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        SimAttester.from_settings(settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"colour": "blue"}, "sim verifier settings: unknown key(s) colour; known: max_age"),
        ({"trusted_platform_keys": "one.pem"}, "trusted_platform_keys: expected a list"),
        ({"trusted_platform_keys": ["/does/not/exist.pem"]}, "cannot read"),
        ({"trusted_platform_keys": ["-----BEGIN PUBLIC KEY-----\nxx"]}, "not a PEM key"),
        ({"trusted_platform_keys": [""]}, "PEM text or paths"),
        ({"trusted_platform_keys": [], "platform_key_file": "k.pem"}, "give trusted"),
        ({"max_age_seconds": 0}, "max_age_seconds"),
        ({"max_age_seconds": True}, "max_age_seconds"),
        ({"max_age_seconds": "60"}, "max_age_seconds"),
    ],
)
def test_verifier_settings_are_validated(settings, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        SimVerifier.from_settings(settings)


def test_trusted_key_must_be_p256():
    pem = keys.public_key_pem(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(InvalidInput, match="P-256"):
        SimVerifier.from_settings({"trusted_platform_keys": [pem]})


def test_backends_take_no_settings_by_default():
    assert isinstance(SimAttester.from_settings(None), SimAttester)
    assert isinstance(SimVerifier.from_settings({}), SimVerifier)
