"""Capsule Manager modes: upstream-sim clients (no report) only with --allow-upstream-sim,
mTLS on the gRPC port, no own report with --plat none, configuration file and flag errors."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from trustflow_core.attestation import Attributes
from trustflow_core.cli import build_cli
from trustflow_core.errors import BackendUnavailable
from trustflow_core.harness.capsule_manager import BackgroundCapsuleManager
from trustflow_core.manager import get_plugin_manager
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.registry import VERIFIER, backends_of
from trustflow_core.roles.capsule_manager.settings import CMSettings, TlsSettings, load_settings
from trustflow_core.roles.capsule_manager_client.client import (
    CapsuleManagerClient,
    CapsuleManagerError,
)
from trustflow_core.roles.capsule_manager_client.keyexchange import ephemeral_credentials
from trustflow_core.settings_schema import ConfigError

pytestmark = pytest.mark.usefixtures("sim_env")

OWNER = ephemeral_credentials("owner")
APP = ephemeral_credentials("app")


def setup_data(client: CapsuleManagerClient, uuid: str, constraint: str) -> Any:
    async def go() -> None:
        await client.create_data_keys(OWNER, [(uuid, base64.b64encode(os.urandom(16)).decode())])
        rule = cm_pb2.Rule(rule_id="r", grantee_party_ids=[APP.party_id], columns=["*"])
        rule.op_constraints.add(op_name="op")
        rule.global_constraints.append(constraint)
        await client.create_data_policy(OWNER, "default", uuid, [rule])

    return go()


def request(uuid: str, env: str = "") -> cm_pb2.ResourceRequest:
    rr = cm_pb2.ResourceRequest(
        initiator_party_id=APP.party_id, scope="default", op_name="op", env=env
    )
    rr.resources.add(resource_uri=uuid)
    return rr


@pytest.mark.parametrize("allow", [False, True])
def test_upstream_sim_clients_without_report(allow: bool, tmp_path: Path) -> None:
    settings = CMSettings(port=0, data_dir=tmp_path, allow_upstream_sim=allow)
    with BackgroundCapsuleManager(settings) as cm:

        async def go() -> None:
            async with CapsuleManagerClient(cm.target) as client:
                uuid = "sim-" + os.urandom(4).hex()
                await setup_data(client, uuid, 'r.env.tee.platform == "sgx"')
                # an upstream sim client sends no report and may claim any env
                # (docs/compat.md#sim-client-env)
                claimed = json.dumps({"tee": {"platform": "sgx", "sgx": {}}})
                if not allow:
                    with pytest.raises(CapsuleManagerError) as err:
                        await client.get_data_keys(APP, request(uuid, claimed), None)
                    assert err.value.code == 7
                    return
                keys = await client.get_data_keys(APP, request(uuid, claimed), None)
                assert [k.resource_uri for k in keys] == [uuid]
                with pytest.raises(CapsuleManagerError) as err:  # no env: constraint fails
                    await client.get_data_keys(APP, request(uuid), None)
                assert err.value.code == 7
                with pytest.raises(CapsuleManagerError) as err:  # env must be Environment JSON
                    await client.get_data_keys(APP, request(uuid, '{"tee": {}}'), None)
                assert err.value.code == 13

        asyncio.run(go())


def test_plat_none_returns_no_report(tmp_path: Path) -> None:
    with BackgroundCapsuleManager(CMSettings(port=0, data_dir=tmp_path, plat="none")) as cm:

        async def go() -> tuple[str, Any]:
            async with CapsuleManagerClient(cm.target) as client:
                return await client.get_ra_cert("n")

        cert, report = asyncio.run(go())
        assert report is None and "BEGIN CERTIFICATE" in cert


def test_no_attester_named_and_no_development_default_returns_no_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without tee_sim (the development default), a CM with no ``plat`` is an upstream sim CM:
    no report; a client with no ``tee_plat`` checks nothing, as upstream sim clients."""
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "channel_jwe")
    with BackgroundCapsuleManager(CMSettings(port=0, data_dir=tmp_path)) as cm:

        async def go() -> tuple[str, Any]:
            async with CapsuleManagerClient(cm.target) as client:
                return await client.get_ra_cert("n")

        cert, report = asyncio.run(go())
        assert report is None and "BEGIN CERTIFICATE" in cert


def _cert(
    name: str, key: rsa.RSAPrivateKey, issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None, ca: bool
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def test_mtls(tmp_path: Path) -> None:
    pem = serialization.Encoding.PEM
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = _cert("ca", ca_key, None, True)
    files = {}
    for name in ("server", "client"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _cert("localhost" if name == "server" else name, key, (ca.subject, ca_key), False)
        (tmp_path / f"{name}.crt").write_bytes(cert.public_bytes(pem))
        (tmp_path / f"{name}.key").write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        files[name] = (
            (tmp_path / f"{name}.key").read_bytes(),
            (tmp_path / f"{name}.crt").read_bytes(),
        )
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(pem))
    tls = TlsSettings(tmp_path / "server.crt", tmp_path / "server.key", tmp_path / "ca.crt")
    settings = CMSettings(host="localhost", port=0, data_dir=tmp_path / "cm", tls=tls)
    with BackgroundCapsuleManager(settings) as cm:
        target = f"localhost:{cm.port}"

        async def call(creds: grpc.ChannelCredentials | None) -> str:
            async with CapsuleManagerClient(target, channel_credentials=creds, timeout=5) as c:
                cert, _ = await c.get_ra_cert()
                return cert

        root = ca.public_bytes(pem)
        good = grpc.ssl_channel_credentials(root, *files["client"])
        assert "BEGIN CERTIFICATE" in asyncio.run(call(good))
        with pytest.raises(BackendUnavailable):  # no client certificate
            asyncio.run(call(grpc.ssl_channel_credentials(root)))
        with pytest.raises(BackendUnavailable):  # plaintext to a TLS port
            asyncio.run(call(None))
        # the owner CLI over mTLS (upstream YAML: root_ca_file, private_key_file, cert_chain_file)
        config = tmp_path / "owner.yaml"
        tls_keys = {
            "root_ca_file": str(tmp_path / "ca.crt"),
            "private_key_file": str(tmp_path / "client.key"),
            "cert_chain_file": str(tmp_path / "client.crt"),
        }
        config.write_text(json.dumps({"host": target, "tee_plat": "sim", **tls_keys}))
        result = CliRunner().invoke(
            build_cli(), ["cms", "--config-file", str(config), "get-public-key"]
        )
        assert result.exit_code == 0, result.output
        assert result.output.startswith("-----BEGIN PUBLIC KEY-----")
        config.write_text(json.dumps({"host": target, "tee_plat": "sim"}))  # no TLS: refused
        result = CliRunner().invoke(
            build_cli(), ["cms", "--config-file", str(config), "get-public-key"]
        )
        assert result.exit_code == 1 and result.output.startswith("Error:")


def test_settings_file_and_overrides(tmp_path: Path) -> None:
    config = tmp_path / "cm.yaml"
    config.write_text(
        f"port: 9999\nplat: none\ndata_dir: {tmp_path}\nstorage: {{url: 'sqlite:///x.db'}}\n"
        "attestation:\n  allow_upstream_sim: true\n  main_attributes:\n"
        "    - {str_tee_platform: TDX, hex_ta_measurement: 'aa'}\n"
    )
    s = load_settings(config, port=1234)
    assert s.port == 1234 and s.plat == "none" and s.db_url == "sqlite:///x.db"
    assert s.allow_upstream_sim is True
    verifiers = backends_of(get_plugin_manager(), VERIFIER).values()
    policy = s.attestation_policy(verifiers, attester_simulated=False)
    assert policy.main_attributes[0].hex_ta_measurement == "aa"
    assert policy.allow_simulation is False
    default = load_settings(None, data_dir=tmp_path)
    assert default.db_url == f"sqlite:///{tmp_path / 'cm.db'}"
    # Default entries come from the installed verifiers (an SGX backend would add its own);
    # simulated ones only when simulation is allowed.
    with_sim = default.attestation_policy(verifiers, attester_simulated=True)
    assert with_sim.allow_simulation is True
    assert set(with_sim.main_attributes) == {v.acceptance_entry() for v in verifiers}
    assert Attributes(str_tee_platform="SIM", bool_debug_disabled="true") in set(
        with_sim.main_attributes
    )
    real = default.attestation_policy(verifiers, attester_simulated=False)
    assert set(real.main_attributes) == {v.acceptance_entry() for v in verifiers if not v.simulated}
    for bad, message in (
        ("nonsense: 1\n", ": unknown key(s) nonsense; known: "),
        ("port: many\n", ": port: expected an integer 0..65535, got 'many'"),
        ("storage: {bogus: 1}\n", ": storage: unknown key(s) bogus; known: "),
        ("tls: {cert_file: a}\n", ": tls: missing required key(s) key_file"),
        ("- a list\n", ": expected a mapping at the top, got a list"),
        ("key: [unclosed\n", ": not valid YAML: line 2, column 1: expected ',' or ']'"),
        ("requests: {max_age_seconds: -1}\n", ": requests.max_age_seconds: expected an integer"),
    ):
        config.write_text(bad)
        with pytest.raises(ConfigError) as caught:
            load_settings(config)
        assert str(caught.value).startswith(f"{config}{message}"), str(caught.value)


def test_command_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("nonsense: 1\n")
    result = runner.invoke(build_cli(), ["capsule-manager", "-c", str(bad)])
    assert result.exit_code == 1
    assert result.output.startswith(f"config error: {bad}: unknown key(s) nonsense; known: ")
    assert len(result.output.strip().splitlines()) == 1
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "cm.key").write_text("x")  # half an identity
    result = runner.invoke(
        build_cli(),
        ["capsule-manager", "--plat", "none", "--port", "0", "--data-dir", str(tmp_path / "d")],
    )
    assert result.exit_code == 1 and "incomplete" in result.output
