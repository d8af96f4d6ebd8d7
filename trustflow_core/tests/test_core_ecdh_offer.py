"""The ECDH offer's pieces without servers: what counts as an offer certificate, how the RA
Proxy builds ``cert`` with it, and how the gateway config and JWE filter load the P-256 key."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustflow_core.demo.online import write_app_identity, write_ecdh_identity
from trustflow_core.ecdh_offer import KEY_AGREEMENT_ONLY, find_offer, is_offer, offer_certificate
from trustflow_core.errors import InvalidInput, VerificationError
from trustflow_core.roles.gateway.config import load_config
from trustflow_core.roles.gateway.jwe_filter import JweFilter
from trustflow_core.roles.ra_proxy.settings import RaProxySettings
from trustflow_core.settings_schema import ConfigError


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def cert_with(key, usage: x509.KeyUsage | None, *, critical: bool = True) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if usage is not None:
        builder = builder.add_extension(usage, critical=critical)
    return builder.sign(key, hashes.SHA256())


def test_what_counts_as_an_offer():
    assert is_offer(offer_certificate(p256()))
    ca_usage = x509.KeyUsage(False, False, False, False, True, True, True, False, False)
    assert not is_offer(cert_with(p256(), ca_usage))  # a chain's CA certificate
    assert not is_offer(cert_with(p256(), None))
    assert not is_offer(cert_with(p256(), KEY_AGREEMENT_ONLY, critical=False))
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert not is_offer(cert_with(p384, KEY_AGREEMENT_ONLY))
    with pytest.raises(ValueError, match="P-256"):
        offer_certificate(p384)


def test_find_offer_skips_the_first_and_refuses_two():
    offer = offer_certificate(p256())
    assert find_offer([offer]) is None  # the first certificate is the RSA one, never an offer
    first = cert_with(p256(), None)
    found = find_offer([first, offer])
    assert found is not None and found.public_numbers() == offer.public_key().public_numbers()
    with pytest.raises(VerificationError, match="2 ECDH offers"):
        find_offer([first, offer, offer_certificate(p256())])


def test_ra_proxy_cert_is_the_rsa_cert_then_the_offer(tmp_path: Path):
    cert, _ = write_app_identity(tmp_path, "app")
    offer, _ = write_ecdh_identity(tmp_path, "app-ecdh")
    plain = RaProxySettings(cert_path=cert).read_cert()
    assert plain == cert.read_bytes()
    bundle = RaProxySettings(cert_path=cert, ecdh_cert_path=offer).read_cert()
    assert bundle == cert.read_bytes() + offer.read_bytes()
    certs = x509.load_pem_x509_certificates(bundle)
    # upstream clients load the first certificate: still the RSA one
    assert x509.load_pem_x509_certificate(bundle) == certs[0] and find_offer(certs) is not None


def test_ra_proxy_refuses_a_non_offer(tmp_path: Path):
    cert, _ = write_app_identity(tmp_path, "app")
    plain_ec = tmp_path / "plain-ec.crt"
    plain_ec.write_bytes(cert_with(p256(), None).public_bytes(serialization.Encoding.PEM))
    for bad in (cert, plain_ec):
        with pytest.raises(InvalidInput, match="keyUsage of keyAgreement only"):
            RaProxySettings(cert_path=cert, ecdh_cert_path=bad).read_cert()


def gateway_file(tmp_path: Path, jwe: dict) -> Path:
    config = {
        "listeners": [
            {
                "name": "l",
                "address": "127.0.0.1:0",
                "routes": [{"prefix": "/", "cluster": "app"}],
                "jwe": jwe,
            },
        ],
        "clusters": {"app": {"endpoints": ["127.0.0.1:1"]}},
    }
    path = tmp_path / "gateway.yml"
    path.write_text(json.dumps(config))
    return path


def test_gateway_loads_the_ecdh_pair(tmp_path: Path):
    write_app_identity(tmp_path, "app")
    write_ecdh_identity(tmp_path, "app-ecdh")
    write_ecdh_identity(tmp_path, "other")
    jwe = {"cert_path": "app.crt", "private_key_path": "app.key"}
    pair = {"ecdh_cert_path": "app-ecdh.crt", "ecdh_private_key_path": "app-ecdh.key"}
    config = load_config(gateway_file(tmp_path, jwe | pair)).listeners[0].jwe
    assert config is not None and config.ecdh_private_key_path == tmp_path / "app-ecdh.key"
    assert JweFilter.load(config, {})._ecdh_key is not None
    with pytest.raises(ConfigError, match="go together"):
        load_config(gateway_file(tmp_path, jwe | {"ecdh_cert_path": "app-ecdh.crt"}))
    mismatched = jwe | pair | {"ecdh_private_key_path": "other.key"}
    with pytest.raises(InvalidInput, match="does not belong to"):
        JweFilter.load(load_config(gateway_file(tmp_path, mismatched)).listeners[0].jwe, {})
    rsa_as_ecdh = jwe | {"ecdh_cert_path": "app.crt", "ecdh_private_key_path": "app.key"}
    with pytest.raises(InvalidInput, match="must be an EC P-256 key"):
        JweFilter.load(load_config(gateway_file(tmp_path, rsa_as_ecdh)).listeners[0].jwe, {})


# ---- as an operator runs it --------------------------------------------------------------------

TRUSTFLOW = shutil.which("trustflow", path=str(Path(sys.executable).parent)) or "trustflow"


def trustflow(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TRUSTFLOW_SIM_DIR": str(tmp_path / "sim"),
        "TRUSTFLOW_LOAD_PLUGINS": "tee_sim,channel_jwe",
    }
    return subprocess.run(
        [TRUSTFLOW, *args], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


def test_generate_ecdh_keypair_and_ra_proxy_check_config(tmp_path: Path):
    made = trustflow(
        tmp_path,
        "util",
        "generate-ecdh-keypair",
        "--private-key-file",
        "e.key",
        "--cert-file",
        "e.crt",
    )
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "e.key").stat().st_mode & 0o777 == 0o600
    assert is_offer(x509.load_pem_x509_certificate((tmp_path / "e.crt").read_bytes()))
    write_app_identity(tmp_path, "app")
    ok = trustflow(
        tmp_path,
        "ra-proxy",
        "--cert-path",
        "app.crt",
        "--ecdh-cert-path",
        "e.crt",
        "--check-config",
    )
    assert ok.returncode == 0 and "configuration OK" in ok.stdout + ok.stderr, ok.stderr
    (tmp_path / "ra.yaml").write_text("cert_path: app.crt\necdh_cert_path: e.crt\n")
    assert trustflow(tmp_path, "ra-proxy", "-c", "ra.yaml", "--check-config").returncode == 0
    bad = trustflow(
        tmp_path,
        "ra-proxy",
        "--cert-path",
        "app.crt",
        "--ecdh-cert-path",
        "app.crt",
        "--check-config",
    )
    assert bad.returncode != 0 and "keyUsage of keyAgreement only" in bad.stderr
