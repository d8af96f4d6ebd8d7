"""``trustflow util`` through the real ``trustflow`` group (click's CliRunner)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from trustflow_core import capsule
from trustflow_core.cli import build_cli
from trustflow_core.cli import util as util_module
from trustflow_core.identity import party_id_of_key
from trustflow_core.testing.fixtures import compat_vectors_dir

COMPAT = compat_vectors_dir()


def _manifest() -> dict:
    return json.loads((COMPAT / "manifest.json").read_text())


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(build_cli(), ["util", *args], input=input)


def ok(*args: str, input: str | None = None) -> Result:
    result = run(*args, input=input)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    err = result.stderr
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in err, err


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


# ---- generate-rsa-keypair / generate-party-id ----------------------------------------------


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    d = tmp_path_factory.mktemp("keys")
    key, cert = d / "party.key", d / "party.crt"
    result = ok("generate-rsa-keypair", "--private-key-file", str(key), "--cert-file", str(cert))
    return key, cert, result.stdout.strip()


def test_core_cli_util_rsa_keypair_profile(keypair: tuple[Path, Path, str]) -> None:
    key_path, cert_path, printed_id = keypair
    assert key_path.stat().st_mode & 0o777 == 0o600
    key_pem = key_path.read_bytes()
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 3072 and key.public_key().public_numbers().e == 65537

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.version == x509.Version.v3
    cn = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    assert cn == ["capsule-manager"] and cert.issuer == cert.subject
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.serial_number > 0
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    assert abs(cert.not_valid_before_utc - (now - day)) < datetime.timedelta(minutes=5)
    assert abs(cert.not_valid_after_utc - (now + 365 * day)) < datetime.timedelta(minutes=5)

    assert printed_id == party_id_of_key(key.public_key())
    assert ok("generate-party-id", "--cert-file", str(cert_path)).stdout.strip() == printed_id


def test_core_cli_util_rsa_keypair_refuses_overwrite(
    keypair: tuple[Path, Path, str], tmp_path: Path
) -> None:
    key, _, _ = keypair
    before = key.read_bytes()
    other = tmp_path / "c.crt"
    result = run("generate-rsa-keypair", "--private-key-file", str(key), "--cert-file", str(other))
    assert_one_line_error(result, str(key), "already exists", "--force")
    assert key.read_bytes() == before and not other.exists()
    same = tmp_path / "same.pem"
    result = run("generate-rsa-keypair", "--private-key-file", str(same), "--cert-file", str(same))
    assert_one_line_error(result, "must be different files")


def test_core_cli_util_rsa_keypair_json_days_force(tmp_path: Path) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    key.write_text("old")
    args = ["--private-key-file", str(key), "--cert-file", str(cert), "--days", "10"]
    result = ok("generate-rsa-keypair", *args, "--force", "--json")
    data = json.loads(result.stdout)
    assert data["private_key_file"] == str(key) and data["cert_file"] == str(cert)
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    assert data["party_id"] == party_id_of_key(c.public_key())
    assert (c.not_valid_after_utc - c.not_valid_before_utc).days == 11
    assert key.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("party", sorted(_manifest()["parties"]) or ["<none>"])
def test_core_cli_util_party_id_of_compat_certs(party: str) -> None:
    info = _manifest()["parties"][party]
    result = ok("generate-party-id", "--cert-file", str(COMPAT / info["cert"]))
    assert result.stdout == info["party_id"] + "\n"
    result = ok("generate-party-id", "--cert-file", str(COMPAT / info["cert"]), "--json")
    assert json.loads(result.stdout) == {"party_id": info["party_id"]}


def test_core_cli_util_party_id_uses_last_cert() -> None:
    parties = _manifest()["parties"]
    a, c = parties["alice"], parties["carol"]
    args = ["--cert-file", str(COMPAT / c["cert"]), "--cert-file", str(COMPAT / a["cert"])]
    assert ok("generate-party-id", *args).stdout.strip() == a["party_id"]
    args = ["--cert-file", str(COMPAT / a["cert"]), "--cert-file", str(COMPAT / c["cert"])]
    assert ok("generate-party-id", *args).stdout.strip() == c["party_id"]


def test_core_cli_util_party_id_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    assert_one_line_error(run("generate-party-id", "--cert-file", str(junk)), str(junk))
    missing = tmp_path / "missing.crt"
    result = run("generate-party-id", "--cert-file", str(missing))
    assert_one_line_error(result, str(missing), "No such file")


# ---- generate-data-key-b64 -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("bits", "args"),
    [
        (128, []),
        (128, ["--bit-len", "128"]),
        (192, ["--bit-len", "192"]),
        (256, ["--bit-len", "256"]),
    ],
)
def test_core_cli_util_data_key(bits: int, args: list[str]) -> None:
    first = ok("generate-data-key-b64", *args).stdout
    assert first.endswith("\n") and first.count("\n") == 1
    key = base64.b64decode(first.strip(), validate=True)
    assert len(key) == bits // 8
    data = json.loads(ok("generate-data-key-b64", *args, "--json").stdout)
    assert data["bit_len"] == bits
    assert len(base64.b64decode(data["data_key_b64"], validate=True)) == bits // 8
    assert data["data_key_b64"] != first.strip()


def test_core_cli_util_data_key_bad_bit_len() -> None:
    result = run("generate-data-key-b64", "--bit-len", "64")
    assert result.exit_code == 2 and "--bit-len" in result.stderr


def test_core_cli_util_data_key_output_file(tmp_path: Path) -> None:
    path = tmp_path / "k.b64"
    assert ok("generate-data-key-b64", "--bit-len", "256", "--output-file", str(path)).stdout == ""
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(base64.b64decode(path.read_text().strip(), validate=True)) == 32
    before = path.read_text()
    result = run("generate-data-key-b64", "--output-file", str(path))
    assert_one_line_error(result, "already exists")
    assert path.read_text() == before
    ok("generate-data-key-b64", "--output-file", str(path), "--force")
    assert path.read_text() != before


# ---- encrypt / decrypt ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(_manifest()["data"]) or ["<none>"])
def test_core_cli_util_decrypts_compat_files(name: str, tmp_path: Path) -> None:
    entry = _manifest()["data"][name]
    key_b64 = (COMPAT / entry["key_b64_file"]).read_text().strip()
    out = tmp_path / "plain"
    src = str(COMPAT / "data" / name)
    result = ok(
        "decrypt-file", "--source-file", src, "--dest-file", str(out), "--data-key-b64", key_b64
    )
    assert result.stdout == ""
    plain = out.read_bytes()
    assert len(plain) == entry["plaintext_len"]
    assert hashlib.sha256(plain).hexdigest() == entry["plaintext_sha256"]
    assert out.stat().st_mode & 0o777 == 0o600


def test_core_cli_util_default_names_and_key_file(tmp_path: Path) -> None:
    [entry] = [e for n, e in _manifest()["data"].items() if n == "small.csv.enc"]
    src = tmp_path / "small.csv"
    shutil.copy(COMPAT / entry["plaintext"], src)
    key_file = str(COMPAT / entry["key_b64_file"])

    ok("encrypt-file", "--source-file", str(src), "--data-key-file", key_file)
    enc = tmp_path / "small.csv.enc"
    assert enc.stat().st_size == entry["encrypted_len"]
    ok("decrypt-file", "--source-file", str(enc), "--data-key-file", key_file)
    assert (tmp_path / "small.csv.enc.dec").read_bytes() == src.read_bytes()

    # the key on stdin
    out = tmp_path / "again"
    key_text = (COMPAT / entry["key_b64_file"]).read_text()
    ok(
        "decrypt-file",
        "--source-file",
        str(COMPAT / "data" / "small.csv.enc"),
        "--dest-file",
        str(out),
        "--data-key-file",
        "-",
        input=key_text,
    )
    assert out.read_bytes() == src.read_bytes()


def test_core_cli_util_inplace_on_compat_file(tmp_path: Path) -> None:
    entry = _manifest()["data"]["small.csv.inplace.enc"]
    path = tmp_path / "f"
    shutil.copy(COMPAT / "data" / "small.csv.inplace.enc", path)
    key_b64 = (COMPAT / entry["key_b64_file"]).read_text().strip()
    ok("decrypt-file-inplace", "--file", str(path), "--data-key-b64", key_b64)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["plaintext_sha256"]
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


@pytest.mark.parametrize("size", [0, 8127])
def test_core_cli_util_inplace_round_trip(size: int, tmp_path: Path) -> None:
    key_b64 = _b64(os.urandom(32))
    path = tmp_path / "data.bin"
    plain = os.urandom(size)
    path.write_bytes(plain)
    ok("encrypt-file-inplace", "--file", str(path), "--data-key-b64", key_b64)
    blob = path.read_bytes()
    assert len(blob) == capsule.v1.encrypted_size(size)
    assert struct.unpack_from("<IIQI", blob)[:3] == (1, 1, capsule.v1.block_count(size))
    ok("decrypt-file-inplace", "--file", str(path), "--data-key-b64", key_b64)
    assert path.read_bytes() == plain
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_core_cli_util_wrong_key_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_bytes(b"hello\n" * 100)
    ok("encrypt-file", "--source-file", str(src), "--data-key-b64", _b64(os.urandom(16)))
    enc = tmp_path / "a.txt.enc"
    result = run("decrypt-file", "--source-file", str(enc), "--data-key-b64", _b64(os.urandom(16)))
    assert_one_line_error(result, "block 1 failed authentication (wrong key or tampered data)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "a.txt.enc"]

    before = enc.read_bytes()
    result = run("decrypt-file-inplace", "--file", str(enc), "--data-key-b64", _b64(os.urandom(16)))
    assert_one_line_error(result, "failed authentication")
    assert enc.read_bytes() == before


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("not base64!", "--data-key-b64 is not valid standard base64"),
        ("AAAA", "decodes to 3 bytes"),
        (_b64(bytes(20)), "decodes to 20 bytes"),
        ("AAAAAAAAAAAAAAAAAAAAAA", "is not valid standard base64"),  # padding missing
        (base64.urlsafe_b64encode(b"\xfb" * 16).decode(), "not valid standard base64"),
        ("AAAAAAAAAAAAAAAAAAAAAB==", "not canonical"),
    ],
)
def test_core_cli_util_bad_key(key: str, fragment: str, tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_bytes(b"x")
    result = run("encrypt-file", "--source-file", str(src), "--data-key-b64", key)
    assert_one_line_error(result, fragment)
    assert key not in result.stderr or len(key) < 5
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_core_cli_util_bad_key_file(tmp_path: Path) -> None:
    src, key_file = tmp_path / "a", tmp_path / "k"
    src.write_bytes(b"x")
    key_file.write_text("garbage garbage\n")
    result = run("encrypt-file", "--source-file", str(src), "--data-key-file", str(key_file))
    assert_one_line_error(result, f"data key in {key_file}")


def test_core_cli_util_key_option_exclusive(tmp_path: Path) -> None:
    src, key_file = tmp_path / "a", tmp_path / "k"
    src.write_bytes(b"x")
    key_file.write_text(_b64(os.urandom(16)))
    both = run(
        "encrypt-file",
        "--source-file",
        str(src),
        "--data-key-file",
        str(key_file),
        "--data-key-b64",
        _b64(os.urandom(16)),
    )
    neither = run("encrypt-file", "--source-file", str(src))
    for result in (both, neither):
        assert result.exit_code == 2
        assert "exactly one of --data-key-b64 and --data-key-file" in result.stderr


def test_core_cli_util_source_equals_dest(tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_bytes(b"x" * 10)
    key = _b64(os.urandom(16))
    result = run(
        "encrypt-file",
        "--source-file",
        str(src),
        "--dest-file",
        str(tmp_path / "." / "a"),
        "--data-key-b64",
        key,
    )
    assert_one_line_error(result, "same file", "in-place")
    assert src.read_bytes() == b"x" * 10
    result = run(
        "decrypt-file", "--source-file", str(src), "--dest-file", str(src), "--data-key-b64", key
    )
    assert_one_line_error(result, "same file")


def test_core_cli_util_missing_source(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = run(
        "encrypt-file", "--source-file", str(missing), "--data-key-b64", _b64(os.urandom(16))
    )
    assert_one_line_error(result, str(missing), "No such file")


def test_core_cli_util_malformed_capsule(tmp_path: Path) -> None:
    src = tmp_path / "x.enc"
    src.write_bytes(b"\x01\x00\x00\x00" * 3)
    result = run("decrypt-file", "--source-file", str(src), "--data-key-b64", _b64(os.urandom(16)))
    assert_one_line_error(result, "header too short")
    assert [p.name for p in tmp_path.iterdir()] == ["x.enc"]


def test_core_cli_util_progress_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(util_module, "PROGRESS_THRESHOLD", 1000)
    src = tmp_path / "a"
    src.write_bytes(os.urandom(50_000))
    key = _b64(os.urandom(16))
    loud = ok("encrypt-file", "--source-file", str(src), "--data-key-b64", key)
    assert "encrypting" in loud.stderr and loud.stdout == ""
    quiet = ok("decrypt-file", "--source-file", str(src) + ".enc", "--data-key-b64", key, "-q")
    assert quiet.stderr == "" and quiet.stdout == ""
    assert (tmp_path / "a.enc.dec").read_bytes() == src.read_bytes()
    small = tmp_path / "small"
    small.write_bytes(b"tiny")
    assert ok("encrypt-file", "--source-file", str(small), "--data-key-b64", key).stderr == ""


def test_core_cli_util_help_warns_about_keys_in_argv() -> None:
    result = ok("encrypt-file", "--help")
    assert "--data-key-file" in result.stdout and "ps" in result.stdout
