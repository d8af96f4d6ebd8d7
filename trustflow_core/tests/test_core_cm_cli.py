"""End to end with the real commands: ``trustflow capsule-manager --plat sim --port 0`` (no
config file) in a subprocess, owners alice and bob driving it with ``trustflow cms`` and
``trustflow util``, a SIM-attested app using the ``capsule_manager`` key exchange, result keys
with lineage, export with votes, restart safety and a request killed mid-flight."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from trustflow_core.cli import build_cli
from trustflow_core.errors import AccessDenied, ObjectNotFound
from trustflow_core.keyexchange import Resource, ResourceRequest, ResultKey
from trustflow_core.manager import get_plugin_manager
from trustflow_core.registry import ATTESTER, backend_class
from trustflow_core.roles.capsule_manager_client.keyexchange import CapsuleManagerKeyExchange
from trustflow_core.testing.databases import throwaway_database

TRUSTFLOW = str(Path(sys.executable).parent / "trustflow")
SCOPE = "default"


class Server:
    """``trustflow capsule-manager`` as a subprocess."""

    def __init__(self, env: dict[str, str], data_dir: Path, *extra: str) -> None:
        self.env, self.data_dir, self.extra = env, data_dir, extra
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.lines: list[str] = []
        self._drain: threading.Thread | None = None

    def _read_rest(self) -> None:
        """Keep reading the server's log so it never blocks on a full pipe."""
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def start(self) -> Server:
        args = [TRUSTFLOW, "capsule-manager", "--plat", "sim", "--port", "0"]
        args += ["--data-dir", str(self.data_dir), *self.extra]
        self.proc = subprocess.Popen(args, env=self.env, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"capsule manager exited: {self.proc.wait()}")
            self.lines.append(line)
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                self._drain = threading.Thread(target=self._read_rest, daemon=True)
                self._drain.start()
                return self
        raise AssertionError("capsule manager did not start")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(30)
        if self._drain is not None:
            self._drain.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


@pytest.fixture(scope="module")
def cli(sim_env: dict[str, str]) -> Any:
    group = build_cli()
    runner = CliRunner()

    def run(*args: str, expect: int = 0) -> str:
        result = runner.invoke(group, list(args), catch_exceptions=False)
        assert result.exit_code == expect, result.output
        return result.output

    return run


def owner_yaml(path: Path, target: str, name: str, d: Path, **sections: Any) -> Path:
    config = {
        "host": target,
        "tee_plat": "sim",
        "tee_constraints": {"mr_plat": None, "mr_boot": None, "mr_ta": None, "mr_signer": None},
        "root_ca_file": None,
        "private_key_file": None,
        "cert_chain_file": None,
        "common": {
            "party_id": None,
            "cert_pems_file": [str(d / f"{name}.crt")],
            "scheme": "RSA",
            "private_key_file": str(d / f"{name}.key"),
        },
        **sections,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def grant(rule_id: str, grantee: str, op: str = "psi", **kw: Any) -> dict[str, Any]:
    return {
        "rule_id": rule_id,
        "grantee_party_ids": [grantee],
        "columns": kw.get("columns", ["id", "age"]),
        "global_constraints": kw.get("global_constraints", ['r.env.tee.platform == "sim"']),
        "op_constraints": [{"op_name": op, "constraints": kw.get("constraints")}],
    }


_APP: list[Any] = []


def make_kx(target: str) -> CapsuleManagerKeyExchange:
    """The app's key exchange (one app identity for the whole module)."""
    from trustflow_core.roles.capsule_manager_client.keyexchange import ephemeral_credentials

    if not _APP:
        _APP.append(ephemeral_credentials())
    pm = get_plugin_manager()
    attester = backend_class(pm, ATTESTER, "sim").from_settings()
    return CapsuleManagerKeyExchange(target, attester=attester, pm=pm, credentials=_APP[0])


def get_keys(target: str, request: ResourceRequest) -> list[Any]:
    async def go() -> list[Any]:
        async with make_kx(target) as kx:
            return await kx.get_data_keys(request)

    return asyncio.run(go())


def test_owner_flow_end_to_end(cli: Any, sim_env: dict[str, str], tmp_path: Path) -> None:
    d = tmp_path
    ids = {}
    for name in ("alice", "bob", "carol"):
        ids[name] = cli(
            "util",
            "generate-rsa-keypair",
            "--private-key-file",
            str(d / f"{name}.key"),
            "--cert-file",
            str(d / f"{name}.crt"),
        ).strip()
    key_a, key_b = (cli("util", "generate-data-key-b64").strip() for _ in range(2))
    uuid_a, uuid_b = (f"e2e-{n}-{os.urandom(4).hex()}" for n in "ab")
    server = Server(sim_env, d / "cm").start()
    try:
        alice = owner_yaml(
            d / "alice.yaml",
            server.target,
            "alice",
            d,
            register_data_keys={"data_keys": [{"resource_uri": uuid_a, "data_key_b64": key_a}]},
            register_data_policy={
                "scope": SCOPE,
                "data_uuid": uuid_a,
                "rules": [grant("r1", ids["carol"])],
            },
            add_data_rule={
                "scope": SCOPE,
                "data_uuid": uuid_a,
                "rule": grant("r2", ids["carol"], "xgb"),
            },
            delete_data_rule={"scope": SCOPE, "data_uuid": uuid_a, "rule_id": "r2"},
            get_data_policys={"scope": SCOPE},
            delete_data_policy={"scope": SCOPE, "data_uuid": uuid_a},
            delete_data_key={"resource_uri": uuid_a},
        )
        bob = owner_yaml(
            d / "bob.yaml",
            server.target,
            "bob",
            d,
            register_data_keys={"data_keys": [{"resource_uri": uuid_b, "data_key_b64": key_b}]},
            register_data_policy={
                "scope": SCOPE,
                "data_uuid": uuid_b,
                "rules": [grant("b1", ids["carol"], columns=["*"])],
            },
            get_data_policys={"scope": SCOPE},
        )
        pem = cli("cms", "--config-file", str(alice), "get-public-key")
        assert pem.startswith("-----BEGIN PUBLIC KEY-----")
        for config in (alice, bob):
            assert "registered certificate" in cli(
                "cms", "--config-file", str(config), "register-cert"
            )
            cli("cms", "--config-file", str(config), "register-data-keys")
            cli("cms", "--config-file", str(config), "register-data-policy")
        cli("cms", "--config-file", str(alice), "add-data-rule")
        listed = json.loads(cli("cms", "--config-file", str(alice), "--json", "get-data-policys"))
        assert [[r["rule_id"] for r in p["rules"]] for p in listed] == [["r1", "r2"]]
        cli("cms", "--config-file", str(alice), "delete-data-rule")
        human = cli("cms", "--config-file", str(alice), "get-data-policys").splitlines()
        assert human[0].split() == [
            "DATA",
            "UUID",
            "RULE",
            "GRANTEES",
            "OPS",
            "COLUMNS",
            "GLOBAL",
            "CONSTRAINTS",
        ]
        assert [row.split()[:2] for row in human[1:-1]] == [[uuid_a, "r1"]]
        # bob cannot see or touch alice's policy
        assert uuid_a not in cli("cms", "--config-file", str(bob), "get-data-policys")

        # the app, initiated by carol, gets exactly the keys the rules allow
        ok = ResourceRequest(
            ids["carol"], SCOPE, "psi", (Resource(uuid_a, ("id",)), Resource(uuid_b))
        )
        keys = get_keys(server.target, ok)
        assert [base64.b64encode(k.key).decode() for k in keys] == [key_a, key_b]
        for bad, error in (
            (ResourceRequest(ids["bob"], SCOPE, "psi", ok.resources), AccessDenied),
            (ResourceRequest(ids["carol"], SCOPE, "xgb", ok.resources), AccessDenied),
            (ResourceRequest(ids["carol"], "other", "psi", ok.resources), ObjectNotFound),
            (
                ResourceRequest(ids["carol"], SCOPE, "psi", (Resource(uuid_a, ("salary",)),)),
                AccessDenied,
            ),
        ):
            with pytest.raises(error):
                get_keys(server.target, bad)

        # a result with two ancestors carries the merged policy
        result_uri, result_key = f"e2e-result-{os.urandom(4).hex()}", os.urandom(16)

        async def register_result() -> None:
            async with make_kx(server.target) as kx:
                await kx.register_result_key(
                    ResultKey(result_uri, SCOPE, result_key, (uuid_a, uuid_b))
                )

        asyncio.run(register_result())
        got = get_keys(
            server.target, ResourceRequest(ids["carol"], SCOPE, "psi", (Resource(result_uri),))
        )
        assert got[0].key == result_key
        with pytest.raises(AccessDenied):
            get_keys(
                server.target, ResourceRequest(ids["bob"], SCOPE, "psi", (Resource(result_uri),))
            )

        # export: carol needs both alice's and bob's votes
        (d / "vote_request.yaml").write_text(
            yaml.safe_dump(
                {
                    "vote_request": {
                        "type": "TEE_DOWNLOAD",
                        "approved_threshold": 2,
                        "approved_action": f"tee/download,{result_uri}",
                        "cert_chain_file": [str(d / "carol.crt")],
                        "private_key_file": str(d / "carol.key"),
                    }
                },
                sort_keys=False,
            )
        )
        cli(
            "util",
            "sign-vote-request",
            "--vote-request-file",
            str(d / "vote_request.yaml"),
            "--signed-vote-request-file",
            str(d / "vote_request.signed.yaml"),
        )
        signed = yaml.safe_load((d / "vote_request.signed.yaml").read_text())
        for voter in ("alice", "bob"):
            (d / f"voter_{voter}.yaml").write_text(
                yaml.safe_dump(
                    {
                        "vote_request_signature": signed["vote_request_signature"],
                        "action": "APPROVE",
                        "cert_chain_file": [str(d / f"{voter}.crt")],
                        "private_key_file": str(d / f"{voter}.key"),
                    },
                    sort_keys=False,
                )
            )
            cli(
                "util",
                "voter-sign",
                "--voter-file",
                str(d / f"voter_{voter}.yaml"),
                "--signed-voter-file",
                str(d / f"voter_{voter}.signed.yaml"),
            )
        for name, voters in (("all", ("alice", "bob")), ("alice_only", ("alice",))):
            files = [
                a
                for v in voters
                for a in ("--signed-voter-files", str(d / f"voter_{v}.signed.yaml"))
            ]
            cli(
                "util",
                "generate-vote-result",
                "--signed-vote-request-file",
                str(d / "vote_request.signed.yaml"),
                *files,
                "--vote-result-file",
                str(d / f"result_{name}.json"),
            )
        carol = owner_yaml(d / "carol.yaml", server.target, "carol", d)
        for name, expect in (("all", 0), ("alice_only", 1)):
            config = yaml.safe_load(carol.read_text())
            config["get_export_data_key_b64"] = {
                "party_id": None,
                "resource_uri": result_uri,
                "data_export_certificate_file": str(d / f"result_{name}.json"),
            }
            carol.write_text(yaml.safe_dump(config))
            out = cli("cms", "--config-file", str(carol), "get-export-data-key-b64", expect=expect)
            if expect == 0:
                assert out.strip() == base64.b64encode(result_key).decode()
            else:
                assert "not all ancestors are voting" in out and "Traceback" not in out
                assert len(out.strip().splitlines()) == 1

        # restart: keys, policies and rules survive
        assert server.stop() == 0
        server = Server(sim_env, d / "cm").start()
        for config in (alice, bob, carol):
            text = config.read_text().replace(
                re.search(r"127\.0\.0\.1:\d+", config.read_text()).group(0), server.target
            )  # type: ignore[union-attr]
            config.write_text(text)
        listed = json.loads(cli("cms", "--config-file", str(alice), "--json", "get-data-policys"))
        assert [[r["rule_id"] for r in p["rules"]] for p in listed] == [["r1"]]
        keys = get_keys(server.target, ok)
        assert [base64.b64encode(k.key).decode() for k in keys] == [key_a, key_b]

        # deletions
        cli("cms", "--config-file", str(alice), "delete-data-policy")
        with pytest.raises(ObjectNotFound):
            get_keys(server.target, ok)
        cli("cms", "--config-file", str(alice), "delete-data-key")
        # errors are one line, exit code 1
        missing = d / "missing.yaml"
        out = cli("cms", "--config-file", str(missing), "get-public-key", expect=1)
        assert out.strip() == f"config error: {missing}: cannot read: No such file or directory"
        out = cli("cms", "--config-file", str(bob), "delete-data-rule", expect=1)
        assert out.startswith("Error:")
    finally:
        server.stop()


def test_owner_cli_help_init_and_options(cli: Any, sim_env: dict[str, str], tmp_path: Path) -> None:
    """``--help`` needs no config; ``cms init`` writes a template the commands accept; options
    override the config, and replace it altogether for one-off calls; listings are tables."""
    d = tmp_path
    for args in (
        ["cms", "get-public-key", "--help"],
        ["cms", "--config-file", str(d / "missing.yaml"), "register-data-policy", "--help"],
        ["cms", "--help"],
        ["cms", "init", "--help"],
    ):
        assert "Usage: " in cli(*args)
    ids = {
        name: cli(
            "util", "generate-rsa-keypair",
            "--private-key-file", str(d / f"{name}.key"), "--cert-file", str(d / f"{name}.crt"),
        ).strip()
        for name in ("alice", "carol")
    }  # fmt: skip
    (d / "data.key").write_text(cli("util", "generate-data-key-b64"))
    uuid = f"opt-{os.urandom(4).hex()}"
    server = Server(sim_env, d / "cm").start()
    try:
        me = ["--key-file", str(d / "alice.key"), "--cert-file", str(d / "alice.crt")]
        config = d / "alice.yaml"
        # the template, filled with the group's options, is accepted as it is
        out = cli("cms", "--host", server.target, *me, "init", str(config))
        assert f"wrote {config}" in out
        assert config.stat().st_mode & 0o777 == 0o600
        template = yaml.safe_load(config.read_text())
        assert template["host"] == server.target and template["tee_plat"] is None
        assert template["common"]["private_key_file"] == str(d / "alice.key")
        assert template["common"]["cert_pems_file"] == [str(d / "alice.crt")]
        assert "# You, the data owner" in config.read_text()
        assert "exists" in cli("cms", "init", str(config), expect=1)
        assert ids["alice"] in cli("cms", "--config-file", str(config), "register-cert")

        # options win over the file: the file's host points nowhere, --host to the CM
        broken = yaml.safe_load(config.read_text())
        broken["host"] = "127.0.0.1:9"
        config.write_text(yaml.safe_dump(broken))
        assert "connection refused" in cli(
            "cms", "--config-file", str(config), "get-data-policys", expect=1
        )
        with_host = ["cms", "--config-file", str(config), "--host", server.target]
        assert "0 policy(ies) in scope 'default'" in cli(*with_host, "get-data-policys")

        # one-off calls with no config file at all
        bare = ["cms", "--host", server.target, *me]
        cli(*bare, "register-data-keys", "--resource-uri", uuid, "--data-key-file",
            str(d / "data.key"))  # fmt: skip
        grant_r1 = ["--rule-id", "r1", "--grantee", ids["carol"], "--op", "psi"]
        cli(*bare, "register-data-policy", "--data-uuid", uuid, *grant_r1,
            "--column", "id", "--column", "age")  # fmt: skip
        added = cli(*bare, "add-data-rule", "--data-uuid", uuid, "--rule-id", "r2",
                    "--grantee", ids["carol"], "--op", "xgb", "--json")  # fmt: skip
        assert json.loads(added) == {"data_uuid": uuid, "rule_id": "r2"}
        rows = cli(*bare, "get-data-policys").splitlines()
        assert rows[0].split()[:3] == ["DATA", "UUID", "RULE"]
        assert [r.split()[:3] for r in rows[1:-1]] == [
            [uuid, "r1", ids["carol"]],
            [uuid, "r2", ids["carol"]],
        ]
        assert "psi" in rows[1] and "id, age" in rows[1] and "xgb" in rows[2]
        assert rows[-1] == "1 policy(ies) in scope 'default'"
        cli(*bare, "delete-data-rule", "--data-uuid", uuid, "--rule-id", "r2")
        listed = json.loads(cli(*bare, "get-data-policys", "--json"))
        assert [[r["rule_id"] for r in p["rules"]] for p in listed] == [["r1"]]

        # a value neither given nor configured: one line naming the option and the key
        out = cli(*bare, "delete-data-rule", "--data-uuid", uuid, expect=1)
        assert out.startswith("Error: delete_data_rule.rule_id is not set: give --rule-id")
        assert len(out.strip().splitlines()) == 1
        out = cli("cms", *me, "get-public-key", expect=1)
        assert out.startswith("Error: host is not set: give --host")
        assert "need --rule-id" in cli(*bare, "add-data-rule", "--data-uuid", uuid,
                                        "--op", "psi", expect=2)  # fmt: skip
        cli(*bare, "delete-data-policy", "--data-uuid", uuid)
        cli(*bare, "delete-data-key", "--resource-uri", uuid)
    finally:
        server.stop()


_BAD_CONFIGS = {
    # (YAML, command): the expected stderr after "config error: FILE: "
    "nested value": (
        "host: 127.0.0.1:9\nregister_data_policy:\n  data_uuid: u1\n  rules:\n"
        "    - {rule_id: r1, columns: id}\n",
        "register-data-policy",
        "register_data_policy.rules[0].columns: expected a list, got 'id'",
    ),
    "YAML syntax": (
        "host: 127.0.0.1:9\ncommon:\n  party_id: [x\n  scheme: RSA\n",
        "get-public-key",
        "not valid YAML: line 4, column 9: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence)",
    ),
    "unknown top-level key": (
        "hots: 127.0.0.1:9\n",
        "get-public-key",
        "unknown key(s) hots; known: add_data_rule, cert_chain_file, common, ",
    ),
    "unknown key in a section": (
        "host: 127.0.0.1:9\ndelete_data_key: {resource_uri: u1, uri: u1}\n",
        "get-public-key",
        "delete_data_key: unknown key(s) uri; known: resource_uri",
    ),
    "op without a name": (
        "add_data_rule: {data_uuid: u1, rule: {rule_id: r, op_constraints: [{constraints: []}]}}",
        "add-data-rule",
        "add_data_rule.rule.op_constraints[0]: missing required key(s) op_name",
    ),
    "data key not base64, not echoed": (
        "register_data_keys:\n  data_keys:\n    - {resource_uri: u1, data_key_b64: 's3cr#t'}\n",
        "register-data-keys",
        "register_data_keys.data_keys[0].data_key_b64: not valid standard base64 (value not shown)",
    ),
    "certificate list": (
        "common: {private_key_file: a.key, cert_pems_file: 5}\n",
        "register-cert",
        "common.cert_pems_file: expected a list, got 5",
    ),
    "half the TLS files": (
        "host: 127.0.0.1:9\nroot_ca_file: ca.pem\n",
        "get-public-key",
        "root_ca_file, private_key_file, cert_chain_file go together (TLS to the CM), "
        "or none of them",
    ),
}


@pytest.mark.parametrize("case", sorted(_BAD_CONFIGS))
def test_owner_config_errors_name_file_and_key(
    case: str, sim_env: dict[str, str], tmp_path: Path
) -> None:
    """A bad owner YAML, through the real ``trustflow cms`` command: one ``config error: FILE:
    KEY.PATH: problem`` line on stderr, exit status 1, before any connection or key file is
    touched (the host is a closed port, the key files do not exist)."""
    text, command, problem = _BAD_CONFIGS[case]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    done = subprocess.run(
        [TRUSTFLOW, "cms", "--config-file", str(bad), command],
        env=sim_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"config error: {bad}: {problem}"), lines[0]
    assert "s3cr#t" not in done.stderr


async def send_and_kill(server: Server, owner: Any, keys: list[Any], delay: float) -> None:
    from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient

    async with CapsuleManagerClient(server.target, timeout=30) as client:
        await client.cm_public_key()
        task = asyncio.ensure_future(client.create_data_keys(owner, keys))
        await asyncio.sleep(delay)
        assert server.proc is not None
        server.proc.kill()  # SIGKILL mid-flight
        with contextlib.suppress(Exception):
            await task


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_killed_mid_flight_leaves_nothing_half_applied(
    backend: str, sim_env: dict[str, str], tmp_path: Path
) -> None:
    """A CreateDataKeys of many keys is SIGKILLed half-way through its measured duration:
    afterwards either every key or none is stored, and the CM restarts cleanly."""
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2 as cm_pb2,
    )
    from trustflow_core.roles.capsule_manager.database import Database
    from trustflow_core.roles.capsule_manager.sealing import Sealer, load_or_create_key
    from trustflow_core.roles.capsule_manager_client.client import CapsuleManagerClient
    from trustflow_core.roles.capsule_manager_client.keyexchange import ephemeral_credentials

    owner = ephemeral_credentials("owner")
    n = 1500

    def batch(prefix: str) -> list[tuple[str, str]]:
        return [(f"{prefix}{i}", base64.b64encode(os.urandom(16)).decode()) for i in range(n)]

    def stored(url: str, keys: list[tuple[str, str]]) -> int:
        store = Database(url, Sealer(load_or_create_key(tmp_path / "cm" / "storage.key")))
        try:
            return len(store.get_keys([u for u, _ in keys]))
        finally:
            store.close()

    with throwaway_database(backend, tmp_path) as url:
        extra = ("--storage-url", url)
        server = Server(sim_env, tmp_path / "cm", *extra).start()
        full = batch("full-")

        rule = cm_pb2.Rule(rule_id="kept", grantee_party_ids=[owner.party_id], columns=["*"])
        rule.op_constraints.add(op_name="op", constraints=['r.scope == "s"'])

        async def timed() -> float:
            async with CapsuleManagerClient(server.target, timeout=60) as client:
                await client.create_data_keys(owner, [("policy-data", full[0][1])])
                await client.create_data_policy(owner, "s", "policy-data", [rule])
                await client.add_data_rule(owner, "s", "policy-data", rule)
                started = time.perf_counter()
                await client.create_data_keys(owner, full)
                return time.perf_counter() - started

        duration = asyncio.run(timed())
        assert server.stop() == 0
        assert stored(url, full) == n

        killed = batch("killed-")
        server = Server(sim_env, tmp_path / "cm", *extra).start()
        asyncio.run(send_and_kill(server, owner, killed, duration / 2))
        server.stop(signal.SIGKILL)
        assert stored(url, killed) in (0, n)

        async def policies() -> list[Any]:
            async with CapsuleManagerClient(server.target) as client:
                return await client.list_data_policies(owner, "s")

        server = Server(sim_env, tmp_path / "cm", *extra).start()  # restarts cleanly
        listed = asyncio.run(policies())
        assert server.stop() == 0
        assert stored(url, full) == n
        assert [(p.data_uuid, [r.rule_id for r in p.rules]) for p in listed] == [
            ("policy-data", ["kept", "kept"])
        ]
        assert listed[0].rules[0].op_constraints[0].constraints == ['r.scope == "s"']

        async def policies() -> list[Any]:
            async with CapsuleManagerClient(server.target) as client:
                return await client.list_data_policies(owner, "s")

        server = Server(sim_env, tmp_path / "cm", *extra).start()
        listed = asyncio.run(policies())
        server.stop()
        assert [(p.data_uuid, [r.rule_id for r in p.rules]) for p in listed] == [
            ("policy-data", ["kept", "kept"])
        ]
        assert listed[0].rules[0].op_constraints[0].constraints == ['r.scope == "s"']


def test_workers_share_the_port_and_stop_together(sim_env: dict[str, str], tmp_path: Path) -> None:
    import grpc

    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2 as cm_pb2,
    )
    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2_grpc as cm_grpc,
    )

    server = Server(sim_env, tmp_path / "cm", "--workers", "2").start()
    assert server.proc is not None
    children_file = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
    deadline = time.monotonic() + 30
    children: list[int] = []
    while time.monotonic() < deadline and not children:
        children = [int(p) for p in children_file.read_text().split()]
        time.sleep(0.2)
    assert children, "no worker process"

    async def calls() -> set[str]:
        certs = set()
        for _ in range(8):  # separate connections
            options = [("grpc.use_local_subchannel_pool", 1)]
            async with grpc.aio.insecure_channel(server.target, options=options) as channel:
                stub = cm_grpc.CapsuleManagerStub(channel)
                response = await stub.GetRaCert(cm_pb2.GetRaCertRequest(nonce="n"), timeout=30)
                assert response.status.code == 0
                certs.add(response.cert)
        return certs

    assert len(asyncio.run(calls())) == 1  # one identity, whichever process answered
    assert server.stop() == 0
    time.sleep(0.5)
    for pid in children:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        )
