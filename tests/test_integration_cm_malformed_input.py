"""Malformed input sent to a real ``trustflow capsule-manager`` process on 127.0.0.1; each
request gets an in-band status with one line naming the problem, and the CM's log shows no
traceback (no "internal error").

* Certificates (finding 10): owner requests whose JWS ``x5c`` holds a certificate broken in one
  way (unknown key algorithm, bad X.509 version, garbage DER, wrong base64, ...), a
  RegisterCert with such a PEM chain and an app request with such a ``cert``: ``Crypto error``
  (13) naming the entry.
* JSON nested deeper than the parser's recursion limit (found by fuzzing): as the JWS, as an
  app's attestation report (SIM, TDX and CSV verifiers) and as a data export certificate.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf.message import Message
from trustflow_core.manager import get_plugin_manager
from trustflow_core.proto.secretflowapis.v2.sdc import ual_pb2
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient, Credentials
from trustflow_core.roles.capsule_manager_client.keyexchange import ephemeral_credentials
from trustflow_core.testing.certs import malformed_certificates, malformed_x5c_entries, to_pem
from trustflow_core.wire import to_json

TRUSTFLOW = str(Path(sys.executable).parent / "trustflow")
DEEP_JSON = "[" * 100_000 + "]" * 100_000
ALICE = ephemeral_credentials("alice", key_size=2048)
X5C = malformed_x5c_entries(ALICE.chain[0])
DER = malformed_certificates(ALICE.chain[0])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class CapsuleManagerProcess:
    """``trustflow capsule-manager --plat sim --port 0`` with its log collected."""

    def __init__(self, data_dir: Path) -> None:
        args = [TRUSTFLOW, "capsule-manager", "--plat", "sim", "--port", "0"]
        args += ["--data-dir", str(data_dir / "cm")]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port = self._wait_listening()
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _wait_listening(self) -> int:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"capsule manager exited: {self.proc.wait()}")
            self.lines.append(line)
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                return int(found.group(1))
        raise AssertionError("capsule manager did not start")

    def _read_rest(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def stop(self) -> str:
        """Stop it and return its whole log."""
        self.proc.terminate()
        self.proc.wait(30)
        self._drain.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return "".join(self.lines)


@pytest.fixture(scope="module")
def cm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CapsuleManagerProcess]:
    """The CM process; the client's sim verifier trusts its sim platform key (same dir)."""
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("cm")
    mp.setenv("TRUSTFLOW_LOAD_PLUGINS", "channel_jwe,tee_sim,tee_tdx,tee_csv")
    mp.setenv("TRUSTFLOW_SIM_DIR", str(tmp / "sim"))
    server = CapsuleManagerProcess(tmp)
    try:
        yield server
    finally:
        log = server.stop()
        mp.undo()
        assert "Traceback" not in log, log
        assert "failed unexpectedly" not in log, log


def call(cm: CapsuleManagerProcess, method: str, build: Any) -> cm_pb2.EncryptedResponse:
    """Build an ``EncryptedRequest`` with ``await build(client)`` and send it raw."""

    async def go() -> cm_pb2.EncryptedResponse:
        pm = get_plugin_manager()
        client = CapsuleManagerClient(f"127.0.0.1:{cm.port}", pm=pm, verify_sim=True)
        try:
            response: cm_pb2.EncryptedResponse = await client._call(method, await build(client))
            return response
        finally:
            await client.aclose()

    return asyncio.run(go())


def signed(
    inner: Message, signer: Credentials, x5c: list[str] | None, edit: Any = lambda text: text
) -> Any:
    """An envelope builder: ``inner`` signed (RS256) by ``signer``'s key under a JWS header
    carrying ``x5c`` as given (none for None, as the SDK's RegisterCert), sealed to the CM;
    the JWS JSON text is ``edit(text)``."""

    async def build(client: CapsuleManagerClient) -> cm_pb2.EncryptedRequest:
        header: dict[str, Any] = {"alg": "RS256"}
        if x5c is not None:
            header["x5c"] = x5c
        protected = b64url(json.dumps(header).encode())
        payload = b64url(to_json(inner, style="sdk").encode())
        signature = signer.private_key.sign(
            f"{protected}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        jws = {"protected": protected, "payload": payload, "signature": b64url(signature)}
        text = edit(json.dumps(jws)).encode()
        return await client.seal_request(text)

    return build


def list_policies() -> cm_pb2.ListDataPolicyRequest:
    return cm_pb2.ListDataPolicyRequest(owner_party_id=ALICE.party_id, scope="default")


def assert_crypto_error(response: cm_pb2.EncryptedResponse, *names: str) -> None:
    status = response.status
    assert status.code == 13, status
    assert status.message.startswith("err code: Crypto error; err detail: "), status.message
    assert "\n" not in status.message and "Traceback" not in status.message
    for name in names:
        assert name in status.message, status.message
    assert not response.HasField("message")


def test_well_formed_x5c_is_accepted(cm: CapsuleManagerProcess) -> None:
    good = base64.b64encode(ALICE.chain[0].public_bytes(Encoding.DER)).decode()
    response = call(cm, "ListDataPolicy", signed(list_policies(), ALICE, [good]))
    assert response.status.code == 0, response.status


@pytest.mark.parametrize("kind", sorted(X5C))
def test_malformed_x5c_leaf_is_a_crypto_error(cm: CapsuleManagerProcess, kind: str) -> None:
    response = call(cm, "ListDataPolicy", signed(list_policies(), ALICE, [X5C[kind]]))
    assert_crypto_error(response, "x5c[0]")


@pytest.mark.parametrize("kind", sorted(DER))
def test_malformed_x5c_issuer_is_a_crypto_error(cm: CapsuleManagerProcess, kind: str) -> None:
    """The broken certificate second in the chain: its key would verify x5c[0]."""
    leaf = base64.b64encode(ALICE.chain[0].public_bytes(Encoding.DER)).decode()
    request = cm_pb2.CreateDataKeysRequest(
        owner_party_id=ALICE.party_id,
        data_keys=[cm_pb2.DataKey(resource_uri="x5c-issuer", data_key_b64="A" * 22 + "==")],
    )
    response = call(cm, "CreateDataKeys", signed(request, ALICE, [leaf, X5C[kind]]))
    assert_crypto_error(response, "x5c[1]")


@pytest.mark.parametrize("kind", sorted(DER))
def test_malformed_register_cert_chain_is_a_crypto_error(
    cm: CapsuleManagerProcess, kind: str
) -> None:
    request = cm_pb2.RegisterCertRequest(
        owner_party_id=ALICE.party_id, certs=[to_pem(DER[kind])], scheme="RSA"
    )
    response = call(cm, "RegisterCert", signed(request, ALICE, None))
    assert_crypto_error(response, "certs[0]")


@pytest.mark.parametrize("kind", sorted(DER))
def test_malformed_app_cert_is_a_crypto_error(cm: CapsuleManagerProcess, kind: str) -> None:
    request = cm_pb2.GetDataKeysRequest(
        cert=to_pem(DER[kind]),
        resource_request=cm_pb2.ResourceRequest(
            initiator_party_id=ALICE.party_id,
            scope="default",
            op_name="psi",
            resources=[cm_pb2.ResourceRequest.Resource(resource_uri="x5c-app")],
        ),
    )
    good = base64.b64encode(ALICE.chain[0].public_bytes(Encoding.DER)).decode()
    response = call(cm, "GetDataKeys", signed(request, ALICE, [good]))
    assert_crypto_error(response, "cert")


# ---- JSON nested too deeply ------------------------------------------------------------------


def sealed_plaintext(plaintext: bytes) -> Any:
    """An envelope builder: ``plaintext`` sealed to the CM as a signed request's JWE."""

    async def build(client: CapsuleManagerClient) -> cm_pb2.EncryptedRequest:
        return await client.seal_request(plaintext)

    return build


def assert_one_line(response: cm_pb2.EncryptedResponse, code: int, text: str) -> None:
    status = response.status
    assert status.code == code, status
    assert "\n" not in status.message and text in status.message, status.message


def test_deeply_nested_jws_is_a_decode_error(cm: CapsuleManagerProcess) -> None:
    response = call(cm, "ListDataPolicy", sealed_plaintext(DEEP_JSON.encode()))
    assert_one_line(response, 13, "err code: Decode error; err detail: JWS is not JSON")


def app_request(platform: str, json_report: str) -> cm_pb2.GetDataKeysRequest:
    return cm_pb2.GetDataKeysRequest(
        cert=ALICE.chain_pems[0],
        resource_request=cm_pb2.ResourceRequest(
            initiator_party_id=ALICE.party_id,
            scope="default",
            op_name="psi",
            resources=[cm_pb2.ResourceRequest.Resource(resource_uri="deep-report")],
        ),
        attestation_report=ual_pb2.UnifiedAttestationReport(
            str_report_version="1.0",
            str_report_type="Passport",
            str_tee_platform=platform,
            json_report=json_report,
        ),
    )


@pytest.mark.parametrize("platform", ["SIM", "TDX", "CSV"])
def test_deeply_nested_report_is_refused(cm: CapsuleManagerProcess, platform: str) -> None:
    good = base64.b64encode(ALICE.chain[0].public_bytes(Encoding.DER)).decode()
    request = app_request(platform, DEEP_JSON)
    response = call(cm, "GetDataKeys", signed(request, ALICE, [good]))
    assert_one_line(response, 7, "attestation report verify failed: format: ")


def test_tdx_collateral_with_unpaired_surrogate_is_refused(cm: CapsuleManagerProcess) -> None:
    """JSON may escape a lone surrogate (``\\ud800``), which no UTF-8 text can hold."""
    collateral = json.dumps({"pck_crl": "\ud800"})
    report = json.dumps({"b64_quote": "AAAA", "json_collateral": collateral})
    good = base64.b64encode(ALICE.chain[0].public_bytes(Encoding.DER)).decode()
    response = call(cm, "GetDataKeys", signed(app_request("TDX", report), ALICE, [good]))
    assert_one_line(response, 7, "json_collateral: collateral field 'pck_crl' is not valid Unicode")


def test_deeply_nested_env_is_a_decode_error(cm: CapsuleManagerProcess) -> None:
    """An app's ``resource_request.env`` (read before attestation, as upstream)."""
    request = app_request("SIM", "{}")
    request.resource_request.env = DEEP_JSON
    good = base64.b64encode(ALICE.chain[0].public_bytes(Encoding.DER)).decode()
    response = call(cm, "GetDataKeys", signed(request, ALICE, [good]))
    assert_one_line(response, 13, "err code: Decode error; err detail: env is not JSON")


def test_deeply_nested_export_certificate_is_a_decode_error(cm: CapsuleManagerProcess) -> None:
    keys = cm_pb2.CreateDataKeysRequest(
        owner_party_id=ALICE.party_id,
        data_keys=[cm_pb2.DataKey(resource_uri="deep-export", data_key_b64="A" * 22 + "==")],
    )
    good = base64.b64encode(ALICE.chain[0].public_bytes(Encoding.DER)).decode()
    assert call(cm, "CreateDataKeys", signed(keys, ALICE, [good])).status.code == 0
    request = cm_pb2.GetExportDataKeyRequest(
        request_party_id=ALICE.party_id,
        resource_uri="deep-export",
        data_export_certificate=DEEP_JSON,
    )
    response = call(cm, "GetExportDataKey", signed(request, ALICE, [good]))
    assert_one_line(response, 13, "data_export_certificate is not JSON")


# ---- the JWS is strict JSON (trustflow_core.jose) -----------------------------------------

OTHER_PAYLOAD = b64url(to_json(cm_pb2.ListDataPolicyRequest(scope="other"), style="sdk").encode())
JWS_EDITS = {
    # two parsers could read different payloads: which one did the signature cover?
    "duplicate payload": lambda t: t.replace(
        '{"protected"', f'{{"payload": "{OTHER_PAYLOAD}", "protected"', 1
    ),
    "NaN": lambda t: t[:-1] + ', "x": NaN}',
    "unpaired surrogate": lambda t: t[:-1] + ', "x": "\\ud800"}',
}


@pytest.mark.parametrize("edit", sorted(JWS_EDITS))
def test_jws_that_is_not_strict_json_is_a_decode_error(
    cm: CapsuleManagerProcess, edit: str
) -> None:
    """Before: the CM parsed the JWS leniently (the last duplicate won; NaN and an escaped
    unpaired surrogate passed) and answered 0."""
    good = base64.b64encode(ALICE.chain[0].public_bytes(Encoding.DER)).decode()
    response = call(cm, "ListDataPolicy", signed(list_policies(), ALICE, [good], JWS_EDITS[edit]))
    assert_one_line(response, 13, "err code: Decode error; err detail: JWS is not JSON")
