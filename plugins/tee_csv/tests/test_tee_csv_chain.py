"""Certificate and report parsing and the HRK -> HSK -> CEK -> PEK -> report chain on the
bundled csv-rs data, with every value compared to expected.json."""

from __future__ import annotations

import dataclasses

import pytest
from trustflow_core.errors import VerificationError

from trustflow_tee_csv import chain
from trustflow_tee_csv.structs import CaCert, CsvCert, CsvReport, xor_words


def be(value: int) -> str:
    return f"{value:064x}"


@pytest.fixture(scope="module")
def certs(vectors):
    d = vectors / "csv-rs"
    return {name: (d / f"{name}.cert").read_bytes() for name in ("hrk", "hsk", "cek", "hsk_cek")}


def check_ca(cert: CaCert, want: dict) -> None:
    assert cert.version == want["version"]
    assert cert.key_usage == int(want["usage"], 16)
    assert cert.key.user_id.decode() == want["uid"]
    assert (be(cert.key.x), be(cert.key.y)) == (want["pub_x"], want["pub_y"])
    assert (cert.key_id.hex(), cert.certifying_id.hex()) == (want["key_id"], want["certifying_id"])
    assert (be(cert.r), be(cert.s)) == (want["sig_r"], want["sig_s"])


def check_csv(cert: CsvCert, want: dict) -> None:
    assert cert.version == want["version"]
    assert f"{cert.api_major}.{cert.api_minor}" == want["api"]
    assert cert.usage == int(want["usage"], 16) and cert.algo == want["pubkey_algo"]
    assert cert.key.user_id.decode() == want["uid"]
    assert (be(cert.key.x), be(cert.key.y)) == (want["pub_x"], want["pub_y"])
    assert cert.sid.hex() == want["sid"]
    for sig, want_sig in zip(cert.sigs, want["sigs"], strict=True):
        assert (sig.usage, sig.algo) == (int(want_sig["usage"], 16), want_sig["algo"])
        assert (be(sig.r), be(sig.s)) == (want_sig["r"], want_sig["s"])


def test_certificates_parse_to_the_documented_values(certs, expected):
    check_ca(CaCert.parse(certs["hrk"], "HRK"), expected["csv/csv-rs/hrk.cert"])
    check_ca(CaCert.parse(certs["hsk"], "HSK"), expected["csv/csv-rs/hsk.cert"])
    check_csv(CsvCert.parse(certs["cek"], "CEK"), expected["csv/csv-rs/cek.cert"])
    assert certs["hsk_cek"] == certs["hsk"] + certs["cek"]
    assert chain.split_hsk_cek(certs["hsk_cek"]) == (certs["hsk"], certs["cek"])


def test_report_parses_to_the_documented_values(report_raw, report_expected):
    want = report_expected
    report = CsvReport.parse(report_raw)
    assert len(report_raw) == want["len"]
    assert report.anonce == int(want["anonce"], 16)
    for name in ("user_pubkey_digest", "vm_id", "vm_version", "mnonce", "measure"):
        assert getattr(report, name).hex() == want[name], name
    assert report.user_data.hex() == want["report_data"]
    assert report.policy == int(want["policy"], 16)
    assert (report.sig_usage, report.sig_algo) == (
        int(want["sig_usage"], 16),
        int(want["sig_algo"], 16),
    )
    assert report.chip_id == want["chip_id"]
    assert (be(report.r), be(report.s)) == (want["report_sig_r"], want["report_sig_s"])
    assert report.pek_masked
    check_csv(CsvCert.parse(report.pek_raw, "PEK"), want["pek"])
    assert report.reserved2.hex() == want["reserved2"] and report.mac.hex() == want["mac"]


def test_pinned_root_is_the_bundled_hrk(certs, expected):
    hrk = chain.verify_hrk(certs["hrk"])
    assert (be(chain.HRK.x), be(chain.HRK.y)) == (
        expected["csv/csv-rs/hrk.cert"]["pub_x"],
        expected["csv/csv-rs/hrk.cert"]["pub_y"],
    )
    assert hrk.key_id == chain.HRK_KEY_ID


def test_full_chain_verifies(certs, report_raw):
    endorsement = chain.ChainCache().endorsement(certs["hsk"], certs["cek"])
    report = CsvReport.parse(report_raw)
    pek = chain.verify_pek(report.pek_raw, endorsement.cek)
    chain.check_report(report, pek)
    assert chain.mac_status(report) == "verified"
    chain.check_mac(report)


def test_mac_covers_reserved2_so_zeroing_it_makes_the_mac_uncheckable(report_raw, report_expected):
    """What upstream and csv-rs do (check the MAC in the guest, then zero reserved2) leaves a
    MAC nobody can recompute; a verifier must neither fail such a report nor call it checked.
    A firmware that itself wrote zeros there still gets its MAC checked."""
    from trustflow_tee_csv.attester import zero_reserved2
    from trustflow_tee_csv.sm import hmac_sm3
    from trustflow_tee_csv.structs import OFF_MAC, OFF_PEK, OFF_RESERVED2

    assert any(bytes.fromhex(report_expected["reserved2"]))
    zeroed = zero_reserved2(report_raw)
    assert zeroed[OFF_RESERVED2:OFF_MAC] == bytes(32) and len(zeroed) == len(report_raw)
    assert zeroed[:OFF_RESERVED2] == report_raw[:OFF_RESERVED2]
    assert zeroed[OFF_MAC:] == report_raw[OFF_MAC:]
    report = CsvReport.parse(zeroed)
    with pytest.raises(VerificationError):
        chain.check_mac(report)  # the MAC really covers reserved2
    assert chain.mac_status(report).startswith("not checkable: reserved2 was zeroed")
    mnonce = bytes.fromhex(report_expected["mnonce"])
    remaced = zeroed[:OFF_MAC] + hmac_sm3(mnonce, zeroed[OFF_PEK:OFF_MAC])
    assert chain.mac_status(CsvReport.parse(remaced)) == "verified"
    swapped = bytearray(remaced)
    swapped[OFF_PEK + 100] ^= 1  # a PEK swapped after the fact is not "verified"
    assert chain.mac_status(CsvReport.parse(bytes(swapped))) != "verified"


def test_report_signature_is_over_the_masked_bytes(certs, report_raw):
    report = CsvReport.parse(report_raw)
    pek = chain.verify_pek(report.pek_raw, CsvCert.parse(certs["cek"], "CEK"))
    demasked = report_raw[:32] + xor_words(report_raw[32:180], report.anonce)
    with pytest.raises(VerificationError) as info:
        chain.check_report(dataclasses.replace(report, raw=demasked + report_raw[180:]), pek)
    assert info.value.check == "report_signature"


def test_each_link_uses_the_signers_usage_slot(certs, report_raw):
    """The PEK's OCA slot (usage 0x1001) is not accepted in place of the CEK slot."""
    report = CsvReport.parse(report_raw)
    cek = CsvCert.parse(certs["cek"], "CEK")
    pek_raw = bytearray(report.pek_raw)
    pek_raw[1044:1048] = (0x1001).to_bytes(4, "little")  # sig1 now claims the OCA
    with pytest.raises(VerificationError) as info:
        chain.verify_pek(bytes(pek_raw), cek)
    assert info.value.check == "pek" and "0x1004" in info.value.detail


@pytest.mark.parametrize(
    ("link", "check"),
    [("hsk_as_cek", "format"), ("cek_under_hrk_id", "cek"), ("hrk_as_hsk", "hsk")],
)
def test_wrong_links_are_rejected(certs, link, check):
    cache = chain.ChainCache()
    with pytest.raises(VerificationError) as info:
        if link == "hsk_as_cek":
            cache.endorsement(certs["hsk"], certs["hsk"])
        elif link == "cek_under_hrk_id":
            chain.verify_cek(certs["cek"], CaCert.parse(certs["hrk"], "HRK"))
        else:
            cache.endorsement(certs["hrk"], certs["cek"])
    assert info.value.check == check


def test_slot_with_high_bytes_is_malformed(certs):
    bad = bytearray(certs["hsk"])
    bad[576 + 40] = 1  # inside the unused upper 40 bytes of signature r
    with pytest.raises(VerificationError) as info:
        CaCert.parse(bytes(bad), "HSK")
    assert info.value.check == "format"


def test_cache_remembers_only_successes(certs):
    cache = chain.ChainCache()
    bad = bytearray(certs["cek"])
    bad[500] ^= 1
    with pytest.raises(VerificationError):
        cache.endorsement(certs["hsk"], bytes(bad))
    with pytest.raises(VerificationError):
        cache.endorsement(certs["hsk"], bytes(bad))
    first = cache.endorsement(certs["hsk"], certs["cek"])
    assert cache.endorsement(certs["hsk"], certs["cek"]) is first
