"""``trustflow demo interact`` (scenario 3 on loopback): CM, both Data Capsule Proxies fetching
the group TLS asset, both gateways (mTLS ingress / plain egress with mTLS upstream) and both apps;
each app prints the line the upstream interact sample prints, and an outsider with another
group's certificate is refused at the handshake."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from cryptography.x509.oid import NameOID

from trustflow_core.cli import build_cli
from trustflow_core.identity import load_pem_chain, party_id_of_chain
from trustflow_core.tls_asset import load_tls_asset

PLUGINS = "channel_jwe,channel_mtls,tee_sim,storage_local"


def expected_line(responder: str, sender: str) -> str:
    """The interact scenario: ``print("response: ", text)`` of the upstream app."""
    body = json.dumps({"message": f"Hello from {sender}!"})
    return f"response:  Hi, I'm {responder}. I got your message: {body}"


def test_demo_interact_prints_both_apps_lines(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TRUSTFLOW_SIM_DIR", str(tmp_path / "sim"))
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", PLUGINS)
    result = CliRunner().invoke(build_cli(), ["demo", "interact"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        expected_line("Carol", "Bob"),  # bob's side
        expected_line("Bob", "Carol"),  # carol's side
    ]
    assert "at carol's ingress: refused" in result.stderr


@pytest.mark.asyncio
async def test_both_parties_hold_leaves_of_one_group_for_their_own_keys(
    monkeypatch, tmp_path
) -> None:
    from trustflow_core.demo.interact import PARTIES, run_interact

    monkeypatch.setenv("TRUSTFLOW_SIM_DIR", str(tmp_path / "sim"))
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", PLUGINS)
    result = await run_interact(work=tmp_path / "work")
    assert result.lines == {
        "bob": expected_line("Carol", "Bob"),
        "carol": expected_line("Bob", "Carol"),
    }
    for party in PARTIES:
        deploy = tmp_path / "work" / party / "deploy"
        info = load_tls_asset(deploy / "tls.crt", deploy / "tls.key")[1]
        assert info.anchor_fingerprint == result.group_ca
        cn = info.leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        app_cert = (tmp_path / "work" / party / f"{party}.crt").read_bytes()
        assert cn == party_id_of_chain(load_pem_chain(app_cert))
        assert (deploy / "tls.key").stat().st_mode & 0o777 == 0o600
    assert result.outsider_refusal  # run_interact raises if the outsider got an answer
