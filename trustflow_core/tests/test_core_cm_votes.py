"""Data-export votes: the compat certificates, our producer, and our fixes
(docs/compat.md#votes)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from trustflow_core.identity import party_id_of_key
from trustflow_core.roles.capsule_manager_protocol.errors import CMError, Kind
from trustflow_core.roles.capsule_manager_protocol.votes import (
    sign_vote_request,
    verify_export_certificate,
    vote_result,
    voter_sign,
)


def _key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture
def ctx(compat_dir: Path, compat_manifest: dict[str, Any]) -> dict[str, Any]:
    parties = compat_manifest["parties"]
    return {
        "dir": compat_dir,
        "alice": parties["alice"]["party_id"],
        "carol": parties["carol"]["party_id"],
        "uri": compat_manifest["resources"]["small"]["resource_uri"],
    }


def test_compat_vote_result_accepted(ctx: dict[str, Any]) -> None:
    text = (ctx["dir"] / "votes" / "vote_result.json").read_text()
    verify_export_certificate(text, ctx["carol"], ctx["uri"], {ctx["alice"]})
    # the requester as only owner needs nobody's vote
    verify_export_certificate(text, ctx["carol"], ctx["uri"], {ctx["carol"]})


def test_compat_vote_result_is_the_rpc_certificate(ctx: dict[str, Any]) -> None:
    request = json.loads((ctx["dir"] / "rpc" / "get_export_data_key.request.json").read_text())
    text = (ctx["dir"] / "votes" / "vote_result.json").read_text()
    assert json.loads(request["data_export_certificate"]) == json.loads(text)


def test_compat_novote_refused(ctx: dict[str, Any]) -> None:
    text = (ctx["dir"] / "votes" / "vote_result_novote.json").read_text()
    with pytest.raises(CMError, match="not all ancestors are voting") as err:
        verify_export_certificate(text, ctx["carol"], ctx["uri"], {ctx["alice"]})
    assert err.value.code == 13


@pytest.mark.parametrize(
    ("requester", "uri", "match"),
    [
        ("alice", "uri", "wrong derived from public key"),
        ("carol", "other-uuid", "is not the same as expected"),
    ],
)
def test_wrong_requester_or_resource(
    ctx: dict[str, Any], requester: str, uri: str, match: str
) -> None:
    text = (ctx["dir"] / "votes" / "vote_result.json").read_text()
    with pytest.raises(CMError, match=match):
        verify_export_certificate(text, ctx[requester], ctx.get(uri, uri), {ctx["alice"]})


def test_our_producer_matches_cms_util(ctx: dict[str, Any]) -> None:
    d = ctx["dir"]
    spec = yaml.safe_load((d / "votes" / "vote_request.yaml").read_text())["vote_request"]
    chain = [(d / p).read_text() for p in spec.pop("cert_chain_file")]
    key = _key(d / spec.pop("private_key_file"))
    signed = sign_vote_request(spec, chain, key)
    expected = yaml.safe_load((d / "votes" / "vote_request.signed.yaml").read_text())
    assert signed == expected  # RS256 (PKCS#1 v1.5) is deterministic
    voter = yaml.safe_load((d / "votes" / "voter_alice.yaml").read_text())
    vchain = [(d / p).read_text() for p in voter.pop("cert_chain_file")]
    vkey = _key(d / voter.pop("private_key_file"))
    vsig = voter.pop("vote_request_signature")
    signed_voter = voter_sign(voter, vsig, vchain, vkey)
    assert signed_voter == yaml.safe_load((d / "votes" / "voter_alice.signed.yaml").read_text())
    text = vote_result(signed, [signed_voter])
    assert json.loads(text) == json.loads((d / "votes" / "vote_result.json").read_text())


def _party(
    cn: str, issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None = None
) -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(issuer_key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def people() -> dict[str, tuple[rsa.RSAPrivateKey, str]]:
    return {n: _party(n) for n in ("req", "alice", "bob", "mallory")}


def _pid(p: tuple[rsa.RSAPrivateKey, str]) -> str:
    return party_id_of_key(p[0].public_key())


def _cert(people: dict[str, Any], uri: str, voters: list[tuple[str, list[str], str]]) -> str:
    req_key, req_pem = people["req"]
    fields = {
        "type": "TEE_DOWNLOAD",
        "approved_threshold": 1,
        "approved_action": f"tee/download,{uri}",
    }
    signed = sign_vote_request(fields, [req_pem], req_key)
    invites = [
        voter_sign({"action": action}, signed["vote_request_signature"], chain, people[signer][0])
        for signer, chain, action in voters
    ]
    return vote_result(signed, invites)


def test_all_owners_must_approve(people: dict[str, Any]) -> None:
    owners = {_pid(people["alice"]), _pid(people["bob"])}
    a, b = people["alice"][1], people["bob"][1]
    ok = _cert(people, "u", [("alice", [a], "APPROVE"), ("bob", [b], "APPROVE")])
    verify_export_certificate(ok, _pid(people["req"]), "u", owners)
    with pytest.raises(CMError, match="not all ancestors"):  # duplicates count once
        verify_export_certificate(
            _cert(people, "u", [("alice", [a], "APPROVE"), ("alice", [a], "APPROVE")]),
            _pid(people["req"]),
            "u",
            owners,
        )
    with pytest.raises(CMError, match="not approve"):
        verify_export_certificate(
            _cert(people, "u", [("alice", [a], "APPROVE"), ("bob", [b], "REJECT")]),
            _pid(people["req"]),
            "u",
            owners,
        )


def test_voter_cannot_claim_another_party(people: dict[str, Any]) -> None:
    # docs/compat.md#votes: mallory appends alice's public cert to her own chain to vote as alice
    owners = {_pid(people["alice"])}
    forged = _cert(
        people, "u", [("mallory", [people["mallory"][1], people["alice"][1]], "APPROVE")]
    )
    with pytest.raises(CMError) as err:
        verify_export_certificate(forged, _pid(people["req"]), "u", owners)
    assert err.value.kind is Kind.ASSERT and "verify signature failed" in err.value.detail


def test_tampering_refused(people: dict[str, Any]) -> None:
    a = people["alice"][1]
    owners = {_pid(people["alice"])}
    good = json.loads(_cert(people, "u", [("alice", [a], "APPROVE")]))
    req = _pid(people["req"])
    import base64

    # request body altered (other resource), signature kept
    bad = json.loads(json.dumps(good))
    body = json.loads(base64.b64decode(bad["vote_request"]["body"]))
    body["approved_action"] = "tee/download,v"
    bad["vote_request"]["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    with pytest.raises(CMError, match="signature verify failed"):
        verify_export_certificate(json.dumps(bad), req, "v", owners)
    # voter signature over another request
    bad = json.loads(json.dumps(good))
    bad["vote_invite"][0]["body"] = base64.b64encode(b'{"action": "APPROVE", "x": 1}').decode()
    with pytest.raises(CMError, match="voter signature verify failed"):
        verify_export_certificate(json.dumps(bad), req, "u", owners)
    for junk in ("", "[]", "{", '{"vote_request": 1}'):
        with pytest.raises(CMError) as err:
            verify_export_certificate(junk, req, "u", owners)
        assert err.value.code == 13


def test_util_vote_commands_reproduce_cms_util(
    ctx: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from trustflow_core.cli.util import util

    d = ctx["dir"]
    monkeypatch.chdir(d)  # the YAML files name keys relative to the compat directory
    runner = CliRunner()

    def run(*args: str) -> None:
        result = runner.invoke(util, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output

    run(
        "sign-vote-request",
        "--vote-request-file",
        "votes/vote_request.yaml",
        "--signed-vote-request-file",
        str(tmp_path / "req.yaml"),
    )
    expected = yaml.safe_load((d / "votes" / "vote_request.signed.yaml").read_text())
    assert yaml.safe_load((tmp_path / "req.yaml").read_text()) == expected
    run(
        "voter-sign",
        "--voter-file",
        "votes/voter_alice.yaml",
        "--signed-voter-file",
        str(tmp_path / "alice.yaml"),
    )
    expected = yaml.safe_load((d / "votes" / "voter_alice.signed.yaml").read_text())
    assert yaml.safe_load((tmp_path / "alice.yaml").read_text()) == expected
    run(
        "generate-vote-result",
        "--signed-vote-request-file",
        str(tmp_path / "req.yaml"),
        "--signed-voter-files",
        str(tmp_path / "alice.yaml"),
        "--vote-result-file",
        str(tmp_path / "result.json"),
    )
    result = json.loads((tmp_path / "result.json").read_text())
    assert result == json.loads((d / "votes" / "vote_result.json").read_text())


def test_util_vote_commands_errors(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from trustflow_core.cli import TrustflowGroup
    from trustflow_core.cli.util import util

    group = TrustflowGroup(name="trustflow")
    group.add_command(util)
    bad = tmp_path / "bad.yaml"
    for text, match in (
        ("vote_request: {type: X}\n", "cert_chain_file"),
        ("nothing: here\n", "no vote_request"),
        ("vote_request: [\n", "not valid YAML"),
    ):
        bad.write_text(text)
        result = CliRunner().invoke(
            group,
            [
                "util",
                "sign-vote-request",
                "--vote-request-file",
                str(bad),
                "--signed-vote-request-file",
                str(tmp_path / "o.yaml"),
            ],
        )
        assert result.exit_code == 1 and match in result.output, result.output
        assert "Traceback" not in result.output
    bad.write_text("action: APPROVE\n")
    result = CliRunner().invoke(
        group,
        [
            "util",
            "voter-sign",
            "--voter-file",
            str(bad),
            "--signed-voter-file",
            str(tmp_path / "v"),
        ],
    )
    assert result.exit_code == 1 and "vote_request_signature" in result.output
