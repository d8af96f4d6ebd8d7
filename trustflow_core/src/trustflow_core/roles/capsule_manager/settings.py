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
```
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ...attestation import Attributes, Policy, Verifier
from ...errors import InvalidInput
from ..capsule_manager_protocol.freshness import FreshnessWindow

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
}


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "trustflow" / "capsule-manager"


@dataclass(frozen=True)
class TlsSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True)
class CMSettings:
    host: str = "127.0.0.1"
    port: int = 8888
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


def _section(data: Mapping[str, Any], key: str, allowed: set[str]) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"config: {key} must be a mapping")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise InvalidInput(f"config: unknown key(s) {unknown} in {key}")
    return value


def _path(value: Any, what: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise InvalidInput(f"config: {what} must be a path")
    return Path(value).expanduser()


def _bool(value: Any, what: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise InvalidInput(f"config: {what} must be true or false")


def _seconds(value: Any, default: int, what: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"config: {what} must be a whole number of seconds >= 0")
    return value


def _freshness(section: Mapping[str, Any]) -> FreshnessWindow | None:
    if not section:
        return None
    default = FreshnessWindow()
    return FreshnessWindow(
        max_future=_seconds(
            section.get("max_future_seconds"), default.max_future, "requests.max_future_seconds"
        ),
        max_age=_seconds(
            section.get("max_age_seconds"), default.max_age, "requests.max_age_seconds"
        ),
    )


def load_settings(config_file: Path | None, **overrides: Any) -> CMSettings:
    """Read ``config_file`` (optional) and apply non-None ``overrides`` (flag values)."""
    data: Mapping[str, Any] = {}
    if config_file is not None:
        try:
            data = yaml.safe_load(config_file.read_text()) or {}
        except OSError as exc:
            raise InvalidInput(f"config file {config_file}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise InvalidInput(f"config file {config_file} is not valid YAML: {exc}") from None
        if not isinstance(data, Mapping):
            raise InvalidInput(f"config file {config_file} must hold a mapping")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise InvalidInput(f"config: unknown key(s) {unknown}")
    storage = _section(data, "storage", {"url", "storage_key_file"})
    key = _section(data, "key", {"private_key_file", "cert_file"})
    tls = _section(data, "tls", {"cert_file", "key_file", "client_ca_file"})
    att = _section(
        data, "attestation", {"allow_upstream_sim", "allow_simulation", "main_attributes"}
    )
    verifiers = _section(data, "verifiers", set(data.get("verifiers") or {}))
    requests = _section(data, "requests", {"max_age_seconds", "max_future_seconds"})
    audit = _section(data, "audit", {"enabled"})
    tls_settings = None
    if tls:
        cert, tkey = (
            _path(tls.get("cert_file"), "tls.cert_file"),
            _path(tls.get("key_file"), "tls.key_file"),
        )
        if cert is None or tkey is None:
            raise InvalidInput("config: tls needs cert_file and key_file")
        tls_settings = TlsSettings(
            cert, tkey, _path(tls.get("client_ca_file"), "tls.client_ca_file")
        )
    main = att.get("main_attributes")
    if main is not None:
        if not isinstance(main, list):
            raise InvalidInput("config: attestation.main_attributes must be a list")
        main = tuple(Attributes.from_dict(m) for m in main)
    values: dict[str, Any] = {
        "host": data.get("host"),
        "port": data.get("port"),
        "plat": data.get("plat"),
        "data_dir": _path(data.get("data_dir"), "data_dir"),
        "storage_url": storage.get("url"),
        "storage_key_file": _path(storage.get("storage_key_file"), "storage.storage_key_file"),
        "private_key_file": _path(key.get("private_key_file"), "key.private_key_file"),
        "cert_file": _path(key.get("cert_file"), "key.cert_file"),
        "tls": tls_settings,
        "allow_upstream_sim": _bool(
            att.get("allow_upstream_sim"), "attestation.allow_upstream_sim"
        ),
        "allow_simulation": _bool(att.get("allow_simulation"), "attestation.allow_simulation"),
        "main_attributes": main,
        "freshness": _freshness(requests),
        "attester": data.get("attester"),
        "verifiers": dict(verifiers) or None,
        "envelope_channel": data.get("envelope_channel"),
        "audit": _bool(audit.get("enabled"), "audit.enabled"),
    }
    for name, value in overrides.items():
        if value is not None:
            values[name] = value
    if values["port"] is not None and (
        not isinstance(values["port"], int) or not 0 <= values["port"] <= 65535
    ):
        raise InvalidInput("config: port must be an integer 0..65535")
    channel = values["envelope_channel"]
    if channel is not None and (not isinstance(channel, str) or not channel):
        raise InvalidInput(f"config: envelope_channel must be a backend name, got {channel!r}")
    for name in ("attester",):
        if values[name] is not None and not isinstance(values[name], Mapping):
            raise InvalidInput(f"config: {name} must be a mapping")
    return CMSettings(**{k: v for k, v in values.items() if v is not None})
