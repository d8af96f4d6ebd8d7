"""``trustflow cms --config-file alice.yaml <command>``: the data owner's CLI (upstream ``cms``)
with the upstream YAML schema (docs/compat.md#cms-cli).

Differences from upstream, all deliberate: readable output (``--json`` for machines), a
one-line ``Error: ...`` and exit code 1 on any failure instead of a traceback; the CM
certificate is fetched once per command; missing credentials are an error (upstream silently
uses a throw-away key the CM then refuses); ``common.party_id``, when set, must be the party id
of ``common.cert_pems_file``; ``get-public-key`` prints the PEM, not a Python bytes repr.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import click

from ...errors import InvalidInput, ObjectNotFound, TrustflowError

REQUIRED_TOP = ("host",)


def _load_yaml(path: Path) -> Mapping[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ObjectNotFound(f"config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise InvalidInput(f"config file {path} must hold a mapping")
    for key in REQUIRED_TOP:
        if not data.get(key):
            raise InvalidInput(f"config file {path}: '{key}' is required")
    return data


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = config.get(name)
    if not isinstance(value, Mapping):
        raise InvalidInput(f"config: section '{name}' is missing or not a mapping")
    return value


def _str(section: Mapping[str, Any], key: str, where: str, *, allow_empty: bool = True) -> str:
    value = section.get(key)
    if value is None:
        value = ""
    if not isinstance(value, str) or (not allow_empty and not value):
        raise InvalidInput(f"config: {where}.{key} must be a non-empty string")
    return value


def _envelope_channel(config: Mapping[str, Any]) -> str:
    """``envelope_channel`` (a Trustflow addition to the upstream schema): the envelope channel
    backend sealing the requests; default ``jwe``."""
    value = config.get("envelope_channel", "jwe")
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"config: envelope_channel must be a backend name, got {value!r}")
    return value


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"config: {where} must be a list of strings")
    return value


def rule_from_config(data: Any, where: str) -> Any:
    """A ``Rule`` message from a YAML rule mapping (docs/compat.md#cms-cli)."""
    from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2

    if not isinstance(data, Mapping):
        raise InvalidInput(f"config: {where} must be a mapping")
    rule_id = data.get("rule_id")
    if not isinstance(rule_id, str) or not rule_id:
        raise InvalidInput(f"config: {where}.rule_id is required")
    ops = data.get("op_constraints") or []
    if not isinstance(ops, list):
        raise InvalidInput(f"config: {where}.op_constraints must be a list")
    op_msgs = []
    for i, op in enumerate(ops):
        if not isinstance(op, Mapping) or not isinstance(op.get("op_name"), str):
            raise InvalidInput(f"config: {where}.op_constraints[{i}] needs op_name")
        op_msgs.append(
            cm_pb2.Rule.OpConstraint(
                op_name=op["op_name"],
                constraints=_strings(op.get("constraints"), f"{where}.op_constraints[{i}]"),
            )
        )
    return cm_pb2.Rule(
        rule_id=rule_id,
        grantee_party_ids=_strings(data.get("grantee_party_ids"), f"{where}.grantee_party_ids"),
        op_constraints=op_msgs,
        columns=_strings(data.get("columns"), f"{where}.columns"),
        global_constraints=_strings(data.get("global_constraints"), f"{where}.global_constraints"),
    )


class Context:
    """What every command needs: the YAML, the client, the owner's credentials."""

    def __init__(self, config_file: Path, as_json: bool, timeout: float) -> None:
        self.config_file = config_file
        self.config = _load_yaml(config_file)
        self.as_json = as_json
        self.timeout = timeout

    def credentials(self) -> Any:
        from .client import Credentials

        common = _section(self.config, "common")
        key_file = common.get("private_key_file")
        cert_files = common.get("cert_pems_file")
        if isinstance(cert_files, str):
            cert_files = [cert_files]
        if not key_file or not cert_files:
            raise InvalidInput(
                "config: common.private_key_file and common.cert_pems_file are required"
            )
        creds = Credentials.from_files(Path(key_file), [Path(p) for p in cert_files])
        named = common.get("party_id")
        if named and named != creds.party_id:
            raise InvalidInput(
                f"config: common.party_id {named} is not the party id of common.cert_pems_file "
                f"({creds.party_id})"
            )
        return creds

    def client(self) -> Any:
        import grpc

        from .client import CapsuleManagerClient

        cfg = self.config
        files = [cfg.get(k) for k in ("root_ca_file", "private_key_file", "cert_chain_file")]
        creds = None
        if all(files):
            try:
                root, key, chain = (Path(f).read_bytes() for f in files)  # type: ignore[arg-type]
            except OSError as exc:
                raise ObjectNotFound(f"{exc.filename}: {exc.strerror}") from None
            creds = grpc.ssl_channel_credentials(root, key, chain)
        constraints = cfg.get("tee_constraints") or {}
        if not isinstance(constraints, Mapping):
            raise InvalidInput("config: tee_constraints must be a mapping")
        return CapsuleManagerClient(
            str(cfg["host"]),
            tee_plat=str(cfg["tee_plat"]) if cfg.get("tee_plat") else None,
            tee_constraints=dict(constraints),
            channel_credentials=creds,
            timeout=self.timeout,
            envelope_channel=_envelope_channel(cfg),
        )

    def emit(self, human: str, data: Any) -> None:
        click.echo(json.dumps(data, indent=2) if self.as_json else human)

    def run(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            async with self.client() as client:
                return await fn(client)

        try:
            return asyncio.run(main())
        except TrustflowError:
            raise
        except OSError as exc:
            raise TrustflowError(f"{exc.filename or ''} {exc.strerror or exc}".strip()) from None


pass_ctx = click.make_pass_decorator(Context)


@click.group("cms")
@click.option(
    "--config-file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The owner's YAML (upstream cms schema).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds per call.")
@click.pass_context
def cms(ctx: click.Context, config_file: Path, as_json: bool, timeout: float) -> None:
    """Talk to a Capsule Manager as a data owner (the equivalent of upstream cms)."""
    ctx.obj = Context(config_file, as_json, timeout)


@cms.command("get-public-key")
@pass_ctx
def get_public_key(c: Context) -> None:
    """Print the CM public key (PEM); its report is verified unless tee_plat is simulated."""
    from cryptography.hazmat.primitives import serialization

    async def go(client: Any) -> str:
        key = await client.cm_public_key()
        pem: str = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        return pem

    pem = c.run(go)
    c.emit(pem.rstrip("\n"), {"public_key": pem})


@cms.command("register-cert")
@pass_ctx
def register_cert(c: Context) -> None:
    """Register the common.cert_pems_file chain under its party id."""
    creds = c.credentials()
    scheme = _str(_section(c.config, "common"), "scheme", "common") or "RSA"
    c.run(lambda client: client.register_cert(creds, scheme))
    c.emit(f"registered certificate of {creds.party_id}", {"party_id": creds.party_id})


@cms.command("register-data-keys")
@pass_ctx
def register_data_keys(c: Context) -> None:
    """Register register_data_keys.data_keys (resource_uri, data_key_b64)."""
    creds = c.credentials()
    entries = _section(c.config, "register_data_keys").get("data_keys")
    if not isinstance(entries, list) or not entries:
        raise InvalidInput("config: register_data_keys.data_keys must be a non-empty list")
    keys = []
    for i, entry in enumerate(entries):
        where = f"register_data_keys.data_keys[{i}]"
        if not isinstance(entry, Mapping):
            raise InvalidInput(f"config: {where} must be a mapping")
        uri = _str(entry, "resource_uri", where, allow_empty=False)
        key = _str(entry, "data_key_b64", where, allow_empty=False)
        try:
            base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"config: {where}.data_key_b64 is not valid base64") from None
        keys.append((uri, key))
    c.run(lambda client: client.create_data_keys(creds, keys))
    uris = [u for u, _ in keys]
    c.emit(f"registered {len(keys)} data key(s): {', '.join(uris)}", {"resource_uris": uris})


@cms.command("register-data-policy")
@pass_ctx
def register_data_policy(c: Context) -> None:
    """Create (or replace) the policy register_data_policy.{scope, data_uuid, rules}."""
    creds = c.credentials()
    sec = _section(c.config, "register_data_policy")
    scope = _str(sec, "scope", "register_data_policy")
    uuid = _str(sec, "data_uuid", "register_data_policy", allow_empty=False)
    rules_cfg = sec.get("rules") or []
    if not isinstance(rules_cfg, list):
        raise InvalidInput("config: register_data_policy.rules must be a list")
    rules = [
        rule_from_config(r, f"register_data_policy.rules[{i}]") for i, r in enumerate(rules_cfg)
    ]
    c.run(lambda client: client.create_data_policy(creds, scope, uuid, rules))
    c.emit(
        f"policy for {uuid} in scope {scope!r}: {len(rules)} rule(s)",
        {"data_uuid": uuid, "scope": scope, "rules": len(rules)},
    )


@cms.command("get-data-policys")
@pass_ctx
def get_data_policys(c: Context) -> None:
    """List your policies in get_data_policys.scope."""
    from google.protobuf import json_format

    creds = c.credentials()
    scope = _str(_section(c.config, "get_data_policys"), "scope", "get_data_policys")
    policies = c.run(lambda client: client.list_data_policies(creds, scope))
    data = [json_format.MessageToDict(p, preserving_proto_field_name=True) for p in policies]
    lines = [f"{len(policies)} policy(ies) in scope {scope!r}"]
    for p in policies:
        lines.append(f"- {p.data_uuid}")
        for r in p.rules:
            ops = ", ".join(o.op_name for o in r.op_constraints) or "(none)"
            lines.append(
                f"    rule {r.rule_id!r}: grantees {list(r.grantee_party_ids)}, ops {ops}, "
                f"columns {list(r.columns)}, global {list(r.global_constraints)}"
            )
    c.emit("\n".join(lines), data)


@cms.command("add-data-rule")
@pass_ctx
def add_data_rule(c: Context) -> None:
    """Append add_data_rule.rule to the policy add_data_rule.{scope, data_uuid}."""
    creds = c.credentials()
    sec = _section(c.config, "add_data_rule")
    scope = _str(sec, "scope", "add_data_rule")
    uuid = _str(sec, "data_uuid", "add_data_rule", allow_empty=False)
    rule = rule_from_config(sec.get("rule"), "add_data_rule.rule")
    c.run(lambda client: client.add_data_rule(creds, scope, uuid, rule))
    c.emit(f"added rule {rule.rule_id!r} to {uuid}", {"data_uuid": uuid, "rule_id": rule.rule_id})


@cms.command("delete-data-rule")
@pass_ctx
def delete_data_rule(c: Context) -> None:
    """Delete the rules delete_data_rule.rule_id of delete_data_rule.{scope, data_uuid}."""
    creds = c.credentials()
    sec = _section(c.config, "delete_data_rule")
    scope = _str(sec, "scope", "delete_data_rule")
    uuid = _str(sec, "data_uuid", "delete_data_rule", allow_empty=False)
    rule_id = _str(sec, "rule_id", "delete_data_rule", allow_empty=False)
    c.run(lambda client: client.delete_data_rule(creds, scope, uuid, rule_id))
    c.emit(f"deleted rule {rule_id!r} of {uuid}", {"data_uuid": uuid, "rule_id": rule_id})


@cms.command("delete-data-policy")
@pass_ctx
def delete_data_policy(c: Context) -> None:
    """Delete the policy delete_data_policy.{scope, data_uuid}."""
    creds = c.credentials()
    sec = _section(c.config, "delete_data_policy")
    scope = _str(sec, "scope", "delete_data_policy")
    uuid = _str(sec, "data_uuid", "delete_data_policy", allow_empty=False)
    c.run(lambda client: client.delete_data_policy(creds, scope, uuid))
    c.emit(f"deleted policy of {uuid} in scope {scope!r}", {"data_uuid": uuid, "scope": scope})


@cms.command("get-export-data-key-b64")
@pass_ctx
def get_export_data_key_b64(c: Context) -> None:
    """Print the data key of get_export_data_key_b64.resource_uri, authorized by the vote
    result in get_export_data_key_b64.data_export_certificate_file."""
    creds = c.credentials()
    sec = _section(c.config, "get_export_data_key_b64")
    uri = _str(sec, "resource_uri", "get_export_data_key_b64", allow_empty=False)
    cert_file = _str(
        sec, "data_export_certificate_file", "get_export_data_key_b64", allow_empty=False
    )
    try:
        certificate = Path(cert_file).read_text()
    except OSError as exc:
        raise ObjectNotFound(f"{cert_file}: {exc.strerror}") from None
    key = c.run(lambda client: client.get_export_data_key(creds, uri, certificate))
    c.emit(key, {"resource_uri": uri, "data_key_b64": key})


@cms.command("delete-data-key")
@pass_ctx
def delete_data_key(c: Context) -> None:
    """Delete the key of delete_data_key.resource_uri."""
    creds = c.credentials()
    uri = _str(
        _section(c.config, "delete_data_key"), "resource_uri", "delete_data_key", allow_empty=False
    )
    c.run(lambda client: client.delete_data_key(creds, uri))
    c.emit(f"deleted data key of {uri}", {"resource_uri": uri})
