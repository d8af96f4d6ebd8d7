"""The fuzz targets: each parser that takes bytes from outside, through its public API.

Seeds are the real vectors in the shared test data (read at run time: the compat vectors have
no redistribution licence and may be regenerated), found like the compat tests find them:
``$TRUSTFLOW_COMPAT_DIR`` or ``shared/testdata/compat`` above the repository; ``attestation/``
and ``envoy/`` are its siblings. Inputs with several parts use
:func:`fuzz_engine.join_parts` (a mode byte, then parts), so that mutations reach the inner
layers: a JWE header that still decrypts, an ``x5c`` DER under a valid signature.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from fuzz_engine import Target, join_parts, split_parts
from trustflow_core.attestation import Attributes, Policy
from trustflow_core.channel import Jwe, Jws
from trustflow_core.errors import (
    CapsuleFormatError,
    EnvelopeError,
    InvalidInput,
    VerificationError,
)
from trustflow_core.testing.certs import malformed_certificates
from trustflow_core.testing.fixtures import compat_vectors_dir

from trustflow_core import capsule

# ---- shared test data --------------------------------------------------------------------


@functools.cache
def compat() -> Path:
    return compat_vectors_dir()


def testdata(*parts: str) -> Path:
    return compat().parent.joinpath(*parts)


@functools.cache
def manifest() -> dict[str, Any]:
    return json.loads((compat() / "manifest.json").read_text())  # type: ignore[no-any-return]


@functools.cache
def private_key(name: str) -> RSAPrivateKey:
    key = serialization.load_pem_private_key((compat() / "keys" / f"{name}.key").read_bytes(), None)
    assert isinstance(key, RSAPrivateKey)
    return key


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


# ---- data capsules -------------------------------------------------------------------------

CAPSULE_KEY_SEGMENT = capsule.v2.MIN_SEGMENT_LEN + 64  # several segments in a small file


@functools.cache
def capsule_key() -> bytes:
    return base64.b64decode((compat() / "data" / "small.key.b64").read_text().strip())


def _chunked(data: bytes) -> tuple[int, bytes]:
    """The first byte picks the read size (0: all at once), the rest is the file."""
    return (data[0] if data else 0), data[1:]


def _decrypt(data: bytes) -> bytes:
    chunk, body = _chunked(data)
    out = io.BytesIO()
    src = io.BytesIO(body)
    reader = capsule.open_reader(capsule_key(), len(body))
    while piece := src.read(chunk or len(body) or 1):
        out.write(reader.update(piece))
    reader.finalize()
    return out.getvalue()


def _v1_seeds() -> list[bytes]:
    small = ("small.csv.enc", "small.csv.inplace.enc", "boundary_8126.bin.enc", "empty.bin.enc")
    names = [*small, "boundary_8127.bin.enc"]
    return [bytes((c,)) + (compat() / "data" / n).read_bytes() for n in names for c in (0, 7)]


def _v2_file(plaintext: bytes) -> bytes:
    writer = capsule.v2.V2Encryptor(capsule_key(), len(plaintext), CAPSULE_KEY_SEGMENT)
    return writer.header + writer.update(plaintext) + writer.finalize()


@functools.cache
def _v2_plain() -> dict[bytes, bytes]:
    plain = (compat() / "data" / "small.csv").read_bytes()
    texts = (b"", plain, plain * 3)
    return {_v2_file(t): t for t in texts}


def _v2_seeds() -> list[bytes]:
    return [bytes((c,)) + f for f in _v2_plain() for c in (0, 5)]


def run_capsule_v1(data: bytes) -> None:
    _decrypt(data)


def run_capsule_v2(data: bytes) -> None:
    """Beyond not crashing: v2 authenticates every byte, so only an unchanged file opens."""
    plaintext = _decrypt(data)
    body = _chunked(data)[1]
    original = _v2_plain().get(body)
    if original is None and body[: len(capsule.v2.MAGIC)] == capsule.v2.MAGIC:
        raise AssertionError(f"a changed v2 capsule decrypted to {len(plaintext)} bytes")
    if original is not None and plaintext != original:
        raise AssertionError("a v2 capsule decrypted to the wrong plaintext")


# ---- JWE (both dialects) -----------------------------------------------------------------

JWE_MEMBERS = ("protected", "encrypted_key", "iv", "ciphertext", "tag", "aad")
MODE_RAW, MODE_JSON, MODE_REPLY = 0, 1, 2
REPLY_CEK = bytes(range(16))


def _jwe_input(jwe: Jwe, mode: int) -> bytes:
    if mode == MODE_JSON:
        return join_parts(mode, json.dumps(jwe.to_dict()).encode())
    return join_parts(mode, *(unb64url(getattr(jwe, m)) for m in JWE_MEMBERS))


def _jwe_from(data: bytes) -> tuple[int, Jwe] | None:
    mode, parts = split_parts(data, len(JWE_MEMBERS))
    if mode % 3 == MODE_JSON:
        try:
            members = json.loads(parts[0])
        except (ValueError, RecursionError):
            return None  # not JSON: nothing of ours runs
        return MODE_JSON, Jwe.from_dict(members)
    return mode % 3, Jwe(*(b64url(p) for p in parts[: len(JWE_MEMBERS)]))


@functools.cache
def _channel(profile: str) -> Any:
    from trustflow_channel_jwe.channel import JweChannel

    return JweChannel(profile)


def _run_jwe(profile: str, data: bytes) -> None:
    found = _jwe_from(data)
    if found is None:
        return
    mode, jwe = found
    channel = _channel(profile)
    if mode == MODE_REPLY:
        channel.open_reply(jwe, REPLY_CEK)
    else:
        channel.open(jwe, private_key("cm"))


def _compat_request_jwes() -> list[Jwe]:
    jwes = []
    for label in ("create_data_keys", "register_cert_alice", "list_data_policy"):
        message = json.loads((compat() / "rpc" / f"{label}.encrypted_request.json").read_text())
        m = message["message"]
        jwes.append(Jwe(**{k: m.get(k, "") for k in JWE_MEMBERS}))
    return jwes


def _jwe_seeds(profile: str) -> list[bytes]:
    channel = _channel(profile)
    cm_public = private_key("cm").public_key()
    requests = [channel.seal(b'{"owner_party_id":"x"}', cm_public).jwe]
    if profile == "upstream":
        requests += _compat_request_jwes()
    replies = [channel.seal_reply(b"", REPLY_CEK), channel.seal_reply(b'{"ok":1}', REPLY_CEK)]
    seeds = [_jwe_input(j, mode) for j in requests for mode in (MODE_RAW, MODE_JSON)]
    return seeds + [_jwe_input(j, MODE_REPLY) for j in replies]


#: The P-256 key ECDH-ES+A128KW seeds are sealed to (fixed, so stored inputs replay).
ECDH_SCALAR = 0x5EED_ECD4_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0001


@functools.cache
def _ecdh_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.derive_private_key(ECDH_SCALAR, ec.SECP256R1())


@functools.cache
def _ecdh_sealed() -> Any:
    """One ECDH envelope to :func:`_ecdh_key` (the seeds' ``epk``)."""
    return _channel("rfc").seal(b'{"message":"hello"}', _ecdh_key().public_key()).jwe


def _run_jwe_ecdh(data: bytes) -> None:
    """The RFC profile's ECDH-ES+A128KW opening (``epk`` checks, Concat KDF, key unwrap). A new
    channel per input that has first opened the seeds' envelope, so its KEK cache holds the
    seeds' ``epk``: inputs that keep that ``epk`` take the cache-hit path, the rest the full
    one (the same for every replay of an input)."""
    found = _jwe_from(data)
    if found is not None:
        channel = _channel("rfc")
        channel.open(_ecdh_sealed(), _ecdh_key())
        channel.open(found[1], _ecdh_key())


def _jwe_ecdh_seeds() -> list[bytes]:
    return [_jwe_input(_ecdh_sealed(), mode) for mode in (MODE_RAW, MODE_JSON)]


# ---- JWS / x5c ---------------------------------------------------------------------------

MODE_HEADER, MODE_MEMBERS, MODE_X5C = 0, 1, 2


def _sign(header: bytes, payload: bytes) -> Jws:
    protected, encoded = b64url(header), b64url(payload)
    signature = private_key("alice").sign(
        f"{protected}.{encoded}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    return Jws(protected, encoded, b64url(signature))


def run_jws(data: bytes) -> None:
    """Mode 0: ``header JSON | payload`` signed by alice; 1: JSON of the three members;
    2: DER certificates that become ``x5c`` under a header signed by alice. Through the
    channel's public ``verify`` (the one the CM and the gateway call)."""
    from trustflow_channel_jwe.channel import JweChannel

    jws = JweChannel()

    mode, parts = split_parts(data, 2)
    if mode % 3 == MODE_MEMBERS:
        try:
            members = json.loads(parts[0])
        except (ValueError, RecursionError):
            return
        jws.verify(Jws.from_dict(members))
    elif mode % 3 == MODE_HEADER:
        jws.verify(_sign(parts[0], parts[1]))
    else:
        x5c = [base64.b64encode(p).decode() for p in parts]
        header = json.dumps({"alg": "RS256", "x5c": x5c}).encode()
        jws.verify(_sign(header, b'{"owner_party_id":"fuzz"}'))


def _jws_seeds() -> list[bytes]:
    seeds = []
    for label in ("create_data_keys", "list_data_policy", "register_cert_alice"):
        raw = (compat() / "rpc" / f"{label}.jws.json").read_bytes()
        members = json.loads(raw)
        seeds.append(join_parts(MODE_MEMBERS, raw))
        seeds.append(
            join_parts(
                MODE_HEADER, unb64url(members["protected"]), unb64url(members.get("payload", ""))
            )
        )
    alice = (compat() / "keys" / "alice.crt").read_bytes()
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(alice)
    der = cert.public_bytes(serialization.Encoding.DER)
    seeds.append(join_parts(MODE_X5C, der))
    seeds.append(join_parts(MODE_X5C, der, der))
    seeds += [join_parts(MODE_X5C, der, bad) for bad in malformed_certificates(cert).values()]
    return seeds


# ---- TDX quotes and CSV reports ----------------------------------------------------------


def _when(raw: bytes) -> datetime | None:
    try:
        moment = datetime.fromisoformat(raw.decode("ascii").replace("Z", "+00:00"))
    except (ValueError, UnicodeDecodeError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def run_tdx(data: bytes) -> None:
    """``quote | collateral JSON (may be empty) | verification time``, through the verifier's
    public API (``report_from_evidence`` then ``verify``)."""
    from trustflow_tee_tdx.verifier import TdxVerifier

    quote, collateral, moment = split_parts(data, 3)[1][:3]
    now = _when(moment)
    if now is None:
        return
    report = TdxVerifier.report_from_evidence(quote, endorsements=collateral or None)
    verifier = TdxVerifier.from_settings({"require_crls": False})
    policy = Policy((Attributes(str_tee_platform="TDX"),))
    asyncio.run(verifier.verify(report, policy, now=now))


def _tdx_seeds() -> list[bytes]:
    tdx = testdata("attestation", "tdx")
    bundles = (
        ("dcap-qvl/tdx_quote", "dcap-qvl/tdx_quote_collateral.json", "2025-07-01T00:00:00Z"),
        (
            "dcap-qvl/tdx_quote_outdated",
            "dcap-qvl/tdx_quote_outdated_collateral.json",
            "2026-03-01T00:00:00Z",
        ),
        ("trustee/tdx_quote_4.dat", "", "2025-07-01T00:00:00Z"),
        ("trustee/tdx_quote_5.dat", "", "2025-07-01T00:00:00Z"),
        ("go-tdx-guest/cos-113-tdx-quote.dat", "", "2025-07-01T00:00:00Z"),
    )
    return [
        join_parts(0, (tdx / q).read_bytes(), (tdx / c).read_bytes() if c else b"", t.encode())
        for q, c, t in bundles
    ]


def run_csv(data: bytes) -> None:
    """``evidence | endorsements (may be empty)`` through ``report_from_evidence`` and
    ``verify`` (offline: no KDS)."""
    from trustflow_tee_csv.verifier import CsvVerifier

    evidence, endorsements = split_parts(data, 2)[1][:2]
    report = CsvVerifier.report_from_evidence(evidence, endorsements=endorsements or None)

    async def verify() -> None:
        async with CsvVerifier.from_settings({}) as verifier:
            await verifier.verify(report, Policy((Attributes(str_tee_platform="CSV"),)))

    asyncio.run(verify())


def _csv_seeds() -> list[bytes]:
    csv = testdata("attestation", "csv")
    report = (csv / "csv-rs" / "report.cert").read_bytes()
    hsk_cek = (csv / "csv-rs" / "hsk_cek.cert").read_bytes()
    hsk = (csv / "csv-rs" / "hsk.cert").read_bytes()
    cek = (csv / "csv-rs" / "cek.cert").read_bytes()
    endorsement_json = json.dumps(
        {
            "b64_hsk_cert": base64.b64encode(hsk).decode(),
            "b64_cek_cert": base64.b64encode(cek).decode(),
        }
    ).encode()
    return [
        join_parts(0, report, hsk_cek),
        join_parts(0, report, endorsement_json),
        join_parts(0, report),
        join_parts(0, (csv / "trustee" / "csv_evidence.json").read_bytes()),
    ]


# ---- gateway configuration -----------------------------------------------------------------

_CONFIG_FILE = Path(tempfile.mkdtemp(prefix="trustflow-fuzz-")) / "gateway.yml"


def run_gateway_config(data: bytes) -> None:
    """The YAML file loader (native and Envoy forms), from a real file."""
    from trustflow_core.roles.gateway.config import load_config

    _CONFIG_FILE.write_bytes(data)
    load_config(_CONFIG_FILE)


NATIVE_CONFIG = b"""\
listeners:
  - name: public
    address: 127.0.0.1:50001
    routes:
      - {prefix: /RaProxy, cluster: ra_proxy}
      - {prefix: /teeapp, cluster: teeapp, require_jwe: true}
    jwe: {cert_path: app.crt, private_key_path: app.key}
  - name: egress
    address: 127.0.0.1:31001
    tcp_proxy: peer
  - name: mtls_ingress
    address: 127.0.0.1:30001
    tcp_proxy: teeapp
    tls: {cert_path: tls.crt, private_key_path: tls.key, min_version: TLSv1.3}
clusters:
  ra_proxy: {endpoints: ["127.0.0.1:50002"], connect_timeout: 0.25}
  teeapp: {endpoints: ["127.0.0.1:8000"]}
  peer:
    endpoints: ["127.0.0.1:40001"]
    tls: {cert_path: tls.crt, private_key_path: tls.key}
max_body_bytes: 16777216
request_timeout: 15
"""


def _gateway_seeds() -> list[bytes]:
    envoy = testdata("envoy")
    files = sorted(p for p in envoy.iterdir() if p.name.endswith("envoy.yml"))
    return [NATIVE_CONFIG, *(p.read_bytes() for p in files)]


# ---- policy expressions ------------------------------------------------------------------

_POLICY_REQUEST = {
    "resource_uri": "data-1",
    "columns": ["age", "income"],
    "initiator_party_id": "YTV7SZYHPVQUFSQQZPJ4URGNNA55YTYOUR6UESVTU4WABMT6OR5Q",
    "scope": "default",
    "op_name": "psi",
    "attrs": '{"k":"v"}',
    "env": {
        "request_time": "2026-01-01T00:00:00Z",
        "tee": {"platform": "tdx", "mr_td": "ab" * 48, "debug": False},
    },
}


def run_policy(data: bytes) -> None:
    """``evaluate`` documents its outcomes: any compile or evaluation problem, or a
    non-boolean result, is ``False``; an evaluation that outruns its budget raises
    ``BudgetExceeded`` (the rule then fails closed)."""
    from trustflow_core.roles.capsule_manager.constraint_sandbox import BudgetExceeded
    from trustflow_core.roles.capsule_manager.policy import evaluate

    try:
        result = evaluate(text(data), _POLICY_REQUEST)
    except BudgetExceeded:
        return
    if not isinstance(result, bool):
        raise AssertionError(f"evaluate returned {result!r}")


def _policy_seeds() -> list[bytes]:
    found: list[str] = []
    request = json.loads((compat() / "rpc" / "create_data_policy.request.json").read_text())
    for rule in request["policy"]["rules"]:
        found += rule.get("global_constraints", [])
        for op in rule.get("op_constraints", []):
            found += op.get("constraints", [])
    found += [
        'r.env.tee.platform == "tdx"',
        'r.env.tee.platform == "sgx" && !r.env.tee.debug || r.op_name == "psi"',
        'r.columns.exists(c, c == "age") && size(r.columns) < 3',
        'r.initiator_party_id.startsWith("YTV") && r.attrs != ""',
        'timestamp(r.env.request_time) < timestamp("2030-01-01T00:00:00Z")',
        "r.columns[0] in ['age', 'income'] ? 1 + 2 * 3 > 6 : false",
    ]
    return [s.encode() for s in found]


# ---- the list ------------------------------------------------------------------------------


def _seeds(fn: Any) -> Any:
    return functools.cache(fn)


TARGETS: Sequence[Target] = (
    Target("capsule_v1", run_capsule_v1, _seeds(_v1_seeds), (CapsuleFormatError,)),
    Target("capsule_v2", run_capsule_v2, _seeds(_v2_seeds), (CapsuleFormatError,)),
    Target(
        "jwe_upstream",
        functools.partial(_run_jwe, "upstream"),
        _seeds(functools.partial(_jwe_seeds, "upstream")),
        (EnvelopeError,),
    ),
    Target(
        "jwe_rfc",
        functools.partial(_run_jwe, "rfc"),
        _seeds(functools.partial(_jwe_seeds, "rfc")),
        (EnvelopeError,),
    ),
    Target(
        "jwe_rfc_ecdh",
        _run_jwe_ecdh,
        _seeds(_jwe_ecdh_seeds),
        (EnvelopeError,),
    ),
    Target("jws_x5c", run_jws, _seeds(_jws_seeds), (EnvelopeError,)),
    Target("tdx_quote", run_tdx, _seeds(_tdx_seeds), (VerificationError, InvalidInput)),
    Target("csv_report", run_csv, _seeds(_csv_seeds), (VerificationError, InvalidInput)),
    Target("gateway_config", run_gateway_config, _seeds(_gateway_seeds), (InvalidInput,)),
    # At most 40 bytes until compiling is bounded in time (finding 3): cel-python's parser
    # takes seconds on a 61-character chain of "&&" (docs/fuzzing.md, "Known limits").
    Target("policy_expression", run_policy, _seeds(_policy_seeds), (), max_input=512),
)
