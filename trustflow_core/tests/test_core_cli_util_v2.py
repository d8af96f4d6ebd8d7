"""``trustflow util`` with both data-capsule formats, through the real ``trustflow`` group:
``--format v1|v2`` round trips, format auto-detection on decrypt, v2 tampering refused with a
one-line error and nothing left behind, upstream (v1) compat vectors still decrypt."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from trustflow_core.capsule import v1, v2
from trustflow_core.cli import build_cli
from trustflow_core.testing.fixtures import compat_vectors_dir

COMPAT = compat_vectors_dir()
SEG = v2.SEGMENT_LEN
HLEN = v2.HEADER_LEN
TAG = v2.TAG_LEN
# plaintext filling segment 0 and two more, plus a short last segment: four segments
V2_PLAIN_LEN = (SEG - HLEN - TAG) + 2 * (SEG - TAG) + 1000


def _manifest() -> dict:
    return json.loads((COMPAT / "manifest.json").read_text())


def run(*args: str) -> Result:
    return CliRunner().invoke(build_cli(), ["util", *args])


def ok(*args: str) -> Result:
    result = run(*args)
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


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["v1", "v2"])
@pytest.mark.parametrize("size", [0, 1, 8127, SEG + 5])
def test_core_cli_util_v2_round_trip(fmt: str, size: int, tmp_path: Path) -> None:
    key_b64 = _b64(os.urandom(32))
    plain = os.urandom(size)
    src = tmp_path / "data.bin"
    src.write_bytes(plain)
    ok("encrypt-file", "--source-file", str(src), "--data-key-b64", key_b64, "--format", fmt)
    enc = tmp_path / "data.bin.enc"
    blob = enc.read_bytes()
    if fmt == "v2":
        assert blob.startswith(v2.MAGIC)
        assert len(blob) == v2.v2_size(size)
    else:
        assert len(blob) == v1.encrypted_size(size)
        assert struct.unpack_from("<II", blob) == (v1.VERSION, v1.SCHEMA)
    out = tmp_path / "out.bin"
    result = ok(
        "decrypt-file",
        "--source-file",
        str(enc),
        "--dest-file",
        str(out),
        "--data-key-b64",
        key_b64,
    )
    assert result.stdout == ""
    assert out.read_bytes() == plain
    assert out.stat().st_mode & 0o777 == 0o600
    assert _listing(tmp_path) == ["data.bin", "data.bin.enc", "out.bin"]


@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_core_cli_util_v2_inplace_round_trip(fmt: str, tmp_path: Path) -> None:
    key_b64 = _b64(os.urandom(16))
    path = tmp_path / "f"
    plain = os.urandom(20_000)
    path.write_bytes(plain)
    ok("encrypt-file-inplace", "--file", str(path), "--data-key-b64", key_b64, "--format", fmt)
    assert path.read_bytes().startswith(v2.MAGIC) == (fmt == "v2")
    ok("decrypt-file-inplace", "--file", str(path), "--data-key-b64", key_b64)
    assert path.read_bytes() == plain
    assert _listing(tmp_path) == ["f"]


def test_core_cli_util_v2_default_is_v1_and_bad_format_is_refused(tmp_path: Path) -> None:
    key_b64 = _b64(os.urandom(16))
    src = tmp_path / "a"
    src.write_bytes(b"abc")
    ok("encrypt-file", "--source-file", str(src), "--data-key-b64", key_b64)
    assert (tmp_path / "a.enc").read_bytes()[:4] == struct.pack("<I", v1.VERSION)
    for command in (
        ["encrypt-file", "--source-file", str(src), "--dest-file", str(tmp_path / "b")],
        ["encrypt-file-inplace", "--file", str(src)],
    ):
        result = run(*command, "--data-key-b64", key_b64, "--format", "v3")
        assert result.exit_code == 2 and "'v3' is not one of 'v1', 'v2'" in result.stderr
    assert _listing(tmp_path) == ["a", "a.enc"]
    assert src.read_bytes() == b"abc"


# ---- v1 compat vectors ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(_manifest()["data"]) or ["<none>"])
def test_core_cli_util_v2_compat_vectors_still_decrypt(name: str, tmp_path: Path) -> None:
    entry = _manifest()["data"][name]
    key_file = str(COMPAT / entry["key_b64_file"])
    out = tmp_path / "plain"
    ok(
        "decrypt-file",
        "--source-file",
        str(COMPAT / "data" / name),
        "--dest-file",
        str(out),
        "--data-key-file",
        key_file,
    )
    assert hashlib.sha256(out.read_bytes()).hexdigest() == entry["plaintext_sha256"]
    inplace = tmp_path / "inplace"
    shutil.copy(COMPAT / "data" / name, inplace)
    ok("decrypt-file-inplace", "--file", str(inplace), "--data-key-file", key_file)
    assert inplace.read_bytes() == out.read_bytes()
    assert len(out.read_bytes()) == entry["plaintext_len"]


# ---- v2 tampering -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v2_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes, bytes]:
    """(key b64, plaintext, v2 capsule of four segments made by the CLI)."""
    d = tmp_path_factory.mktemp("v2")
    key_b64 = _b64(os.urandom(16))
    plain = os.urandom(V2_PLAIN_LEN)
    (d / "p").write_bytes(plain)
    ok("encrypt-file", "--source-file", str(d / "p"), "--data-key-b64", key_b64, "--format", "v2")
    blob = (d / "p.enc").read_bytes()
    assert len(blob) == v2.v2_size(V2_PLAIN_LEN)
    return key_b64, plain, blob


def _split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Header and sealed segments (boundaries at multiples of SEG)."""
    segments = [blob[HLEN:SEG]] + [blob[i : i + SEG] for i in range(SEG, len(blob), SEG)]
    assert len(segments) == 4
    return blob[:HLEN], segments


def _header_with(blob: bytes, **changes: object) -> bytes:
    fields = dict(
        zip(
            ("magic", "segment_len", "plaintext_len", "salt", "reserved"),
            v2.HEADER.unpack(blob[:HLEN]),
            strict=True,
        )
    )
    fields.update(changes)
    return v2.HEADER.pack(*fields.values()) + blob[HLEN:]


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def _swapped(blob: bytes) -> bytes:
    header, s = _split(blob)
    return header + s[0] + s[2] + s[1] + s[3]


def _duplicated(blob: bytes) -> bytes:
    header, s = _split(blob)
    return header + s[0] + s[1] + s[1] + s[3]


def _duplicated_extra(blob: bytes) -> bytes:
    header, s = _split(blob)
    return header + s[0] + s[1] + s[1] + s[2] + s[3]


def _dropped(blob: bytes) -> bytes:
    header, s = _split(blob)
    return header + s[0] + s[2] + s[3]


def _dropped_header_fixed(blob: bytes) -> bytes:
    """The middle segment dropped and the header's length made to match the file."""
    header, s = _split(blob)
    shorter = header + s[0] + s[2] + s[3]
    return _header_with(shorter, plaintext_len=V2_PLAIN_LEN - (SEG - TAG))


def _truncated_at_boundary_header_fixed(blob: bytes) -> bytes:
    """The last segment cut off and the header's length made to match the file."""
    header, s = _split(blob)
    return _header_with(header + s[0] + s[1] + s[2], plaintext_len=V2_PLAIN_LEN - 1000)


TAMPERINGS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "swapped": (_swapped, "segment 1 failed authentication"),
    "duplicated": (_duplicated, "segment 2 failed authentication"),
    "duplicated extra": (_duplicated_extra, "truncated or extended"),
    "dropped": (_dropped, "truncated or extended"),
    "dropped, header fixed": (_dropped_header_fixed, "segment 0 failed authentication"),
    "truncated at boundary": (lambda b: b[: 3 * SEG], "truncated or extended"),
    "truncated at boundary, header fixed": (
        _truncated_at_boundary_header_fixed,
        "segment 0 failed authentication",
    ),
    "truncated by one byte": (lambda b: b[:-1], "truncated or extended"),
    "extended by one byte": (lambda b: b + b"\0", "truncated or extended"),
    "cut to the header": (lambda b: b[:HLEN], "shorter than header + tag"),
    "magic changed": (lambda b: _flip(b, 7), "neither v1 nor v2"),
    "segment_len changed": (
        lambda b: _header_with(b, segment_len=SEG - 1),
        "segment 0 failed authentication",
    ),
    "plaintext_len changed": (
        lambda b: _header_with(b, plaintext_len=V2_PLAIN_LEN + 1),
        "truncated or extended",
    ),
    "salt changed": (lambda b: _flip(b, HLEN - 10), "segment 0 failed authentication"),
    "reserved changed": (lambda b: _flip(b, HLEN - 1), "reserved bytes are not zero"),
    "last segment bit flip": (lambda b: _flip(b, len(b) - TAG - 3), "segment 3 failed"),
    "first segment bit flip": (lambda b: _flip(b, HLEN), "segment 0 failed authentication"),
}


@pytest.mark.parametrize("case", sorted(TAMPERINGS))
def test_core_cli_util_v2_tampering_is_refused(
    case: str, v2_file: tuple[str, bytes, bytes], tmp_path: Path
) -> None:
    key_b64, _, blob = v2_file
    tamper, message = TAMPERINGS[case]
    bad = tamper(blob)
    assert bad != blob
    enc = tmp_path / "x.enc"
    enc.write_bytes(bad)
    out = tmp_path / "x.out"
    result = run(
        "decrypt-file",
        "--source-file",
        str(enc),
        "--dest-file",
        str(out),
        "--data-key-b64",
        key_b64,
        "-q",
    )
    assert_one_line_error(result, message)
    assert _listing(tmp_path) == ["x.enc"]  # no output, no temporary file

    result = run("decrypt-file-inplace", "--file", str(enc), "--data-key-b64", key_b64, "-q")
    assert_one_line_error(result, message)
    assert enc.read_bytes() == bad
    assert _listing(tmp_path) == ["x.enc"]


def test_core_cli_util_v2_untampered_file_and_wrong_key(
    v2_file: tuple[str, bytes, bytes], tmp_path: Path
) -> None:
    key_b64, plain, blob = v2_file
    enc = tmp_path / "x.enc"
    enc.write_bytes(blob)
    ok("decrypt-file", "--source-file", str(enc), "--data-key-b64", key_b64, "-q")
    assert (tmp_path / "x.enc.dec").read_bytes() == plain
    (tmp_path / "x.enc.dec").unlink()
    result = run("decrypt-file", "--source-file", str(enc), "--data-key-b64", _b64(os.urandom(16)))
    assert_one_line_error(result, "segment 0 failed authentication")
    assert _listing(tmp_path) == ["x.enc"]
