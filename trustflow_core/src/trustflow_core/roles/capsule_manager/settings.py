"""Capsule Manager settings: YAML file, then command-line flags override field by field.

```yaml
host: 127.0.0.1            # listen address (upstream listens on 0.0.0.0)
port: 8888
plat: <default>            # attester backend for the CM's own GetRaCert report; "none": no report
                           # (default: the development default attester, tee_sim's)
data_dir: ~/.local/share/trustflow/capsule-manager
storage:
  url: sqlite:///<data_dir>/cm.db      # or postgresql+psycopg://..., mysql+pymysql://...
  storage_key_file: <data_dir>/storage.key
key:                       # the CM identity; generated into these files when both are absent
  private_key_file: <data_dir>/cm.key
  cert_file: <data_dir>/cm.crt
tls:                       # optional TLS on the gRPC port; client_ca_file makes it mTLS
  cert_file: server.crt
  key_file: server.key
  client_ca_file: clients-ca.pem
attestation:               # how app reports (GetDataKeys, CreateResultDataKey) are verified
  allow_upstream_sim: false   # accept requests WITHOUT a report (upstream sim clients)
  allow_simulation: <true when the plat attester is simulated>   # accept simulated reports
  main_attributes:            # platforms/measurements allowed (any entry matching suffices;
                              # default: each installed verifier's acceptance entry)
    - {str_tee_platform: TDX, bool_debug_disabled: "true", hex_ta_measurement: "..."}
requests:                  # freshness claims (iat) of signed owner requests that carry them
  max_age_seconds: 600       # iat may be at most this old
  max_future_seconds: 300    # and at most this far ahead (clock skew)
attester: {}               # settings of the `plat` attester backend
verifiers: {sim: {}}       # settings per verifier backend name
envelope_channel: jwe      # envelope channel backend of the JWE/JWS envelopes (built with
                           # profile: upstream)
audit: {enabled: true}     # the owners' audit log (docs/audit.md)
replicas:                  # replica mode (docs/replicas.md): several CMs share one identity and
                           # one PostgreSQL/MySQL database (SQLite is refused)
  join: [cm-0.cm:8888]       # running replicas to obtain the identity from (--join); a replica
                             # without key files and without peers founds the identity
  policy:                    # who may join (and whom a joiner accepts): attribute entries like
    - {str_tee_platform: TDX, hex_ta_measurement: "..."}   # attestation.main_attributes;
                             # default: this CM's own platform and measurements
  join_timeout_seconds: 60   # how long a joiner retries its peers before giving up
  save_joined_identity: false  # true: write a joined identity to the key files (default: memory)
  tls_ca_file: peers-ca.pem  # with tls: the CA of the peers' certificates (needed to join)
```
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...attestation import Attributes, Policy, Verifier
from ...errors import InvalidInput
from ...settings_schema import Node, load_yaml_file
from .._options import DEFAULT_PORTS
from ..capsule_manager_protocol.freshness import FreshnessWindow

if TYPE_CHECKING:
    from ...manager import TrustflowPluginManager

TOP_KEYS = {
    "host",
    "port",
    "plat",
    "data_dir",
    "storage",
    "key",
    "tls",
    "attestation",
    "requests",
    "attester",
    "verifiers",
    "envelope_channel",
    "audit",
    "replicas",
}
REPLICA_KEYS = {"join", "policy", "join_timeout_seconds", "save_joined_identity", "tls_ca_file"}
#: Seconds a joiner keeps trying its peers by default.
DEFAULT_JOIN_TIMEOUT = 60.0


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "trustflow" / "capsule-manager"


@dataclass(frozen=True)
class TlsSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True)
class ReplicaSettings:
    """The ``replicas:`` section (docs/replicas.md); its presence means replica mode.

    ``join``: ``host:port`` of running replicas to obtain the identity from; ``policy``: the
    attribute entries a joiner (and, on the joiner, the responder) must match (None: this CM's
    own platform and measurements); ``join_timeout``: seconds a joiner retries its peers;
    ``save_joined_identity``: write a joined identity to the key files (default: memory only);
    ``tls_ca_file``: the CA of the peers' TLS certificates when the CM port has ``tls:`` (the
    joiner then presents its own ``tls`` certificate when ``tls.client_ca_file`` is set)."""

    join: tuple[str, ...] = ()
    policy: tuple[Attributes, ...] | None = None
    join_timeout: float = DEFAULT_JOIN_TIMEOUT
    save_joined_identity: bool = False
    tls_ca_file: Path | None = None


@dataclass(frozen=True)
class CMSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORTS["capsule-manager"]
    plat: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    storage_url: str | None = None
    storage_key_file: Path | None = None
    private_key_file: Path | None = None
    cert_file: Path | None = None
    tls: TlsSettings | None = None
    allow_upstream_sim: bool = False
    allow_simulation: bool | None = None
    main_attributes: tuple[Attributes, ...] | None = None
    freshness: FreshnessWindow = field(default_factory=FreshnessWindow)
    attester: Mapping[str, Any] = field(default_factory=dict)
    verifiers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    envelope_channel: str = "jwe"
    audit: bool = True
    #: Replica mode (the ``replicas:`` section or ``--join``); None: a single CM.
    replicas: ReplicaSettings | None = None
    #: Where the settings came from (the config file), named by configuration errors, and
    #: which of them the file set (the others came from flags, the environment or defaults).
    source: str = field(default="<flags>", compare=False)
    from_file: frozenset[str] = field(default=frozenset(), compare=False)

    def __repr__(self) -> str:  # the storage URL's password never shows
        from .database_url import redact

        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.storage_url:
            shown["storage_url"] = redact(self.storage_url, self.storage_url)
        return f"CMSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def db_url(self) -> str:
        return self.storage_url or f"sqlite:///{self.data_dir / 'cm.db'}"

    @property
    def key_paths(self) -> tuple[Path, Path, Path]:
        return (
            self.private_key_file or self.data_dir / "cm.key",
            self.cert_file or self.data_dir / "cm.crt",
            self.storage_key_file or self.data_dir / "storage.key",
        )

    def attestation_policy(
        self, verifiers: Iterable[type[Verifier]], *, attester_simulated: bool
    ) -> Policy:
        """The policy app reports must satisfy (user-data binding is added per request).

        ``allow_simulation`` defaults to ``attester_simulated`` (whether the CM's own attester
        is simulated). Default entries: the :meth:`~Verifier.acceptance_entry` of every
        installed verifier (any genuine report with debug off where the platform has a debug
        flag), simulated ones only when simulation is allowed. Upstream pins no measurement
        either (docs/compat.md#cm-pins-no-measurement); owners pin measurements in their rules
        (``r.env.tee``)."""
        allow_sim = attester_simulated if self.allow_simulation is None else self.allow_simulation
        entries = self.main_attributes
        if entries is None:
            entries = tuple(v.acceptance_entry() for v in verifiers if allow_sim or not v.simulated)
        return Policy(entries, allow_sim)

    def replica_problem(self) -> str | None:
        """Why these settings cannot run as a replica (None: they can, or no replica mode):
        replicas share one database, so a SQLite URL (local to one host) is refused."""
        if self.replicas is None:
            return None
        if self.db_url.startswith("sqlite"):
            shown = self.db_url.split("?", 1)[0]
            return (
                "replicas need a shared database (PostgreSQL or MySQL); "
                f"{shown} is local to one host (set storage.url)"
            )
        if self.plat == "none" or self.plat == "":
            return "replicas attest to each other: plat 'none' cannot join or admit a replica"
        if self.tls is not None and self.replicas.join and self.replicas.tls_ca_file is None:
            return (
                "replicas.join with tls: set replicas.tls_ca_file, the CA of the peers' TLS "
                "certificates"
            )
        return None


def load_settings(config_file: Path | None, **overrides: Any) -> CMSettings:
    """Read ``config_file`` (optional) and apply non-None ``overrides`` (flag values). A bad
    value raises :class:`~trustflow_core.settings_schema.ConfigError` naming the file and the
    key path; relative paths in the file are relative to the working directory (upstream)."""
    root = (
        load_yaml_file(config_file, relative_to_file=False)
        if config_file is not None
        else Node({}, "<flags>")
    )
    root.mapping(TOP_KEYS)
    storage = root.get("storage").mapping({"url", "storage_key_file"})
    key = root.get("key").mapping({"private_key_file", "cert_file"})
    tls = root.get("tls")
    att = root.get("attestation").mapping(
        {"allow_upstream_sim", "allow_simulation", "main_attributes"}
    )
    requests = root.get("requests").mapping({"max_age_seconds", "max_future_seconds"})
    audit = root.get("audit").mapping({"enabled"})
    in_file = isinstance(root.value, Mapping) and "replicas" in root.value
    replicas = _replicas(root.get("replicas"), in_file, overrides.pop("join", None))
    tls_settings = None
    if tls.present:
        tls.mapping({"cert_file", "key_file", "client_ca_file"}, required=("cert_file", "key_file"))
        tls_settings = TlsSettings(
            tls.get("cert_file").path(),
            tls.get("key_file").path(),
            tls.get("client_ca_file").path(None),
        )
    main = None
    if att.get("main_attributes").present:
        main = tuple(
            entry.build(Attributes.from_dict) for entry in att.get("main_attributes").elements()
        )
    freshness = None
    if requests.present and requests.value:
        default = FreshnessWindow()
        freshness = FreshnessWindow(
            max_future=requests.get("max_future_seconds").integer(default.max_future, minimum=0),
            max_age=requests.get("max_age_seconds").integer(default.max_age, minimum=0),
        )
    verifiers = {name: node.raw_mapping() for name, node in root.get("verifiers").items()}
    values: dict[str, Any] = {
        "host": root.get("host").string(None),
        "port": root.get("port").port(None),
        "plat": root.get("plat").name(None),
        "data_dir": root.get("data_dir").path(None),
        "storage_url": storage.get("url").string(None),
        "storage_key_file": storage.get("storage_key_file").path(None),
        "private_key_file": key.get("private_key_file").path(None),
        "cert_file": key.get("cert_file").path(None),
        "tls": tls_settings,
        "allow_upstream_sim": att.get("allow_upstream_sim").boolean(None),
        "allow_simulation": att.get("allow_simulation").boolean(None),
        "main_attributes": main,
        "freshness": freshness,
        "attester": root.get("attester").raw_mapping() if root.get("attester").present else None,
        "verifiers": verifiers or None,
        "envelope_channel": root.get("envelope_channel").name(None),
        "audit": audit.get("enabled").boolean(None),
        "replicas": replicas,
        "source": root.source,
    }
    values["from_file"] = frozenset(
        name for name, value in values.items() if value is not None and name != "source"
    )
    for name, value in overrides.items():
        if value is not None:
            values[name] = value
            values["from_file"] -= {name}
    return CMSettings(**{k: v for k, v in values.items() if v is not None})


def _replicas(node: Node, in_file: bool, join: tuple[str, ...] | None) -> ReplicaSettings | None:
    """The ``replicas:`` section (``in_file``: the file has the key, even empty), with
    ``--join`` values (``join``) replacing its ``join``; None when neither is given."""
    if not in_file and not join:
        return None
    if node.value is None:
        node = Node({}, node.source, node.key)
    node.mapping(REPLICA_KEYS)
    peers = node.get("join").elements(default=[])
    for peer in peers:
        peer.host_port()
    policy = None
    if node.get("policy").present:
        policy = tuple(entry.build(Attributes.from_dict) for entry in node.get("policy").elements())
        if not policy:
            raise node.get("policy").expected("at least one attribute entry")
    if join:
        for value in join:
            Node(value, "<flags>", "--join").host_port()
    return ReplicaSettings(
        join=tuple(join) if join else tuple(str(p.value) for p in peers),
        policy=policy,
        join_timeout=node.get("join_timeout_seconds").number(DEFAULT_JOIN_TIMEOUT, zero_ok=False),
        save_joined_identity=node.get("save_joined_identity").boolean(False),
        tls_ca_file=node.get("tls_ca_file").path(None),
    )


def check_settings(settings: CMSettings, pm: TrustflowPluginManager) -> None:
    """What ``--check-config`` checks beyond parsing: the storage URL parses, the TLS files
    and existing identity/storage key files are readable, the attester, every configured
    verifier and the envelope channel exist and build from their settings. Nothing is
    created, no database is contacted, nothing listens. Replica mode refuses SQLite
    (:meth:`CMSettings.replica_problem`)."""
    import asyncio
    import functools

    from ...registry import ENVELOPE_CHANNEL, VERIFIER, attester_class, backend_class
    from . import database_url

    if "storage_url" in settings.from_file:
        Node(None, settings.source, "storage.url").build(
            lambda _: database_url.parse(settings.db_url)
        )
    else:
        database_url.parse(settings.db_url)
    problem = settings.replica_problem()
    if problem is not None:
        raise InvalidInput(problem)
    files: list[tuple[str, str, Path | None]] = []  # (key path, field or flag, path)
    if settings.tls is not None:
        files += [
            ("tls.cert_file", "tls", settings.tls.cert_file),
            ("tls.key_file", "tls", settings.tls.key_file),
            ("tls.client_ca_file", "tls", settings.tls.client_ca_file),
        ]
    if settings.replicas is not None and settings.replicas.tls_ca_file is not None:
        files.append(("replicas.tls_ca_file", "replicas", settings.replicas.tls_ca_file))
    for key, name, existing in zip(
        ("key.private_key_file", "key.cert_file", "storage.storage_key_file"),
        ("private_key_file", "cert_file", "storage_key_file"),
        settings.key_paths,
        strict=True,
    ):
        files.append((key, name, existing if existing.exists() else None))
    for key, name, path in files:
        if path is None:
            continue
        try:
            path.read_bytes()
        except OSError as exc:
            problem = f"cannot read {path}: {exc.strerror or exc}"
            if name in settings.from_file:
                raise Node(str(path), settings.source, key).error(problem) from None
            raise InvalidInput(f"--{name.replace('_', '-')}: {problem}") from None
    backend_class(pm, ENVELOPE_CHANNEL, settings.envelope_channel)
    attester = None if settings.plat in ("none", "") else attester_class(pm, settings.plat)

    async def build() -> None:
        if attester is not None:
            node = Node(settings.attester, settings.source, "attester")
            async with node.build(lambda value: attester.from_role(value or None, pm=pm)):
                pass
        for name, values in settings.verifiers.items():
            verifier = backend_class(pm, VERIFIER, name)
            node = Node(values, settings.source, f"verifiers.{name}")
            async with node.build(functools.partial(_build, verifier, pm=pm)):
                pass

    asyncio.run(build())


def _build(cls: type[Verifier], value: Mapping[str, Any] | None, *, pm: Any) -> Verifier:
    return cls.from_role(value or None, pm=pm)
