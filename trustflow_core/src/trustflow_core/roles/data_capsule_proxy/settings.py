"""Settings of the Data Capsule Proxy role."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...capsule import FORMATS
from ...errors import InvalidInput
from ...settings_schema import Node
from .._options import DEFAULT_PORTS, LOG_KEYS

if TYPE_CHECKING:
    from ...manager import TrustflowPluginManager
    from ...storage import Storage
    from .cm_init import CmInitConfig


#: A request's ``S3Config.type`` (``oss`` also for an unspecified type) → the storage backend
#: serving it, by default.
OBJECT_STORES: Mapping[str, str] = {"oss": "oss", "minio": "s3"}
#: The value that switches an object-store type off.
DISABLED = "none"


def _directories(node: Node) -> tuple[str, ...]:
    roots = tuple(str(e.path()) for e in node.elements())
    for element, root in zip(node.elements(), roots, strict=True):
        if not Path(root).is_dir():
            raise element.expected("an existing directory")
    return roots


#: The keys of ``trustflow data-capsule-proxy -c FILE`` and how each is read: every option by
#: its name, plus ``key_exchange_settings`` (a mapping) and ``object_stores`` (type → backend).
CONFIG_KEYS: Mapping[str, Callable[[Node], Any]] = {
    "cert_path": Node.path,
    "private_key_path": Node.path,
    "plat": Node.name,
    "host": Node.string,
    "port": Node.port,
    "cm_endpoint": lambda node: ",".join(node.endpoints()),
    "allowed_cm_endpoints": lambda node: tuple(node.strings()),
    "key_exchange": Node.name,
    "key_exchange_settings": Node.mapping,
    "allowed_roots": _directories,
    "allowed_object_store_endpoints": lambda node: tuple(node.strings()),
    "local_storage": Node.name,
    "object_stores": lambda node: {
        kind: backend.name() for kind, backend in node.mapping(OBJECT_STORES).items()
    },
    "result_format": lambda node: node.choice(FORMATS),
    "cm_init_config": Node.path,
    "max_body_bytes": lambda node: node.integer(minimum=1),
    "key_timeout": lambda node: node.number(zero_ok=False),
    "chunk_size": lambda node: node.integer(minimum=1),
    **LOG_KEYS,
}


@dataclass(frozen=True)
class DataCapsuleProxySettings:
    """What ``trustflow data-capsule-proxy`` is started with.

    * ``cert_path`` / ``private_key_path`` -- the app certificate (party id source, RA binding)
      and key; given to the ``capsule_manager`` key exchange.
    * ``allowed_roots`` -- directories every local path of a request must resolve into.
    * ``plat`` -- the attester backend whose reports the ``capsule_manager`` key exchange sends
      (``tdx``, ``csv``, ...; None: the development default attester, tee_sim's verifiable
      SIM reports; ``none``: no report at all, which is what upstream's ``--plat sim`` does and
      which only a CM started with ``--allow-upstream-sim`` accepts).
    * ``key_exchange`` / ``key_exchange_settings`` -- backend name (registry) and its settings.
      For ``capsule_manager`` the settings default ``endpoint`` (``cm_endpoint``),
      ``cert_file``/``private_key_file`` (the app identity above, an RSA key), ``attester``
      (``plat``) and ``timeout`` (``key_timeout``, divided by the number of replicas
      ``cm_endpoint`` lists: the per-attempt timeout of the failover).
    * ``cm_endpoint`` / ``allowed_cm_endpoints`` -- default CM endpoint and the others a
      request may name. ``cm_endpoint`` may list several replicas of one CM
      (``"h1:p1,h2:p2"``, or a YAML list in the file): the key exchange fails over between
      them (docs/failover.md), and a request naming one of them is served by that list.
    * ``allowed_object_store_endpoints`` -- the only object-store endpoints (``host[:port]``,
      a scheme is ignored) a request's ``s3_config`` may name; empty (the default) = object
      storage is refused. Deny by default: otherwise a request could make the proxy connect
      to any address.
    * ``local_storage`` -- the storage backend (registry name, default ``local``) serving the
      requests' local paths (``local_fs_config``, ``source_config``); it must serve ``file``
      URIs and is built with ``roots`` (``allowed_roots``) and ``chunk_size``.
    * ``object_stores`` -- which storage backend serves a request's ``s3_config`` by its
      ``type``: ``oss`` (``S3_STORAGE_TYPE_OSS`` and unspecified) and ``minio``; default
      :data:`OBJECT_STORES` (``oss`` → ``oss``, ``minio`` → ``s3``). A type left out (or mapped
      to ``none``) is refused (403). The backend is built with the request's ``endpoint``,
      ``bucket``, credentials, ``region``, ``secure``, ``cert_check`` and ``chunk_size`` and
      addressed as ``<its first scheme>://<bucket>/<path>``.
    * ``result_format`` -- ``v1`` (upstream-compatible, default) or ``v2`` (authenticated).
    * ``cm_init`` -- a parsed ``--cm-init-config``: fetch the group TLS asset before serving
      and keep it fresh (:mod:`.cm_init`); ``tls_refresh_fraction`` / ``tls_retry_interval``
      tune the re-fetch.
    """

    cert_path: Path
    private_key_path: Path
    allowed_roots: tuple[str, ...]
    plat: str | None = None
    key_exchange: str = "capsule_manager"
    key_exchange_settings: Mapping[str, Any] = field(default_factory=dict)
    cm_endpoint: str = "127.0.0.1:8888"
    allowed_cm_endpoints: tuple[str, ...] = ()
    allowed_object_store_endpoints: tuple[str, ...] = ()
    local_storage: str = "local"
    object_stores: Mapping[str, str] = field(default_factory=lambda: dict(OBJECT_STORES))
    result_format: str = "v1"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORTS["data-capsule-proxy"]
    max_body_bytes: int = 1 << 20
    key_timeout: float = 30.0
    chunk_size: int = 1 << 20
    cm_init: CmInitConfig | None = None
    tls_refresh_fraction: float = 0.75
    tls_retry_interval: float = 30.0

    def __post_init__(self) -> None:
        if self.result_format not in FORMATS:
            raise InvalidInput(
                f"result format must be one of {FORMATS}, got {self.result_format!r}"
            )
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"port must be 0..65535, got {self.port}")
        if not self.allowed_roots:
            raise InvalidInput("give at least one --allowed-root directory")
        if not isinstance(self.local_storage, str) or not self.local_storage:
            raise InvalidInput(f"local storage must be a backend name, got {self.local_storage!r}")
        for kind, backend in self.object_stores.items():
            if kind not in OBJECT_STORES:
                raise InvalidInput(
                    f"object-store type must be one of {sorted(OBJECT_STORES)}, got {kind!r}"
                )
            if not isinstance(backend, str) or not backend:
                raise InvalidInput(f"object-store type {kind!r}: backend name is empty")
        for endpoint in self.allowed_object_store_endpoints:
            if not bare_endpoint(endpoint):
                raise InvalidInput(f"allowed object-store endpoint {endpoint!r} is not host[:port]")

    def object_store_allowed(self, endpoint: str) -> bool:
        """Whether a request may name the object-store ``endpoint`` (compared as
        :func:`bare_endpoint`)."""
        bare = bare_endpoint(endpoint)
        return bool(bare) and bare in {
            bare_endpoint(allowed) for allowed in self.allowed_object_store_endpoints
        }

    def object_store_backend(self, kind: str) -> str | None:
        """The backend name serving object-store type ``kind``; None when it is off."""
        backend = self.object_stores.get(kind)
        return None if backend in (None, DISABLED) else backend

    def read_cert(self) -> bytes:
        try:
            return self.cert_path.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read --cert-path {self.cert_path}: {exc}") from exc

    def exchange_settings(self, default_attester: str | None = None) -> dict[str, Any]:
        """The key exchange's settings, with the CM defaults described above
        (``default_attester``: the development default attester's name, used when ``plat`` is
        None)."""
        settings = dict(self.key_exchange_settings)
        if self.key_exchange == "capsule_manager":
            settings.setdefault("endpoint", self.cm_endpoint)
            settings.setdefault("cert_file", str(self.cert_path))
            settings.setdefault("private_key_file", str(self.private_key_path))
            settings.setdefault("attester", self.plat or default_attester)
            # key_timeout bounds a whole call (KeySource); each of n replicas gets its share,
            # so that one hung replica leaves time for the next (docs/failover.md)
            replicas = len(self.cm_endpoint.split(","))
            settings.setdefault("timeout", self.key_timeout / replicas)
        return settings


def bare_endpoint(endpoint: str) -> str:
    """``host[:port]`` of an endpoint, lower-cased, without a scheme or trailing ``/``."""
    return endpoint.split("://", 1)[-1].rstrip("/").lower().strip()


def settings_from(values: Mapping[str, Any]) -> DataCapsuleProxySettings:
    """The settings from the command's merged values (options and :data:`CONFIG_KEYS`);
    ``cm_init_config`` is read and validated here."""
    import os

    from .cm_init import load_cm_init

    exchange = values.get("key_exchange_settings")
    tuning = ("max_body_bytes", "key_timeout", "chunk_size")
    return DataCapsuleProxySettings(
        cert_path=Path(values["cert_path"]),
        private_key_path=Path(values["private_key_path"]),
        allowed_roots=tuple(os.path.abspath(r) for r in values["allowed_roots"]),
        plat=values["plat"],
        key_exchange=values["key_exchange"],
        key_exchange_settings=exchange.value if isinstance(exchange, Node) else exchange or {},
        cm_endpoint=",".join(Node(values["cm_endpoint"], "--cm-endpoint").endpoints()),
        allowed_cm_endpoints=tuple(values["allowed_cm_endpoints"]),
        allowed_object_store_endpoints=tuple(values["allowed_object_store_endpoints"]),
        local_storage=values["local_storage"],
        object_stores={**OBJECT_STORES, **values["object_stores"]},
        result_format=values["result_format"],
        host=values["host"],
        port=values["port"],
        cm_init=load_cm_init(values["cm_init_config"]) if values["cm_init_config"] else None,
        **{k: values[k] for k in tuning if k in values},
    )


def check_settings(
    settings: DataCapsuleProxySettings,
    pm: TrustflowPluginManager,
    exchange_settings: Node | None = None,
) -> None:
    """What is checked before serving (and all ``--check-config`` does) beyond parsing: the
    certificate reads and names a party, the key exchange and the local storage exist and
    build from their settings (``exchange_settings``: where those came from, for errors), the
    object-store backends exist when object storage is on. Nothing is contacted, nothing listens."""
    import asyncio

    from ...identity import load_pem_chain, party_id_of_chain
    from ...registry import KEY_EXCHANGE, STORAGE, attester_class, backend_class

    party_id_of_chain(load_pem_chain(settings.read_cert()))
    exchange_cls = backend_class(pm, KEY_EXCHANGE, settings.key_exchange)
    default_attester = None if settings.plat else attester_class(pm, None)
    full = settings.exchange_settings(default_attester.name if default_attester else None)
    local_cls = local_storage_class(pm, settings.local_storage)
    for kind in OBJECT_STORES if settings.allowed_object_store_endpoints else ():
        backend = settings.object_store_backend(kind)
        if backend is not None:
            backend_class(pm, STORAGE, backend)

    async def build() -> None:
        node = (
            Node(full, exchange_settings.source, exchange_settings.key)
            if exchange_settings is not None
            else Node.settings(full, "key exchange settings")
        )
        async with node.build(lambda value: exchange_cls.from_role(value, pm=pm)):
            pass
        local = {"roots": list(settings.allowed_roots), "chunk_size": settings.chunk_size}
        async with local_cls.from_role(local, pm=pm):
            pass

    asyncio.run(build())


def local_storage_class(pm: TrustflowPluginManager, name: str) -> type[Storage]:
    """The storage backend ``name`` serving the requests' local paths; it must serve
    ``file`` URIs."""
    from ...registry import STORAGE, backend_class

    cls = backend_class(pm, STORAGE, name)
    if "file" not in cls.schemes:
        raise InvalidInput(
            f"--local-storage {cls.name!r} does not serve file paths (it serves "
            f"{', '.join(s + '://' for s in cls.schemes)})"
        )
    return cls
