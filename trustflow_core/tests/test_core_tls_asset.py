"""Group TLS asset: derivation, issuance, validation, files."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import stat

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from cryptography.x509.verification import PolicyBuilder, Store
from cryptography.x509.verification import VerificationError as X509VerificationError

from trustflow_core import tls_asset as ta
from trustflow_core.errors import InvalidInput, ObjectNotFound, VerificationError
from trustflow_core.identity import party_id_of_key
from trustflow_core.keyexchange import TlsAsset
from trustflow_core.testing.transport import flip_pem_byte

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 27, 15, 30, tzinfo=UTC)
HOUR = datetime.timedelta(hours=1)
DATA_KEY = bytes(range(16))
GROUP = {"scope": "default", "data_uuid": "breast_cancer_alice", "op_name": "interact"}
BOB = ec.derive_private_key(1111, ec.SECP256R1())
CAROL = ec.derive_private_key(2222, ec.SECP256R1())


def issue(member: ec.EllipticCurvePrivateKey = BOB, **overrides: object) -> TlsAsset:
    args: dict[str, object] = {"now": NOW, **GROUP, "member_public_key": member.public_key()}
    args.update(overrides)
    data_key = args.pop("data_key", DATA_KEY)
    return ta.issue_group_asset(data_key, **args)  # type: ignore[arg-type]


def chain(asset: TlsAsset) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(asset.cert_pem)


def key_of(asset: TlsAsset) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(asset.private_key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# ---- derivation and issuance -------------------------------------------------------------------


def test_repeated_calls_are_byte_identical() -> None:
    assert issue() == issue()
    assert issue(now=NOW + HOUR) == issue()  # same 12-hour window


def test_members_share_the_group_ca_and_get_their_own_leaf() -> None:
    bob, carol = issue(BOB), issue(CAROL)
    assert chain(bob)[1].public_bytes(serialization.Encoding.DER) == chain(carol)[1].public_bytes(
        serialization.Encoding.DER
    )
    assert chain(bob)[0] != chain(carol)[0]
    assert spki(key_of(bob).public_key()) != spki(key_of(carol).public_key())
    assert ta.validate_tls_asset(bob, now=NOW).anchor_fingerprint == (
        ta.validate_tls_asset(carol, now=NOW).anchor_fingerprint
    )
    assert chain(bob)[1] == ta.group_ca_certificate(DATA_KEY, **GROUP)


def test_derivation_follows_the_documented_formula() -> None:
    """Pin the derivation (docs/tls-asset.md): changing it splits groups across CM versions."""
    info = b"default\x00breast_cancer_alice\x00interact"
    seed = HKDF(hashes.SHA256(), 32, b"trustflow-tls-asset-v1", info).derive(DATA_KEY)
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

    def scalar(label: bytes) -> int:
        c = int.from_bytes(HKDFExpand(hashes.SHA256(), 48, label).derive(seed), "big")
        return c % (n - 1) + 1

    ca_key = ec.derive_private_key(scalar(b"ca-key"), ec.SECP256R1())
    ca = chain(issue())[1]
    assert spki(ca.public_key()) == spki(ca_key.public_key())
    group_id = HKDFExpand(hashes.SHA256(), 16, b"group-id").derive(seed).hex()
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"group-{group_id}"

    window = (NOW - ta.EPOCH) // ta.DEFAULT_LEAF_LIFETIME
    member = hashlib.sha256(spki(BOB.public_key())).digest()
    leaf_key = ec.derive_private_key(
        scalar(b"leaf-key\x00" + member + window.to_bytes(8, "big")), ec.SECP256R1()
    )
    assert spki(key_of(issue()).public_key()) == spki(leaf_key.public_key())


@pytest.mark.parametrize(
    "change",
    [
        {"data_key": bytes(range(1, 17))},
        {"scope": "other"},
        {"data_uuid": "breast_cancer_bob"},
        {"op_name": "psi"},
        {"issuer_secret": b"cm secret"},
        {"scope": "default\u00e9"},
    ],
    ids=["data_key", "scope", "data_uuid", "op_name", "issuer_secret", "unicode"],
)
def test_every_group_input_gives_another_ca(change: dict[str, object]) -> None:
    base_ca, other_ca = chain(issue())[1], chain(issue(**change))[1]
    assert spki(base_ca.public_key()) != spki(other_ca.public_key())
    assert base_ca.subject != other_ca.subject
    with pytest.raises((ValueError, InvalidSignature)):
        chain(issue())[0].verify_directly_issued_by(other_ca)


def test_field_boundaries_are_unambiguous() -> None:
    a = issue(scope="ab", data_uuid="c")
    b = issue(scope="a", data_uuid="bc")
    assert chain(a)[1] != chain(b)[1]


def test_certificate_profiles() -> None:
    leaf, ca = chain(issue())
    assert ca.subject == ca.issuer == leaf.issuer
    assert ca.not_valid_before_utc == ta.EPOCH
    assert ca.not_valid_after_utc == ta.CA_NOT_AFTER
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature

    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == party_id_of_key(
        BOB.public_key()
    )
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    group_hex = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value.removeprefix(
        "group-"
    )
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        ta.member_uri(group_hex, party_id_of_key(BOB.public_key()))
    ]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    for cert in (leaf, ca):
        assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
        assert 0 < cert.serial_number < 2**127
    leaf.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)
    asset = issue()
    assert asset.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    assert key_of(asset).curve.name == "secp256r1"
    assert asset.cert_pem.count(b"-----BEGIN CERTIFICATE-----") == 2


def test_an_independent_rfc5280_verifier_accepts_members_only() -> None:
    """cryptography's own (non-OpenSSL) path validation, client-auth policy."""
    ca = chain(issue())[1]
    verifier = PolicyBuilder().store(Store([ca])).time(NOW).build_client_verifier()
    for member in (BOB, CAROL):
        verified = verifier.verify(chain(issue(member))[0], [])
        assert verified.chain[-1] == ca
    for stranger in (issue(op_name="psi"), issue(issuer_secret=b"other cm")):
        with pytest.raises(X509VerificationError):
            verifier.verify(chain(stranger)[0], [])
    with pytest.raises(X509VerificationError):  # expired leaf of the group
        verifier.verify(chain(issue(now=NOW - 2 * ta.DEFAULT_LEAF_LIFETIME))[0], [])


def test_leaf_validity_windows() -> None:
    lifetime = ta.DEFAULT_LEAF_LIFETIME
    leaf = chain(issue())[0]
    start = ta.EPOCH + ((NOW - ta.EPOCH) // lifetime) * lifetime
    assert leaf.not_valid_before_utc == start - ta.CLOCK_SKEW
    assert leaf.not_valid_after_utc == start + 2 * lifetime
    for moment in (start, start + lifetime - datetime.timedelta(seconds=1)):
        assert issue(now=moment) == issue()
        assert chain(issue(now=moment))[0].not_valid_after_utc - moment > lifetime - (
            datetime.timedelta(seconds=1)
        )
    next_window = issue(now=start + lifetime)
    assert next_window != issue()
    assert chain(next_window)[1] == chain(issue())[1]  # same CA, new leaf and key
    assert spki(key_of(next_window).public_key()) != spki(key_of(issue()).public_key())
    short = issue(leaf_lifetime=datetime.timedelta(minutes=30))
    info = ta.validate_tls_asset(short, now=NOW)
    assert info.not_after - info.not_before == datetime.timedelta(minutes=65)


@pytest.mark.parametrize(
    ("overrides", "mentions"),
    [
        ({"data_key": b"short"}, "16 bytes"),
        ({"data_key": "a string key"}, "16 bytes"),
        ({"scope": "de\x00fault"}, "scope"),
        ({"op_name": "x\x00"}, "op_name"),
        ({"data_uuid": ""}, "data_uuid"),
        ({"now": datetime.datetime(2026, 1, 1)}, "timezone"),
        ({"now": datetime.datetime(2023, 1, 1, tzinfo=UTC)}, "before"),
        ({"leaf_lifetime": datetime.timedelta(minutes=5)}, "lifetime"),
        ({"leaf_lifetime": datetime.timedelta(days=400)}, "lifetime"),
        ({"leaf_lifetime": datetime.timedelta(hours=1, microseconds=5)}, "lifetime"),
    ],
)
def test_bad_input_is_refused(overrides: dict[str, object], mentions: str) -> None:
    with pytest.raises(InvalidInput, match=mentions):
        issue(**overrides)


def test_asset_repr_hides_the_key() -> None:
    asset = issue()
    assert b"PRIVATE" not in repr(asset).encode()
    assert "hidden" in repr(asset)


# ---- validation ---------------------------------------------------------------------------------


def test_valid_asset_info() -> None:
    asset = issue()
    info = ta.validate_tls_asset(asset, now=NOW)
    assert info.chain == tuple(chain(asset))
    assert info.leaf is info.chain[0] and info.anchor is info.chain[1]
    assert info.not_after == info.leaf.not_valid_after_utc
    assert info.not_before == info.leaf.not_valid_before_utc
    assert info.refresh_at(0.5) == info.not_before + (info.not_after - info.not_before) / 2
    assert info.anchor_pem.encode() in asset.cert_pem


@pytest.mark.parametrize("lifetime_minutes", [10, 60, 720])
@pytest.mark.parametrize("position", [0.0, 0.3, 0.999])
def test_refresh_at_yields_a_new_leaf_before_expiry(lifetime_minutes: int, position: float) -> None:
    """Fetching at refresh_at() must give a different, valid leaf: no same-window refetch
    loop, no gap."""
    lifetime = datetime.timedelta(minutes=lifetime_minutes)
    start = ta.EPOCH + ((NOW - ta.EPOCH) // lifetime) * lifetime
    issued_at = start + lifetime * position
    first = issue(now=issued_at, leaf_lifetime=lifetime)
    info = ta.validate_tls_asset(first, now=issued_at)
    when = info.refresh_at()
    assert issued_at < when < info.not_after
    second = issue(now=when, leaf_lifetime=lifetime)
    assert second != first
    later = ta.validate_tls_asset(second, now=when)
    assert later.not_after > info.not_after
    assert later.refresh_at() > when


def test_validate_refuses_naive_now() -> None:
    with pytest.raises(InvalidInput, match="timezone"):
        ta.validate_tls_asset(issue(), now=datetime.datetime(2026, 11, 27, 16))


def test_upstream_shape_identical_self_signed_asset_is_valid() -> None:
    """An asset that is one self-signed certificate + its key (the other shape upstream allows)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "group")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + HOUR)
        .sign(key, hashes.SHA256())
    )
    asset = TlsAsset(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    info = ta.validate_tls_asset(asset, now=NOW)
    assert info.leaf is info.anchor


@pytest.mark.parametrize("block", [0, 1])
def test_flipped_character_in_a_certificate_is_refused(block: int) -> None:
    asset = issue()
    tampered = dataclasses.replace(asset, cert_pem=flip_pem_byte(asset.cert_pem, block))
    with pytest.raises(VerificationError) as err:
        ta.validate_tls_asset(tampered, now=NOW)
    assert err.value.check in {"certificate", "chain", "key_match"}


def test_every_changed_base64_character_of_the_certificate_file_is_refused() -> None:
    """Exhaustive: each position of each PEM body, one character changed. Either the file is
    refused with a VerificationError, or it decodes to the very same certificates (spare
    bits of the last base64 quantum)."""
    asset = issue()
    original = [c.public_bytes(serialization.Encoding.DER) for c in chain(asset)]
    pem = asset.cert_pem
    positions = [
        i
        for i, line in _body_lines(pem)
        for i in range(i, i + len(line))
        if pem[i : i + 1] not in (b"=", b"\n")
    ]
    assert len(positions) > 800
    refused = 0
    for index in positions:
        data = bytearray(pem)
        data[index] = ord("B") if data[index] == ord("A") else ord("A")
        tampered = dataclasses.replace(asset, cert_pem=bytes(data))
        try:
            ta.validate_tls_asset(tampered, now=NOW)
        except VerificationError:
            refused += 1
            continue
        assert [c.public_bytes(serialization.Encoding.DER) for c in chain(tampered)] == original
    assert refused >= len(positions) - 8


def test_every_changed_base64_character_of_the_key_file_is_refused() -> None:
    asset = issue()
    pem = asset.private_key_pem
    positions = [
        i
        for i, line in _body_lines(pem)
        for i in range(i, i + len(line))
        if pem[i : i + 1] not in (b"=", b"\n")
    ]
    unchanged = 0
    for index in positions:
        data = bytearray(pem)
        data[index] = ord("B") if data[index] == ord("A") else ord("A")
        tampered = dataclasses.replace(asset, private_key_pem=bytes(data))
        try:
            ta.validate_tls_asset(tampered, now=NOW)
        except VerificationError as exc:
            assert exc.check in {"key", "key_match"}
            continue
        assert key_of(tampered).private_numbers() == key_of(asset).private_numbers()
        unchanged += 1
    assert unchanged <= 4


def _body_lines(pem: bytes) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    for line in pem.split(b"\n"):
        if line and not line.startswith(b"-----"):
            out.append((offset, line))
        offset += len(line) + 1
    return out


def test_every_flipped_character_of_the_leaf_signature_is_refused() -> None:
    asset = issue()
    leaf_der = bytearray(chain(asset)[0].public_bytes(serialization.Encoding.DER))
    refused = 0
    for index in range(len(leaf_der) - 70, len(leaf_der)):  # the signature BIT STRING
        mutated = bytearray(leaf_der)
        mutated[index] ^= 0x01
        try:
            cert = x509.load_der_x509_certificate(bytes(mutated))
        except ValueError:
            refused += 1
            continue
        pem = cert.public_bytes(serialization.Encoding.PEM) + chain(asset)[1].public_bytes(
            serialization.Encoding.PEM
        )
        with pytest.raises(VerificationError):
            ta.validate_tls_asset(dataclasses.replace(asset, cert_pem=pem), now=NOW)
        refused += 1
    assert refused == 70


def test_flipped_character_in_the_key_is_refused() -> None:
    asset = issue()
    tampered = dataclasses.replace(asset, private_key_pem=flip_pem_byte(asset.private_key_pem, 0))
    with pytest.raises(VerificationError) as err:
        ta.validate_tls_asset(tampered, now=NOW)
    assert err.value.check in {"key", "key_match"}


def test_key_of_another_member_is_refused() -> None:
    mixed = TlsAsset(issue(BOB).cert_pem, issue(CAROL).private_key_pem)
    with pytest.raises(VerificationError, match="key_match: the private key does not belong"):
        ta.validate_tls_asset(mixed, now=NOW)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@pytest.mark.parametrize(
    ("shape", "mentions"),
    [
        ("leaf only", "self-signed"),
        ("foreign CA", "is not signed by certificate 1"),
        ("reversed", "key_match"),
    ],
)
def test_chain_problems_are_named(shape: str, mentions: str) -> None:
    asset = issue()
    leaf, ca = chain(asset)
    other_ca = chain(issue(data_key=bytes(16 * [7])))[1]
    pem = {"leaf only": _pem(leaf), "foreign CA": _pem(leaf, other_ca), "reversed": _pem(ca, leaf)}
    with pytest.raises(VerificationError, match=mentions):
        ta.validate_tls_asset(dataclasses.replace(asset, cert_pem=pem[shape]), now=NOW)


def test_non_ca_issuer_is_refused() -> None:
    asset = issue()
    # bob's leaf signs carol's key: signatures fine, but the issuer is not a CA
    bob_leaf, ca = chain(asset)
    carol_key = ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
        .issuer_name(bob_leaf.subject)
        .public_key(carol_key.public_key())
        .serial_number(5)
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + HOUR)
        .sign(key_of(asset), hashes.SHA256())
    )
    pem = _pem(forged, bob_leaf, ca)
    key_pem = carol_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(VerificationError, match="not a CA"):
        ta.validate_tls_asset(TlsAsset(pem, key_pem), now=NOW)


@pytest.mark.parametrize(
    ("moment", "mentions"),
    [
        (NOW + 2 * ta.DEFAULT_LEAF_LIFETIME, "expired at"),
        (NOW - ta.DEFAULT_LEAF_LIFETIME, "not valid before"),
    ],
)
def test_validity_is_checked(moment: datetime.datetime, mentions: str) -> None:
    with pytest.raises(VerificationError, match=mentions) as err:
        ta.validate_tls_asset(issue(), now=moment)
    assert err.value.check == "validity"


@pytest.mark.parametrize(
    ("cert_pem", "key_pem", "check"),
    [
        (b"", None, "certificate"),
        (b"not pem at all", None, "certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", None, "certificate"),
        (None, b"", "key"),
        (None, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "key"),
    ],
)
def test_malformed_files_are_named(
    cert_pem: bytes | None, key_pem: bytes | None, check: str
) -> None:
    asset = issue()
    broken = TlsAsset(
        asset.cert_pem if cert_pem is None else cert_pem,
        asset.private_key_pem if key_pem is None else key_pem,
    )
    with pytest.raises(VerificationError) as err:
        ta.validate_tls_asset(broken, now=NOW)
    assert err.value.check == check


def test_extra_pem_block_in_the_certificate_file_is_refused() -> None:
    asset = issue()
    pem = asset.cert_pem + asset.private_key_pem
    with pytest.raises(VerificationError, match="3 PEM block"):
        ta.validate_tls_asset(dataclasses.replace(asset, cert_pem=pem), now=NOW)


def test_encrypted_key_is_refused() -> None:
    asset = issue()
    encrypted = key_of(asset).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(VerificationError, match="key"):
        ta.validate_tls_asset(dataclasses.replace(asset, private_key_pem=encrypted), now=NOW)


def test_leaf_limited_to_server_auth_is_refused() -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")])

    def build(
        subject_key: ec.EllipticCurvePrivateKey, name: str, *exts: object
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(subject_key.public_key())
            .serial_number(9)
            .not_valid_before(NOW - HOUR)
            .not_valid_after(NOW + HOUR)
        )
        for ext in exts:
            builder = builder.add_extension(ext, critical=False)  # type: ignore[arg-type]
        return builder.sign(ca_key, hashes.SHA256())

    ca = build(ca_key, "ca", x509.BasicConstraints(ca=True, path_length=None))
    leaf = build(leaf_key, "leaf", x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]))
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(VerificationError, match="clientAuth"):
        ta.validate_tls_asset(TlsAsset(_pem(leaf, ca), key_pem), now=NOW)


# ---- files ---------------------------------------------------------------------------------------


def test_write_then_load(tmp_path: os.PathLike[str]) -> None:
    cert, key = os.path.join(tmp_path, "tls.crt"), os.path.join(tmp_path, "tls.key")
    asset = issue()
    ta.write_tls_asset(asset, cert, key, now=NOW)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    loaded, info = ta.load_tls_asset(cert, key, now=NOW)
    assert loaded == asset
    assert info.leaf == chain(asset)[0]


def test_write_refuses_a_bad_asset_and_writes_nothing(tmp_path: os.PathLike[str]) -> None:
    cert, key = os.path.join(tmp_path, "tls.crt"), os.path.join(tmp_path, "tls.key")
    mixed = TlsAsset(issue(BOB).cert_pem, issue(CAROL).private_key_pem)
    with pytest.raises(VerificationError):
        ta.write_tls_asset(mixed, cert, key, now=NOW)
    assert os.listdir(tmp_path) == []


def test_load_names_the_files_and_the_check(tmp_path: os.PathLike[str]) -> None:
    cert, key = os.path.join(tmp_path, "tls.crt"), os.path.join(tmp_path, "tls.key")
    ta.write_tls_asset(issue(), cert, key, now=NOW)
    with open(cert, "rb") as fh:
        pem = fh.read()
    with open(cert, "wb") as fh:
        fh.write(flip_pem_byte(pem, 1))
    with pytest.raises(VerificationError) as err:
        ta.load_tls_asset(cert, key, now=NOW)
    assert cert in str(err.value) and key in str(err.value)
    assert str(err.value).startswith(f"{err.value.check}: ")


def test_load_missing_file(tmp_path: os.PathLike[str]) -> None:
    cert, key = os.path.join(tmp_path, "tls.crt"), os.path.join(tmp_path, "tls.key")
    with pytest.raises(ObjectNotFound, match=r"tls\.crt"):
        ta.load_tls_asset(cert, key)
    ta.write_tls_asset(issue(), cert, key, now=NOW)
    os.unlink(key)
    with pytest.raises(ObjectNotFound, match=r"tls\.key"):
        ta.load_tls_asset(cert, key)
