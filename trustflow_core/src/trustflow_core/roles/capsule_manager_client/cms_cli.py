"""``trustflow cms [--config-file alice.yaml] <command> [options]``: the data owner's CLI
(upstream ``cms``) with the upstream YAML schema (docs/compat.md#cms-cli).

``trustflow cms init`` writes a commented config template. Every value a command reads from the
YAML can also be given as an option, which wins over the file, so a one-off call needs no file
at all (``trustflow cms --host 127.0.0.1:8888 --key-file alice.key --cert-file alice.crt
delete-data-key --resource-uri u1``). ``--help`` never reads the config.

Differences from upstream, all deliberate: readable output (a table for listings, one line
otherwise; ``--json`` on the group or on any command for machines), a one-line
``Error: ...`` and exit code 1 on any failure instead of a traceback; the YAML is read through
:mod:`trustflow_core.settings_schema` like every role's config (a bad value is one
``config error: FILE: KEY.PATH: problem`` line, keys outside the schema are refused, the three
TLS files are all given or none); the CM certificate is
fetched once per command; ``host`` (``--host``) may list several replicas of one CM
(``h1:p1,h2:p2`` or a YAML list), tried in order with failover (docs/failover.md); missing
credentials are an error (upstream silently uses a throw-away
key the CM then refuses); ``common.party_id``, when set, must be the party id of
``common.cert_pems_file``; ``get-public-key`` prints the PEM, not a Python bytes repr.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from ...errors import InvalidInput, ObjectNotFound, TrustflowError
from ...settings_schema import Node, load_yaml_file
from .._options import command_plugin_manager

#: the environment variable naming the config file when --config-file is not given
CONFIG_ENV = "TRUSTFLOW_CMS_CONFIG"
DEFAULT_SCOPE = "default"


#: Keys of each section (upstream's ``cli-template.yaml``). ``create_data_policy``,
#: ``add_data_rule.rule_id`` and ``get_export_data_key_b64.party_id`` are read by no command but
#: accepted: upstream's ``cms_config`` and template write them (docs/compat.md#cms-cli).
SECTIONS: dict[str, frozenset[str]] = {
    "common": frozenset({"party_id", "cert_pems_file", "scheme", "private_key_file"}),
    "register_data_keys": frozenset({"data_keys"}),
    "get_data_policys": frozenset({"scope"}),
    "register_data_policy": frozenset({"scope", "data_uuid", "rules"}),
    "create_data_policy": frozenset({"scope", "data_uuid"}),
    "add_data_rule": frozenset({"scope", "data_uuid", "rule", "rule_id"}),
    "delete_data_rule": frozenset({"scope", "data_uuid", "rule_id"}),
    "delete_data_policy": frozenset({"scope", "data_uuid"}),
    "get_export_data_key_b64": frozenset(
        {"party_id", "resource_uri", "data_export_certificate_file"}
    ),
    "delete_data_key": frozenset({"resource_uri"}),
}
#: The connection settings at the top of the file.
TLS_FILES = ("root_ca_file", "private_key_file", "cert_chain_file")
TOP_KEYS = frozenset(
    {"host", "tee_plat", "tee_constraints", "envelope_channel", *TLS_FILES, *SECTIONS}
)
RULE_KEYS = frozenset(
    {"rule_id", "grantee_party_ids", "op_constraints", "columns", "global_constraints"}
)


def load_config(path: Path | None) -> Node:
    """The owner YAML at ``path`` (None: no file, an empty one) with every key known: each
    section a mapping of its own keys, unknown keys refused as by every role's config. Values are
    typed when the command that reads them runs (a section is read only by its command);
    relative paths are relative to the working directory, as upstream. Errors are
    :class:`~trustflow_core.settings_schema.ConfigError` naming the file and key path."""
    if path is None:
        return Node({}, "no config file")
    root = load_yaml_file(path, relative_to_file=False).mapping(TOP_KEYS)
    for name, keys in SECTIONS.items():
        root.get(name).mapping(keys)
    return root


def rule_from_config(node: Node) -> Any:
    """A ``Rule`` message from a YAML rule mapping (docs/reference/config.md): ``rule_id``
    required, the lists optional (null: empty)."""
    from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2

    node.mapping(RULE_KEYS, required=("rule_id",))
    op_msgs = []
    for op in node.get("op_constraints").elements(default=[]):
        op.mapping({"op_name", "constraints"}, required=("op_name",))
        op_msgs.append(
            cm_pb2.Rule.OpConstraint(
                op_name=op.get("op_name").string(), constraints=op.get("constraints").strings([])
            )
        )
    return cm_pb2.Rule(
        rule_id=node.get("rule_id").string(),
        grantee_party_ids=node.get("grantee_party_ids").strings([]),
        op_constraints=op_msgs,
        columns=node.get("columns").strings([]),
        global_constraints=node.get("global_constraints").strings([]),
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``rows`` under ``headers``, columns left-aligned and separated by two spaces."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    head = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    return "\n".join([head, *lines])


def _joined(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "-"


class Context:
    """What every command needs: the config (read on first use, never for ``--help``), the
    options that override it, the client, the owner's credentials."""

    def __init__(
        self,
        config_file: Path | None,
        overrides: Mapping[str, Any],
        as_json: bool,
        timeout: float,
    ) -> None:
        self.config_file = config_file
        self.overrides = {k: v for k, v in overrides.items() if v not in (None, ())}
        self.as_json = as_json
        self.timeout = timeout
        self._config: Node | None = None

    @property
    def config(self) -> Node:
        """The YAML, checked by :func:`load_config` on first use (never for ``--help``); empty
        when no config file is given (every value then comes from options)."""
        if self._config is None:
            self._config = load_config(self.config_file)
        return self._config

    def section(self, name: str) -> Node:
        """Section ``name`` of the config (a mapping; empty when absent)."""
        return self.config.get(name)

    def value(
        self,
        section: str | None,
        key: str,
        given: str | None,
        flag: str,
        *,
        default: str | None = None,
    ) -> str:
        """The option's value ``given`` when set, else ``section.key`` of the config (``key``
        at the top when ``section`` is None), else ``default``; a non-empty string. Not set
        anywhere: :class:`InvalidInput` naming both the option and the config key; not a
        string: :class:`~trustflow_core.settings_schema.ConfigError`."""
        if given is not None and given != "":
            return given
        value = (self.section(section) if section else self.config).get(key).string("", empty=True)
        if value:
            return value
        if default is not None:
            return default
        where = f"{section}.{key}" if section else key
        source = f"in {self.config_file}" if self.config_file else "in a config file"
        raise InvalidInput(
            f"{where} is not set: give {flag}, or set it {source} "
            "('trustflow cms init' writes a template)"
        )

    def credentials(self) -> Any:
        from .client import Credentials

        common = self.section("common")
        key_file = self.overrides.get("key_file") or common.get("private_key_file").path(None)
        cert_files: Any = self.overrides.get("cert_files")
        if not cert_files:
            certs = common.get("cert_pems_file")
            if isinstance(certs.value, str):
                cert_files = [certs.path()]
            else:
                cert_files = [e.path() for e in certs.elements(default=[])]
        if not key_file or not cert_files:
            raise InvalidInput(
                "the owner's key and certificate are not set: give --key-file and --cert-file, "
                "or set common.private_key_file and common.cert_pems_file in the config file"
            )
        creds = Credentials.from_files(Path(key_file), [Path(p) for p in cert_files])
        named = self.overrides.get("party_id") or common.get("party_id").string(None, empty=True)
        if named and named != creds.party_id:
            raise InvalidInput(
                f"party id {named} (--party-id or common.party_id) is not the party id of the "
                f"owner's certificate ({creds.party_id})"
            )
        return creds

    def client(self) -> Any:
        import grpc

        from .client import CapsuleManagerClient

        cfg = self.config
        host: str | tuple[str, ...]
        if self.overrides.get("host") or not cfg.get("host").value:
            host = self.value(None, "host", self.overrides.get("host"), "--host")
        else:
            host = cfg.get("host").endpoints(check=False)
        tee_plat = self.overrides.get("tee_plat") or cfg.get("tee_plat").text(None)
        files = [cfg.get(k).path(None) for k in TLS_FILES]
        creds = None
        if any(files):
            if not all(files):
                raise cfg.error(
                    f"{', '.join(TLS_FILES)} go together (TLS to the CM), or none of them"
                )
            try:
                root, key, chain = (f.read_bytes() for f in files if f is not None)
            except OSError as exc:
                raise ObjectNotFound(f"{exc.filename}: {exc.strerror}") from None
            creds = grpc.ssl_channel_credentials(root, key, chain)
        return CapsuleManagerClient(
            host,
            pm=command_plugin_manager(),
            tee_plat=tee_plat or None,
            tee_constraints=cfg.get("tee_constraints").raw_mapping(),
            channel_credentials=creds,
            timeout=self.timeout,
            envelope_channel=self.value(
                None, "envelope_channel", None, "envelope_channel", default="jwe"
            ),
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


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--json`` to a command (the same as ``trustflow cms --json``)."""

    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @functools.wraps(command)
    def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> Any:
        if as_json:
            click.get_current_context().find_object(Context).as_json = True  # type: ignore[union-attr]
        return command(*args, **kwargs)

    return wrapper


def scope_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--scope",
        default=None,
        help=f"Policy scope (overrides the config; default {DEFAULT_SCOPE!r}).",
    )(command)


def uuid_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--data-uuid", default=None, help="Data UUID (overrides the config).")(
        command
    )


def rule_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Options describing one rule; with ``--rule-id`` they replace the config's rule(s)."""
    for decorator in reversed(
        [
            click.option(
                "--rule-id", default=None, help="A rule given here instead of the config."
            ),
            click.option(
                "--grantee", "grantees", multiple=True, help="Grantee party id (repeatable)."
            ),
            click.option("--op", "ops", multiple=True, help="Allowed operation name (repeatable)."),
            click.option("--column", "columns", multiple=True, help="Allowed column (repeatable)."),
            click.option(
                "--global-constraint",
                "global_constraints",
                multiple=True,
                help="CEL constraint over the request (repeatable).",
            ),
        ]
    ):
        command = decorator(command)
    return command


def _rule_from_options(
    rule_id: str | None,
    grantees: tuple[str, ...],
    ops: tuple[str, ...],
    columns: tuple[str, ...],
    global_constraints: tuple[str, ...],
) -> Any:
    """The rule described by the options, or None when ``--rule-id`` is not given (then the
    other rule options are refused: they would be silently ignored)."""
    if rule_id is None:
        if grantees or ops or columns or global_constraints:
            raise click.UsageError("--grantee, --op, --column, --global-constraint need --rule-id")
        return None
    if not rule_id:
        raise click.UsageError("--rule-id must not be empty")
    from ...proto.secretflowapis.v2.sdc.capsule_manager import capsule_manager_pb2 as cm_pb2

    return cm_pb2.Rule(
        rule_id=rule_id,
        grantee_party_ids=grantees,
        op_constraints=[cm_pb2.Rule.OpConstraint(op_name=op) for op in ops],
        columns=columns,
        global_constraints=global_constraints,
    )


@click.group("cms")
@click.option(
    "--config-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar=CONFIG_ENV,
    help=f"The owner's YAML (upstream cms schema; 'trustflow cms init' writes one). Also "
    f"${CONFIG_ENV}. Optional when options give every value a command needs.",
)
@click.option(
    "--host",
    default=None,
    help="Capsule Manager HOST:PORT, or several replicas HOST:PORT,HOST:PORT,... tried in "
    "order with failover (overrides 'host').",
)
@click.option("--tee-plat", default=None, help="The CM's TEE platform (overrides 'tee_plat').")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="The owner's private key (overrides common.private_key_file).",
)
@click.option(
    "--cert-file",
    "cert_files",
    type=click.Path(dir_okay=False),
    multiple=True,
    help="The owner's certificate chain, leaf first (repeatable; overrides common.cert_pems_file).",
)
@click.option("--party-id", default=None, help="Expected party id (overrides common.party_id).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds per call.")
@click.pass_context
def cms(
    ctx: click.Context,
    config_file: Path | None,
    host: str | None,
    tee_plat: str | None,
    key_file: str | None,
    cert_files: tuple[str, ...],
    party_id: str | None,
    as_json: bool,
    timeout: float,
) -> None:
    """Talk to a Capsule Manager as a data owner (the equivalent of upstream cms).

    Start with 'trustflow cms init' (a commented config template). Every value the YAML holds
    can also be given as an option; options win over the file."""
    overrides = {
        "host": host,
        "tee_plat": tee_plat,
        "key_file": key_file,
        "cert_files": cert_files,
        "party_id": party_id,
    }
    ctx.obj = Context(config_file, overrides, as_json, timeout)


TEMPLATE = """\
# trustflow cms config (the upstream cms schema). Written by 'trustflow cms init'.
# Every value can be overridden on the command line, e.g. --host or --scope; see
# 'trustflow cms <command> --help'. Paths are relative to the working directory.

# The Capsule Manager: HOST:PORT and the TEE platform it runs on: the name of the verifier
# backend for its report (tdx, csv, sim, or a plugin's; null: the development default, the
# simulated one). Its attestation report is verified unless that verifier is simulated.
# Several replicas of one CM: "h1:p1,h2:p2" or a YAML list; a request goes to the next one
# when a replica is down (docs/failover.md).
host: "{host}"
tee_plat: {tee_plat}
# Measurements the CM's report must carry (null: not checked).
tee_constraints:
  mr_plat: null     # TDX hex_platform_measurement
  mr_boot: null     # TDX/CSV hex_boot_measurement
  mr_ta: null       # TDX hex_ta_measurement
  mr_signer: null
# mTLS to the CM: all three files, or none (plaintext gRPC).
root_ca_file: null
private_key_file: null
cert_chain_file: null

# You, the data owner: your RSA key and certificate chain (leaf first), e.g. from
# 'trustflow util generate-rsa-keypair'. party_id, when set, must be the party id of the
# certificate ('trustflow util generate-party-id').
common:
  party_id: null
  cert_pems_file: {cert_files}
  scheme: "RSA"
  private_key_file: {key_file}

# register-data-keys: one entry per data key ('trustflow util generate-data-key-b64').
register_data_keys:
  data_keys:
    - resource_uri: ""      # the data's UUID
      data_key_b64: ""      # its key, standard base64

# register-data-policy: the whole policy of one data UUID (replaces an existing one).
register_data_policy:
  scope: "default"
  data_uuid: ""
  rules:
    - rule_id: ""
      grantee_party_ids: []   # party ids allowed to use the data
      op_constraints:
        - op_name: ""         # e.g. psi
          constraints: []     # CEL expressions over the request
      columns: []             # allowed columns ("*": all)
      global_constraints: []  # CEL expressions, e.g. r.env.tee.platform == "tdx"

# get-data-policys: list your policies in a scope.
get_data_policys:
  scope: "default"

# add-data-rule: append one rule to an existing policy.
add_data_rule:
  scope: "default"
  data_uuid: ""
  rule:
    rule_id: ""
    grantee_party_ids: []
    op_constraints:
      - op_name: ""
        constraints: []
    columns: []
    global_constraints: []

# delete-data-rule / delete-data-policy / delete-data-key
delete_data_rule:
  scope: "default"
  data_uuid: ""
  rule_id: ""
delete_data_policy:
  scope: "default"
  data_uuid: ""
delete_data_key:
  resource_uri: ""

# get-export-data-key-b64: a data key released by a vote result
# ('trustflow util generate-vote-result').
get_export_data_key_b64:
  resource_uri: ""
  data_export_certificate_file: ""
"""


def _yaml_scalar(value: str | None) -> str:
    return json.dumps(value) if value else "null"


@cms.command("init")
@click.argument(
    "path", type=click.Path(dir_okay=False, path_type=Path), default="cms.yaml", required=False
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@pass_ctx
def init(c: Context, path: Path, force: bool) -> None:
    """Write a commented config template to PATH (default cms.yaml), filled with the group's
    --host, --tee-plat, --key-file and --cert-file when given."""
    if path.exists() and not force:
        raise InvalidInput(f"{path} exists (use --force to overwrite it)")
    cert_files = c.overrides.get("cert_files") or ()
    text = TEMPLATE.format(
        host=c.overrides.get("host") or "127.0.0.1:8888",
        tee_plat=_yaml_scalar(c.overrides.get("tee_plat")),
        key_file=_yaml_scalar(c.overrides.get("key_file")),
        cert_files=json.dumps(list(cert_files)) if cert_files else "null",
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError as exc:
        raise ObjectNotFound(f"{path}: {exc.strerror or exc}") from None
    c.emit(
        f"wrote {path}: fill it in, then run 'trustflow cms --config-file {path} ...'",
        {"path": str(path)},
    )


@cms.command("get-public-key")
@json_option
@pass_ctx
def get_public_key(c: Context) -> None:
    """Print the CM public key (PEM); its report is verified unless tee_plat is sim."""
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
@click.option("--scheme", default=None, help="Key scheme (overrides common.scheme; default RSA).")
@json_option
@pass_ctx
def register_cert(c: Context, scheme: str | None) -> None:
    """Register the owner's certificate chain under its party id."""
    creds = c.credentials()
    scheme = c.value("common", "scheme", scheme, "--scheme", default="RSA")
    c.run(lambda client: client.register_cert(creds, scheme))
    c.emit(f"registered certificate of {creds.party_id}", {"party_id": creds.party_id})


def _data_key(key: str) -> str:
    """``key`` when it is standard base64, else :class:`ValueError`."""
    base64.b64decode(key, validate=True)
    return key


def _config_data_key(node: Node) -> str:
    """A data key from the config, never echoed in an error (it is a secret)."""
    if not isinstance(node.value, str) or not node.value:
        raise node.error("missing or not a string (a data key in standard base64 is required)")
    try:
        return _data_key(node.value)
    except (binascii.Error, ValueError):
        raise node.error("not valid standard base64 (value not shown)") from None


@cms.command("register-data-keys")
@click.option("--resource-uri", default=None, help="Register this one key instead of the config's.")
@click.option(
    "--data-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the key of --resource-uri (standard base64).",
)
@json_option
@pass_ctx
def register_data_keys(c: Context, resource_uri: str | None, data_key_file: Path | None) -> None:
    """Register data keys: --resource-uri with --data-key-file, or every entry of
    register_data_keys.data_keys (resource_uri, data_key_b64)."""
    keys = []
    if resource_uri is not None or data_key_file is not None:
        if not resource_uri or data_key_file is None:
            raise click.UsageError("--resource-uri and --data-key-file go together")
        try:
            key = data_key_file.read_text().strip()
        except OSError as exc:
            raise ObjectNotFound(f"{data_key_file}: {exc.strerror or exc}") from None
        try:
            keys.append((resource_uri, _data_key(key)))
        except (binascii.Error, ValueError):
            raise InvalidInput(f"--data-key-file {data_key_file} is not valid base64") from None
    else:
        entries = c.section("register_data_keys").get("data_keys").elements(default=[])
        if not entries:
            raise InvalidInput(
                "no data key given: use --resource-uri and --data-key-file, or list them in "
                "register_data_keys.data_keys of the config file"
            )
        for entry in entries:
            entry.mapping({"resource_uri", "data_key_b64"})
            uri = entry.get("resource_uri").string()
            keys.append((uri, _config_data_key(entry.get("data_key_b64"))))
    creds = c.credentials()
    c.run(lambda client: client.create_data_keys(creds, keys))
    uris = [u for u, _ in keys]
    c.emit(f"registered {len(keys)} data key(s): {', '.join(uris)}", {"resource_uris": uris})


@cms.command("register-data-policy")
@scope_option
@uuid_option
@rule_options
@json_option
@pass_ctx
def register_data_policy(c: Context, scope: str | None, data_uuid: str | None, **rule: Any) -> None:
    """Create (or replace) the policy of a data UUID: register_data_policy.{scope, data_uuid,
    rules}, or the one rule given by --rule-id and its options."""
    sec = "register_data_policy"
    scope = c.value(sec, "scope", scope, "--scope", default=DEFAULT_SCOPE)
    uuid = c.value(sec, "data_uuid", data_uuid, "--data-uuid")
    one = _rule_from_options(**rule)
    if one is not None:
        rules = [one]
    else:
        rules_cfg = c.section(sec).get("rules").elements(default=[])
        rules = [rule_from_config(r) for r in rules_cfg]
    creds = c.credentials()
    c.run(lambda client: client.create_data_policy(creds, scope, uuid, rules))
    c.emit(
        f"policy for {uuid} in scope {scope!r}: {len(rules)} rule(s)",
        {"data_uuid": uuid, "scope": scope, "rules": len(rules)},
    )


@cms.command("get-data-policys")
@scope_option
@json_option
@pass_ctx
def get_data_policys(c: Context, scope: str | None) -> None:
    """List your policies in a scope (get_data_policys.scope): one table row per rule."""
    from google.protobuf import json_format

    creds = c.credentials()
    scope = c.value("get_data_policys", "scope", scope, "--scope", default=DEFAULT_SCOPE)
    policies = c.run(lambda client: client.list_data_policies(creds, scope))
    data = [json_format.MessageToDict(p, preserving_proto_field_name=True) for p in policies]
    rows = []
    for p in policies:
        for r in p.rules:
            ops = [
                o.op_name + (f" [{'; '.join(o.constraints)}]" if o.constraints else "")
                for o in r.op_constraints
            ]
            rows.append(
                [
                    p.data_uuid,
                    r.rule_id,
                    _joined(list(r.grantee_party_ids)),
                    _joined(ops),
                    _joined(list(r.columns)),
                    _joined(list(r.global_constraints)),
                ]
            )
        if not p.rules:
            rows.append([p.data_uuid, "-", "-", "-", "-", "-"])
    headers = ["DATA UUID", "RULE", "GRANTEES", "OPS", "COLUMNS", "GLOBAL CONSTRAINTS"]
    summary = f"{len(policies)} policy(ies) in scope {scope!r}"
    c.emit(f"{table(headers, rows)}\n{summary}" if rows else summary, data)


@cms.command("add-data-rule")
@scope_option
@uuid_option
@rule_options
@json_option
@pass_ctx
def add_data_rule(c: Context, scope: str | None, data_uuid: str | None, **rule: Any) -> None:
    """Append a rule (add_data_rule.rule, or --rule-id and its options) to the policy
    add_data_rule.{scope, data_uuid}."""
    sec = "add_data_rule"
    scope = c.value(sec, "scope", scope, "--scope", default=DEFAULT_SCOPE)
    uuid = c.value(sec, "data_uuid", data_uuid, "--data-uuid")
    one = _rule_from_options(**rule)
    if one is None:
        one = rule_from_config(c.section(sec).get("rule"))
    creds = c.credentials()
    c.run(lambda client: client.add_data_rule(creds, scope, uuid, one))
    c.emit(f"added rule {one.rule_id!r} to {uuid}", {"data_uuid": uuid, "rule_id": one.rule_id})


@cms.command("delete-data-rule")
@scope_option
@uuid_option
@click.option("--rule-id", default=None, help="Rule to delete (overrides the config).")
@json_option
@pass_ctx
def delete_data_rule(
    c: Context, scope: str | None, data_uuid: str | None, rule_id: str | None
) -> None:
    """Delete the rule delete_data_rule.rule_id of delete_data_rule.{scope, data_uuid}."""
    creds = c.credentials()
    sec = "delete_data_rule"
    scope = c.value(sec, "scope", scope, "--scope", default=DEFAULT_SCOPE)
    uuid = c.value(sec, "data_uuid", data_uuid, "--data-uuid")
    rule_id = c.value(sec, "rule_id", rule_id, "--rule-id")
    c.run(lambda client: client.delete_data_rule(creds, scope, uuid, rule_id))
    c.emit(f"deleted rule {rule_id!r} of {uuid}", {"data_uuid": uuid, "rule_id": rule_id})


@cms.command("delete-data-policy")
@scope_option
@uuid_option
@json_option
@pass_ctx
def delete_data_policy(c: Context, scope: str | None, data_uuid: str | None) -> None:
    """Delete the policy delete_data_policy.{scope, data_uuid}."""
    creds = c.credentials()
    sec = "delete_data_policy"
    scope = c.value(sec, "scope", scope, "--scope", default=DEFAULT_SCOPE)
    uuid = c.value(sec, "data_uuid", data_uuid, "--data-uuid")
    c.run(lambda client: client.delete_data_policy(creds, scope, uuid))
    c.emit(f"deleted policy of {uuid} in scope {scope!r}", {"data_uuid": uuid, "scope": scope})


@cms.command("get-export-data-key-b64")
@click.option("--resource-uri", default=None, help="Data UUID (overrides the config).")
@click.option(
    "--certificate-file",
    default=None,
    help="Vote result file (overrides get_export_data_key_b64.data_export_certificate_file).",
)
@json_option
@pass_ctx
def get_export_data_key_b64(
    c: Context, resource_uri: str | None, certificate_file: str | None
) -> None:
    """Print the data key of get_export_data_key_b64.resource_uri, authorized by the vote
    result in get_export_data_key_b64.data_export_certificate_file."""
    creds = c.credentials()
    sec = "get_export_data_key_b64"
    uri = c.value(sec, "resource_uri", resource_uri, "--resource-uri")
    cert_file = c.value(sec, "data_export_certificate_file", certificate_file, "--certificate-file")
    try:
        certificate = Path(cert_file).read_text()
    except OSError as exc:
        raise ObjectNotFound(f"{cert_file}: {exc.strerror}") from None
    key = c.run(lambda client: client.get_export_data_key(creds, uri, certificate))
    c.emit(key, {"resource_uri": uri, "data_key_b64": key})


@cms.command("delete-data-key")
@click.option("--resource-uri", default=None, help="Data UUID (overrides the config).")
@json_option
@pass_ctx
def delete_data_key(c: Context, resource_uri: str | None) -> None:
    """Delete the key of delete_data_key.resource_uri."""
    creds = c.credentials()
    uri = c.value("delete_data_key", "resource_uri", resource_uri, "--resource-uri")
    c.run(lambda client: client.delete_data_key(creds, uri))
    c.emit(f"deleted data key of {uri}", {"resource_uri": uri})
