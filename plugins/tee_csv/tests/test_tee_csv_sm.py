"""SM3 and SM2 verification on the published vectors (expected.json -> sm2_vectors)."""

from __future__ import annotations

from typing import Any

import pytest
from gmssl.sm2 import CryptSM2, default_ecc_table

from trustflow_tee_csv.sm import SM2_CURVE, Curve, hmac_sm3, sm2_engine, sm2_verify, sm2_z, sm3

ENGINES = [
    "gmssl",
    pytest.param(
        "openssl",
        marks=pytest.mark.skipif(
            sm2_engine() != "openssl", reason="no libcrypto with SM2 on this host"
        ),
    ),
]

DEFAULT_LIBRARY_ID = b"1234567812345678"


def h(value: str) -> int:
    return int(value, 16)


def by_name(vectors: list[dict[str, Any]], word: str) -> dict[str, Any]:
    return next(v for v in vectors if word in v["name"])


@pytest.fixture
def gbt(sm2_vectors):
    return by_name(sm2_vectors, "Annex A")


@pytest.fixture
def gbt_curve(gbt) -> Curve:
    c = gbt["curve"]
    return Curve(h(c["p"]), h(c["a"]), h(c["b"]), h(c["gx"]), h(c["gy"]), h(c["n"]))


@pytest.fixture
def hrk_vector(sm2_vectors):
    return by_name(sm2_vectors, "HRK self-signature")


def test_sm3_gbt_32905_example(sm2_vectors):
    vector = by_name(sm2_vectors, "SM3 sanity")
    assert sm3(vector["message_ascii"].encode()).hex() == vector["sm3"]


def test_csv_request_hash_vector(sm2_vectors):
    vector = by_name(sm2_vectors, "request hash")
    data = bytes.fromhex(vector["data"]) + bytes.fromhex(vector["mnonce"])
    assert sm3(data).hex() == vector["hash"]


def test_hmac_sm3_is_rfc2104_over_sm3():
    # Cross-check the OpenSSL HMAC against the RFC 2104 construction written out with SM3.
    key, msg = b"k" * 16, b"message"
    block = key.ljust(64, b"\0")
    inner = sm3(bytes(b ^ 0x36 for b in block) + msg)
    assert hmac_sm3(key, msg) == sm3(bytes(b ^ 0x5C for b in block) + inner)


def test_gbt_32918_annex_a_z_and_signature(gbt, gbt_curve):
    x, y = h(gbt["pub_x"]), h(gbt["pub_y"])
    user_id = gbt["id_ascii"].encode()
    message = gbt["message_ascii"].encode()
    assert sm2_z(user_id, x, y, gbt_curve).hex() == gbt["za"]
    assert sm3(sm2_z(user_id, x, y, gbt_curve) + message).hex() == gbt["e"]
    assert sm2_verify(x, y, user_id, message, h(gbt["r"]), h(gbt["s"]), gbt_curve)


def test_gbt_signature_rejects_changes(gbt, gbt_curve):
    x, y = h(gbt["pub_x"]), h(gbt["pub_y"])
    user_id, message = gbt["id_ascii"].encode(), gbt["message_ascii"].encode()
    r, s = h(gbt["r"]), h(gbt["s"])
    assert not sm2_verify(x, y, user_id, message + b"!", r, s, gbt_curve)
    assert not sm2_verify(x, y, b"BOB", message, r, s, gbt_curve)
    assert not sm2_verify(x, y, user_id, message, r ^ 1, s, gbt_curve)
    assert not sm2_verify(x, y, user_id, message, r, s ^ 1, gbt_curve)
    assert not sm2_verify(x, y ^ 1, user_id, message, r, s, gbt_curve)  # off the curve


@pytest.mark.parametrize("engine", ENGINES)
def test_hygon_hrk_vector_needs_the_hygon_id(hrk_vector, vectors, engine):
    hrk = (vectors / "csv-rs" / "hrk.cert").read_bytes()
    message = hrk[:576]
    assert sm3(message).hex() == hrk_vector["message_sm3"]
    x, y = h(hrk_vector["pub_x"]), h(hrk_vector["pub_y"])
    user_id = hrk_vector["id_ascii"].encode()
    assert sm2_z(user_id, x, y).hex() == hrk_vector["za"]
    r, s = h(hrk_vector["r"]), h(hrk_vector["s"])
    assert sm2_verify(x, y, user_id, message, r, s, engine=engine)
    assert not sm2_verify(x, y, DEFAULT_LIBRARY_ID, message, r, s, engine=engine)
    assert not sm2_verify(x, y, user_id, message[:-1], r, s, engine=engine)


def test_gmssl_default_id_pitfall_is_real(hrk_vector, vectors):
    """gmssl's own verify_with_sm3 uses the default ID and so rejects genuine Hygon data."""
    message = (vectors / "csv-rs" / "hrk.cert").read_bytes()[:576]
    engine = CryptSM2(private_key=None, public_key="")
    engine.public_key = hrk_vector["pub_x"] + hrk_vector["pub_y"]
    assert not engine.verify_with_sm3(hrk_vector["r"] + hrk_vector["s"], message)


@pytest.mark.parametrize(
    ("r", "s"),
    [(0, 1), (1, 0), (SM2_CURVE.n, 1), (1, SM2_CURVE.n), (1, SM2_CURVE.n - 1)],
)
@pytest.mark.parametrize("engine", ENGINES)
def test_out_of_range_signatures_are_rejected(hrk_vector, r, s, engine):
    x, y = h(hrk_vector["pub_x"]), h(hrk_vector["pub_y"])
    assert not sm2_verify(x, y, b"HYGON-SSD-HRK", b"m", r, s, engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_keys_whose_hex_starts_with_04_work(engine):
    """gmssl's constructor lstrip("04")-s public keys; sm2_verify must not be affected.
    Private key 11 gives a public x whose hex starts with "04"."""
    engine = CryptSM2(private_key=f"{11:064x}", public_key="")
    public = engine._kg(11, default_ecc_table["g"])
    assert public.startswith("04")
    x, y = h(public[:64]), h(public[64:])
    message, user_id = b"hello", b"HYGON-SSD-PEK"
    e = sm3(sm2_z(user_id, x, y) + message)
    signature = engine.sign(e, f"{0x1234567:064x}")
    r, s = h(signature[:64]), h(signature[64:])
    assert sm2_verify(x, y, user_id, message, r, s, engine=engine)
    assert not sm2_verify(x, y, user_id, message + b".", r, s, engine=engine)


@pytest.mark.skipif(sm2_engine() != "openssl", reason="no libcrypto with SM2 on this host")
def test_engines_agree_on_the_real_chain(vectors):
    """Both engines accept the genuine HSK signature and reject every one-bit change of its
    signed bytes at a spread of positions."""
    hsk = (vectors / "csv-rs" / "hsk.cert").read_bytes()
    from trustflow_tee_csv.chain import HRK
    from trustflow_tee_csv.structs import CaCert

    cert = CaCert.parse(hsk, "HSK")
    for position in [None, *range(0, 576, 37)]:
        signed = bytearray(cert.signed)
        if position is not None:
            signed[position] ^= 0x01
        results = {
            engine: sm2_verify(
                HRK.x, HRK.y, HRK.user_id, bytes(signed), cert.r, cert.s, engine=engine
            )
            for engine in ("gmssl", "openssl")
        }
        assert results == {"gmssl": position is None, "openssl": position is None}, position


def test_openssl_engine_cannot_take_other_curves(gbt, gbt_curve):
    x, y = h(gbt["pub_x"]), h(gbt["pub_y"])
    with pytest.raises(RuntimeError):
        sm2_verify(x, y, b"A", b"m", h(gbt["r"]), h(gbt["s"]), gbt_curve, engine="openssl")


def test_openssl_self_test_refuses_broken_engines():
    from trustflow_tee_csv import _openssl

    assert not _openssl._self_test(lambda *args: True)
    assert not _openssl._self_test(lambda *args: False)
