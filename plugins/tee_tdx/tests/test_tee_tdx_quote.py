"""Quote parsing and the cryptographic checks (steps 1-7) on every bundled TDX quote."""

from __future__ import annotations

import struct
from datetime import timedelta

import pytest
from conftest import expected_tdx, quote_files, read, when
from trustflow_core.errors import VerificationError

from trustflow_tee_tdx import certs
from trustflow_tee_tdx.dcap import verify_quote_crypto
from trustflow_tee_tdx.quote import parse_quote

QUOTES = quote_files()


def crypto_time(name: str):
    """A time inside the PCK leaf's validity (the chain's other certificates outlive it)."""
    return when(expected_tdx()[name]["pck_leaf"]["not_before"].replace(" ", "T")) + timedelta(
        days=1
    )


@pytest.mark.parametrize("name", QUOTES)
def test_quote_fields_match_expected(name: str) -> None:
    want = expected_tdx()[name]
    quote = parse_quote(read(name))
    assert quote.version == want["version"]
    assert quote.length == want["quote_len"]
    assert quote.trailing == want["trailing_bytes"] == want["file_len"] - want["quote_len"]
    assert len(quote.signed) == want["signed_len"]
    if want["body_type"] is not None:
        assert quote.body_type == want["body_type"]
    assert quote.qe_vendor_id.hex() == want["qe_vendor_id"]
    assert quote.header[28:48].hex() == want["header_user_data"]
    assert quote.attestation_key.hex() == want["attestation_key"]
    assert quote.qe_auth_data.hex() == want["qe_auth_data"]
    for field, value in want["body"].items():
        got = getattr(quote.body, field)
        assert (got.hex() if got is not None else None) == value, field
    assert f"{quote.body.td_attributes_u64:#x}" == want["td_attributes_u64"]
    assert f"{quote.body.xfam_u64:#x}" == want["xfam_u64"]
    assert quote.body.debug == want["td_debug"]
    qe, raw = want["qe_report"], quote.qe_report.raw
    assert raw[0:16].hex() == qe["cpu_svn"]
    assert raw[16:20].hex() == qe["misc_select"]
    assert quote.qe_report.attributes.hex() == qe["attributes"]
    assert quote.qe_report.mr_enclave.hex() == qe["mr_enclave"]
    assert quote.qe_report.mr_signer.hex() == qe["mr_signer"]
    assert raw[256:258].hex() == qe["isv_prod_id"]
    assert raw[258:260].hex() == qe["isv_svn"]
    assert quote.qe_report.report_data.hex() == qe["report_data"]


@pytest.mark.parametrize("name", QUOTES)
def test_crypto_checks_pass_and_pck_extension_decodes(name: str) -> None:
    want = expected_tdx()[name]
    assert all(want["checks"].values())
    _, chain, pck, ca = verify_quote_crypto(read(name), crypto_time(name))
    leaf = want["pck_leaf"]
    assert ca == certs.PCK_CA_NAMES[leaf["issuer_cn"]]
    assert f"{chain[0].serial_number:#x}" == leaf["serial"]
    assert pck.fmspc.hex() == leaf["fmspc"]
    assert pck.pce_id.hex() == leaf["pceid"]
    assert pck.pce_svn == leaf["pcesvn"]
    assert pck.cpu_svn.hex() == leaf["cpusvn"]
    assert list(pck.sgx_tcb_components) == leaf["sgx_tcb_comp_svns"]
    assert chain[-1].fingerprint(certs.hashes.SHA256()).hex() == certs.INTEL_ROOT_SHA256


@pytest.mark.parametrize("name", QUOTES)
def test_every_byte_of_the_quote_is_protected(name: str) -> None:
    """Flipping any bit-0 of any byte of the quote proper (signed region, signature, attestation
    key, QE report and its signature, auth data, PCK chain, length fields) is rejected;
    trailing bytes are not part of the quote."""
    data = read(name)
    at = crypto_time(name)
    quote = parse_quote(data)
    accepted = []
    for i in range(quote.length):
        tampered = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
        try:
            verify_quote_crypto(tampered, at)
        except VerificationError:
            continue
        accepted.append(i)
    assert not accepted, f"{name}: flips accepted at {accepted[:10]}"
    junk = data[: quote.length] + b"\xff" * 5
    assert verify_quote_crypto(junk, at)[0].trailing == 5


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("tdx/dcap-qvl/tdx_quote", "quote_signature"),
        ("tdx/trustee/tdx_quote_5.dat", "quote_signature"),
    ],
)
def test_flip_names_the_failed_check(name: str, check: str) -> None:
    data = bytearray(read(name))
    quote = parse_quote(bytes(data))
    signed_len = len(quote.signed)
    data[signed_len - 1] ^= 0x80  # last REPORTDATA byte
    with pytest.raises(VerificationError) as info:
        verify_quote_crypto(bytes(data), crypto_time(name))
    assert info.value.check == check
    data = bytearray(read(name))
    qe_offset = signed_len + 4 + 64 + 64 + 2 + 4
    data[qe_offset + 10] ^= 0x01
    with pytest.raises(VerificationError) as info:
        verify_quote_crypto(bytes(data), crypto_time(name))
    assert info.value.check == "qe_report_signature"


def _with_header(data: bytes, fmt: str, offset: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(
    ("fmt", "offset", "value", "message"),
    [
        ("<H", 0, 3, "version"),
        ("<H", 0, 6, "version"),
        ("<H", 2, 3, "key type"),
        ("<I", 4, 0, "tee_type"),
        ("<I", 632, 10**6, "truncated"),
        ("<I", 632, 4000, "unexplained|truncated"),
    ],
)
def test_malformed_headers_are_format_errors(
    fmt: str, offset: int, value: int, message: str
) -> None:
    data = _with_header(read("tdx/dcap-qvl/tdx_quote"), fmt, offset, value)
    with pytest.raises(VerificationError, match=message) as info:
        parse_quote(data)
    assert info.value.check == "quote_format"


@pytest.mark.parametrize("size", [0, 1, 47, 48, 100, 631, 636, 700, 1000, 4935])
def test_truncated_quotes_are_format_errors(size: int) -> None:
    with pytest.raises(VerificationError) as info:
        parse_quote(read("tdx/dcap-qvl/tdx_quote")[:size])
    assert info.value.check == "quote_format"


def test_v5_body_descriptor_is_checked() -> None:
    data = read("tdx/trustee/tdx_quote_5.dat")
    for fmt, offset, value in (("<H", 48, 1), ("<H", 48, 4), ("<I", 50, 584)):
        with pytest.raises(VerificationError) as info:
            parse_quote(_with_header(data, fmt, offset, value))
        assert info.value.check == "quote_format"


def test_foreign_root_is_rejected() -> None:
    """A chain ending in another self-signed 'Intel SGX Root CA' is not trusted."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Intel SGX Root CA")])
    now = when("2025-07-01T00:00:00Z")
    fake_root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .sign(key, hashes.SHA256())
    )
    ders = certs.parse_pem_chain(parse_quote(read("tdx/dcap-qvl/tdx_quote")).pck_chain_pem, "x")
    with pytest.raises(VerificationError, match="pinned") as info:
        certs.verify_chain([*ders[:2], fake_root.public_bytes(Encoding.DER)], now, "pck_chain")
    assert info.value.check == "pck_chain"


def test_tdreport_vector_hashes() -> None:
    """The TDREPORT used by the fake ioctl: both SHA-384 hashes recompute."""
    import hashlib

    want = expected_tdx()["tdx/guest-components/tdx_report_1.bin"]
    report = read("tdx/guest-components/tdx_report_1.bin")
    assert hashlib.sha256(report).hexdigest() == want["sha256"]
    assert report[32:80] == hashlib.sha384(report[256:495]).digest()
    assert report[80:128] == hashlib.sha384(report[512:1024]).digest()
