"""Gateway configuration: a small native YAML, or the subset of Envoy static config used by the
upstream examples (listeners with ``http_connection_manager`` prefix routes and the ``jwe``
filter, or ``tcp_proxy``; clusters with ``socket_address`` endpoints).

Native form::

    listeners:
      - name: public
        address: 127.0.0.1:50001
        routes:                       # HTTP listener: first matching prefix wins
          - {prefix: /RaProxy, cluster: ra_proxy}
          - {prefix: /teeapp, cluster: teeapp, require_jwe: true}   # only envelopes
        jwe: {cert_path: app.crt, private_key_path: app.key}   # optional
        # jwe: {..., freshness: required}  # or {mode, window, cache_size}; see .freshness
      - name: egress
        address: 127.0.0.1:31001
        tcp_proxy: peer               # TCP listener: every connection goes to this cluster
      - name: mtls_ingress            # mTLS ingress: requires a group client certificate
        address: 127.0.0.1:30001
        tcp_proxy: teeapp
        tls: {cert_path: tls.crt, private_key_path: tls.key}   # min_version: TLSv1.3 optional
        idle_timeout: 600             # optional, any listener (see "Connection limits" below)
        max_connections: 200
    clusters:
      ra_proxy: {endpoints: ["127.0.0.1:50002"], connect_timeout: 0.25}
      teeapp: {endpoints: ["127.0.0.1:8000"]}
      peer:                           # mTLS egress: the upstream connection is mutual TLS
        endpoints: ["127.0.0.1:40001"]
        tls: {cert_path: tls.crt, private_key_path: tls.key}
    max_body_bytes: 16777216          # largest buffered (JSON / JWE) body, either direction
    request_timeout: 15               # seconds to wait for an upstream answer

Relative file paths are relative to the config file. ``address_map`` rewrites addresses
(``"host:port"`` or ``"host"`` → ``"host:port"``/``"host"``) and ``path_map`` rewrites path
prefixes, so a deployment file can run on loopback with local key files. TLS transport sockets
are kept as Envoy TLS context mappings in ``tls`` (filenames rewritten); a native ``tls`` entry
is turned into the same shape. :mod:`.mtls` serves them with the ``mtls`` channel.

Connection limits, per listener (Envoy names; a duration of 0 turns a timeout off):

* ``request_headers_timeout`` (HTTP, default 10 s): a new connection must deliver its first
  request head within this time, else it gets 408 and is closed. Envoy: the
  ``http_connection_manager`` field of that name.
* ``idle_timeout`` (HTTP default 60 s: no request in progress; TCP default 3600 s: no byte
  either way): the connection is closed, and for TCP the app connection with it. Envoy:
  ``common_http_protocol_options.idle_timeout`` and ``tcp_proxy.idle_timeout``.
* ``max_connections`` (default: derived from the descriptor limit, see :mod:`.guard`): open
  downstream connections. Envoy: an ``envoy.filters.network.connection_limit`` filter before
  the listener's filter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import InvalidInput
from .freshness import DEFAULT_FRESHNESS, MODES, FreshnessConfig

DEFAULT_MAX_BODY = 16 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 15.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_HEADERS_TIMEOUT = 10.0
DEFAULT_HTTP_IDLE_TIMEOUT = 60.0
DEFAULT_TCP_IDLE_TIMEOUT = 3600.0
JWE_FILTER_NAMES = ("jwe", "envoy.filters.http.jwe")
JWE_CONFIG_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwe.v1.JweConfig"
HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"
CONNECTION_LIMIT = "envoy.filters.network.connection_limit"


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Cluster:
    """Upstream endpoints (used round-robin); ``tls`` is an Envoy UpstreamTlsContext or None."""

    name: str
    endpoints: tuple[Address, ...]
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    tls: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Route:
    """``require_jwe`` (native config only): refuse any request that is not a JWE envelope
    (415), so the app behind this route only ever receives opened envelopes."""

    prefix: str
    cluster: str
    require_jwe: bool = False


@dataclass(frozen=True)
class JweFilterConfig:
    """The JWE filter's key material (upstream ``JweConfig``) and the replay protection of
    RFC-profile envelopes (:mod:`.freshness`; our extension)."""

    cert_path: Path
    private_key_path: Path
    freshness: FreshnessConfig = DEFAULT_FRESHNESS


@dataclass(frozen=True)
class Listener:
    """An HTTP listener (``routes``, optional ``jwe``) or a TCP one (``tcp_cluster``).
    ``tls`` is an Envoy DownstreamTlsContext or None. Timeouts are seconds: None = the default
    for the listener's kind, 0 = off. ``max_connections`` None = derived from the descriptor
    limit when the gateway starts (:func:`.guard.default_max_connections`)."""

    name: str
    address: Address
    routes: tuple[Route, ...] = ()
    jwe: JweFilterConfig | None = None
    tcp_cluster: str | None = None
    tls: Mapping[str, Any] | None = None
    request_headers_timeout: float | None = None
    idle_timeout: float | None = None
    max_connections: int | None = None

    def __post_init__(self) -> None:
        tcp = self.tcp_cluster is not None
        if self.request_headers_timeout is None:
            object.__setattr__(
                self, "request_headers_timeout", 0.0 if tcp else DEFAULT_HEADERS_TIMEOUT
            )
        elif tcp and self.request_headers_timeout:
            raise InvalidInput(
                f"listener {self.name!r}: request_headers_timeout is for HTTP listeners"
            )
        if self.idle_timeout is None:
            default = DEFAULT_TCP_IDLE_TIMEOUT if tcp else DEFAULT_HTTP_IDLE_TIMEOUT
            object.__setattr__(self, "idle_timeout", default)
        if self.max_connections is not None and self.max_connections < 1:
            raise InvalidInput(f"listener {self.name!r}: max_connections must be at least 1")

    @property
    def kind(self) -> str:
        return "tcp" if self.tcp_cluster is not None else "http"

    def route_for(self, path: str) -> Route | None:
        """The first route whose prefix starts ``path`` (Envoy order)."""
        for route in self.routes:
            if path.startswith(route.prefix):
                return route
        return None


@dataclass(frozen=True)
class GatewayConfig:
    listeners: tuple[Listener, ...]
    clusters: Mapping[str, Cluster]
    max_body_bytes: int = DEFAULT_MAX_BODY
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    #: The envelope channel backend of the JWE filters and the transport channel backend of
    #: TLS listeners and clusters (registry names; native-form keys ``envelope_channel`` and
    #: ``transport_channel``, or the gateway's flags).
    envelope_channel: str = "jwe"
    transport_channel: str = "mtls"
    source: str = field(default="<memory>", compare=False)

    def __post_init__(self) -> None:
        if not self.listeners:
            raise InvalidInput(f"{self.source}: no listeners")
        names = [lst.name for lst in self.listeners]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidInput(f"{self.source}: duplicate listener name(s) {dupes}")
        for lst in self.listeners:
            wanted = [r.cluster for r in lst.routes]
            if any(r.require_jwe for r in lst.routes) and lst.jwe is None:
                raise InvalidInput(
                    f"{self.source}: listener {lst.name!r} has require_jwe routes but no jwe filter"
                )
            if lst.tcp_cluster is not None:
                wanted.append(lst.tcp_cluster)
            elif not lst.routes:
                raise InvalidInput(f"{self.source}: listener {lst.name!r} has no routes")
            for name in wanted:
                if name not in self.clusters:
                    raise InvalidInput(
                        f"{self.source}: listener {lst.name!r} routes to unknown cluster "
                        f"{name!r}; clusters: {sorted(self.clusters)}"
                    )
        if self.max_body_bytes <= 0:
            raise InvalidInput(f"{self.source}: max_body_bytes must be positive")
        if self.request_timeout <= 0:
            raise InvalidInput(f"{self.source}: request_timeout must be positive")


# ---- loading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rewrites:
    base: Path
    address_map: Mapping[str, str]
    path_map: Mapping[str, str]
    where: str

    def address(self, host: Any, port: Any, what: str) -> Address:
        if not isinstance(host, str) or not host:
            raise InvalidInput(f"{self.where}: {what}: address must be a non-empty string")
        port = _port(port, f"{self.where}: {what}")
        target = self.address_map.get(f"{host}:{port}") or self.address_map.get(host)
        if target is None:
            return Address(host, port)
        if ":" in target:
            new_host, _, new_port = target.rpartition(":")
            return Address(new_host, _port(new_port, f"address map entry for {host}:{port}"))
        return Address(target, port)

    def path(self, value: Any, what: str) -> Path:
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"{self.where}: {what} must be a file path")
        for old, new in self.path_map.items():
            if value == old or value.startswith(old.rstrip("/") + "/"):
                value = new + value[len(old) :]
                break
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path


def _port(value: Any, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what}: port must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not 0 <= port <= 65535:
        raise InvalidInput(f"{what}: port must be 0..65535, got {value!r}")
    return port


def _split_hostport(text: Any, what: str) -> tuple[str, int]:
    if not isinstance(text, str) or ":" not in text:
        raise InvalidInput(f"{what}: expected 'host:port', got {text!r}")
    host, _, port = text.rpartition(":")
    return host, _port(port, what)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{what} must be a mapping, got {type(value).__name__}")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{what} must be a backend name, got {value!r}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"{what} must be a list, got {type(value).__name__}")
    return value


def _duration(value: Any, what: str, *, zero_is_off: bool = False) -> float:
    """Seconds from a number or an Envoy duration string (``"0.25s"``); 0 only when
    ``zero_is_off`` (a timeout that can be turned off)."""
    if isinstance(value, str):
        match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|ms)", value.strip())
        if not match:
            raise InvalidInput(f"{what}: duration must look like '0.25s' or '250ms', got {value!r}")
        number = float(match.group(1))
        seconds = number / 1000 if match.group(2) == "ms" else number
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float
            seconds = math.inf
    else:
        raise InvalidInput(f"{what}: duration must be a number of seconds, got {value!r}")
    if not 0 <= seconds < math.inf or (seconds == 0 and not zero_is_off):  # NaN fails too
        raise InvalidInput(f"{what}: duration must be a positive finite number, got {value!r}")
    return seconds


def _limits(spec: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The connection-limit keyword arguments of :class:`Listener` present in ``spec``."""
    limits: dict[str, Any] = {}
    for key in ("request_headers_timeout", "idle_timeout"):
        if spec.get(key) is not None:
            limits[key] = _duration(spec[key], f"{what}: {key}", zero_is_off=True)
    if spec.get("max_connections") is not None:
        value = spec["max_connections"]
        if isinstance(value, str) and value.isdigit():  # Envoy's JSON form of a uint64
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput(f"{what}: max_connections must be a positive integer, got {value!r}")
        limits["max_connections"] = value
    return limits


def load_config(
    path: str | Path,
    *,
    address_map: Mapping[str, str] | None = None,
    path_map: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Read a native or Envoy (``static_resources``) YAML file; raise :class:`InvalidInput`
    naming the file and the offending element."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read gateway config {path}: {exc}") from exc
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: e.g. an int of 5000 digits
        raise InvalidInput(f"gateway config {path} is not YAML: {exc}") from exc
    except RecursionError:
        raise InvalidInput(f"gateway config {path} is nested too deeply") from None
    return parse_config(
        data,
        base=path.resolve().parent,
        address_map=address_map,
        path_map=path_map,
        source=str(path),
    )


def parse_config(
    data: Any,
    *,
    base: Path | None = None,
    address_map: Mapping[str, str] | None = None,
    path_map: Mapping[str, str] | None = None,
    source: str = "<memory>",
) -> GatewayConfig:
    """Parse an already-loaded mapping (native or Envoy form)."""
    data = _mapping(data, f"gateway config {source}")
    rw = _Rewrites(base or Path.cwd(), address_map or {}, path_map or {}, source)
    if "static_resources" in data:
        return _parse_envoy(data, rw)
    return _parse_native(data, rw)


# ---- native form -------------------------------------------------------------------------------

_NATIVE_TOP = {
    "listeners",
    "clusters",
    "max_body_bytes",
    "request_timeout",
    "envelope_channel",
    "transport_channel",
}
_NATIVE_LISTENER = {
    "name",
    "address",
    "routes",
    "jwe",
    "tcp_proxy",
    "tls",
    "request_headers_timeout",
    "idle_timeout",
    "max_connections",
}
_NATIVE_CLUSTER = {"endpoints", "connect_timeout", "tls"}


def _no_unknown(obj: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise InvalidInput(f"{what}: unknown key(s) {unknown}; known: {sorted(allowed)}")


def _parse_native(data: Mapping[str, Any], rw: _Rewrites) -> GatewayConfig:
    _no_unknown(data, _NATIVE_TOP, rw.where)
    clusters = {}
    for name, spec in _mapping(data.get("clusters") or {}, f"{rw.where}: clusters").items():
        what = f"{rw.where}: cluster {name!r}"
        spec = _mapping(spec, what)
        _no_unknown(spec, _NATIVE_CLUSTER, what)
        endpoints = tuple(
            rw.address(*_split_hostport(e, what), what)
            for e in _list(spec.get("endpoints"), f"{what}: endpoints")
        )
        if not endpoints:
            raise InvalidInput(f"{what}: no endpoints")
        timeout = spec.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        clusters[name] = Cluster(
            name,
            endpoints,
            _duration(timeout, f"{what}: connect_timeout"),
            _native_tls(spec.get("tls"), rw, False, f"{what}: tls"),
        )
    listeners = []
    for i, spec in enumerate(_list(data.get("listeners"), f"{rw.where}: listeners")):
        what = f"{rw.where}: listeners[{i}]"
        spec = _mapping(spec, what)
        _no_unknown(spec, _NATIVE_LISTENER, what)
        name = spec.get("name") or f"listener{i}"
        routes = tuple(
            _native_route(r, f"{what}: routes") for r in _list(spec.get("routes") or [], what)
        )
        jwe = None
        if spec.get("jwe") is not None:
            jwe = _jwe_config(_mapping(spec["jwe"], f"{what}: jwe"), rw, f"{what}: jwe")
        if spec.get("tcp_proxy") is not None and (routes or jwe):
            raise InvalidInput(f"{what}: a tcp_proxy listener has no routes or jwe filter")
        listeners.append(
            Listener(
                name=str(name),
                address=rw.address(*_split_hostport(spec.get("address"), what), what),
                routes=routes,
                jwe=jwe,
                tcp_cluster=spec.get("tcp_proxy"),
                tls=_native_tls(spec.get("tls"), rw, True, f"{what}: tls"),
                **_limits(spec, what),
            )
        )
    return GatewayConfig(
        tuple(listeners),
        clusters,
        max_body_bytes=_positive_int(data.get("max_body_bytes", DEFAULT_MAX_BODY), rw.where),
        request_timeout=_duration(
            data.get("request_timeout", DEFAULT_REQUEST_TIMEOUT), f"{rw.where}: request_timeout"
        ),
        envelope_channel=_name(
            data.get("envelope_channel", "jwe"), f"{rw.where}: envelope_channel"
        ),
        transport_channel=_name(
            data.get("transport_channel", "mtls"), f"{rw.where}: transport_channel"
        ),
        source=rw.where,
    )


NATIVE_TLS_VERSIONS = {"TLSv1.2": "TLSv1_2", "TLSv1.3": "TLSv1_3"}


def _native_tls(spec: Any, rw: _Rewrites, server_side: bool, what: str) -> Mapping[str, Any] | None:
    """``{cert_path, private_key_path, min_version?}`` → the Envoy TLS context of the upstream
    interact configs (the certificate file is also the trusted CA file; servers require a
    client certificate)."""
    if spec is None:
        return None
    spec = _mapping(spec, what)
    _no_unknown(spec, {"cert_path", "private_key_path", "min_version"}, what)
    cert = str(rw.path(spec.get("cert_path"), f"{what}: cert_path"))
    key = str(rw.path(spec.get("private_key_path"), f"{what}: private_key_path"))
    version = spec.get("min_version", "TLSv1.2")
    if version not in NATIVE_TLS_VERSIONS:
        raise InvalidInput(
            f"{what}: min_version must be one of {sorted(NATIVE_TLS_VERSIONS)}, got {version!r}"
        )
    kind = "Downstream" if server_side else "Upstream"
    context: dict[str, Any] = {
        "@type": f"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}TlsContext",
        "common_tls_context": {
            "tls_certificates": [
                {"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}
            ],
            "validation_context": {"trusted_ca": {"filename": cert}},
            "tls_params": {"tls_minimum_protocol_version": NATIVE_TLS_VERSIONS[version]},
        },
    }
    if server_side:
        context["require_client_certificate"] = True
    return context


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInput(f"{where}: max_body_bytes must be a positive integer, got {value!r}")
    return value


def _native_route(spec: Any, what: str) -> Route:
    spec = _mapping(spec, what)
    _no_unknown(spec, {"prefix", "cluster", "require_jwe"}, what)
    prefix, cluster = spec.get("prefix"), spec.get("cluster")
    require_jwe = spec.get("require_jwe", False)
    if not isinstance(require_jwe, bool):
        raise InvalidInput(f"{what}: require_jwe must be true or false, got {require_jwe!r}")
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise InvalidInput(f"{what}: prefix must start with '/', got {prefix!r}")
    if not isinstance(cluster, str):
        raise InvalidInput(f"{what}: cluster must be a name, got {cluster!r}")
    return Route(prefix, cluster, require_jwe)


def _jwe_config(spec: Mapping[str, Any], rw: _Rewrites, what: str) -> JweFilterConfig:
    _no_unknown(spec, {"cert_path", "private_key_path", "freshness", "@type"}, what)
    return JweFilterConfig(
        cert_path=rw.path(spec.get("cert_path"), f"{what}: cert_path"),
        private_key_path=rw.path(spec.get("private_key_path"), f"{what}: private_key_path"),
        freshness=_freshness(spec.get("freshness"), f"{what}: freshness"),
    )


def _freshness(spec: Any, what: str) -> FreshnessConfig:
    """``freshness: MODE`` or ``freshness: {mode, window, cache_size}`` (all optional)."""
    if spec is None:
        return FreshnessConfig()
    if isinstance(spec, str):
        spec = {"mode": spec}
    spec = _mapping(spec, what)
    _no_unknown(spec, {"mode", "window", "cache_size"}, what)
    default = FreshnessConfig()
    mode = spec.get("mode", default.mode)
    if mode not in MODES:
        raise InvalidInput(f"{what}: mode must be one of {list(MODES)}, got {mode!r}")
    size = spec.get("cache_size", default.cache_size)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidInput(f"{what}: cache_size must be a positive integer, got {size!r}")
    window = _duration(spec.get("window", default.window), f"{what}: window")
    return FreshnessConfig(mode, window, size)


# ---- Envoy static config subset ---------------------------------------------------------------


def _socket_address(obj: Any, rw: _Rewrites, what: str) -> Address:
    sock = _mapping(_mapping(obj, what).get("socket_address"), f"{what}: socket_address")
    protocol = sock.get("protocol", "TCP")
    if protocol != "TCP":
        raise InvalidInput(f"{what}: only TCP socket addresses are supported, got {protocol!r}")
    return rw.address(sock.get("address"), sock.get("port_value"), what)


def _parse_envoy(data: Mapping[str, Any], rw: _Rewrites) -> GatewayConfig:
    static = _mapping(data["static_resources"], f"{rw.where}: static_resources")
    clusters = {}
    for i, spec in enumerate(_list(static.get("clusters") or [], f"{rw.where}: clusters")):
        what = f"{rw.where}: clusters[{i}]"
        spec = _mapping(spec, what)
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{what}: cluster without a name")
        endpoints = []
        assignment = _mapping(spec.get("load_assignment"), f"{what}: load_assignment")
        for group in _list(assignment.get("endpoints"), f"{what}: endpoints"):
            for lb in _list(_mapping(group, what).get("lb_endpoints"), f"{what}: lb_endpoints"):
                endpoint = _mapping(_mapping(lb, what).get("endpoint"), f"{what}: endpoint")
                endpoints.append(_socket_address(endpoint.get("address"), rw, f"{what} ({name})"))
        if not endpoints:
            raise InvalidInput(f"{what}: cluster {name!r} has no endpoints")
        timeout = spec.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        clusters[name] = Cluster(
            name,
            tuple(endpoints),
            _duration(timeout, f"{what}: connect_timeout"),
            _tls_context(spec.get("transport_socket"), rw, f"{what}: transport_socket"),
        )
    listeners = []
    for i, spec in enumerate(_list(static.get("listeners"), f"{rw.where}: listeners")):
        listeners.append(_envoy_listener(_mapping(spec, f"listeners[{i}]"), i, rw))
    return GatewayConfig(tuple(listeners), clusters, source=rw.where)


def _tls_context(socket: Any, rw: _Rewrites, what: str) -> Mapping[str, Any] | None:
    """The TLS context dict of a transport socket, with every ``filename`` rewritten (and made
    absolute) like the other paths of the config."""
    if socket is None:
        return None
    socket = _mapping(socket, what)
    if socket.get("name") != "envoy.transport_sockets.tls":
        raise InvalidInput(f"{what}: unsupported transport socket {socket.get('name')!r}")
    tls: Mapping[str, Any] = _rewrite_filenames(
        _mapping(socket.get("typed_config") or {}, f"{what}: typed_config"), rw, what
    )
    return tls


MAX_TLS_CONTEXT_NODES = 10_000


def _rewrite_filenames(obj: Any, rw: _Rewrites, what: str, budget: list[int] | None = None) -> Any:
    """A copy of ``obj`` with every ``filename`` rewritten; at most
    :data:`MAX_TLS_CONTEXT_NODES` values are copied (YAML aliases can make a small file
    describe an exponentially large tree)."""
    budget = [MAX_TLS_CONTEXT_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise InvalidInput(f"{what}: TLS context has more than {MAX_TLS_CONTEXT_NODES} values")
    if isinstance(obj, Mapping):
        return {
            k: str(rw.path(v, f"{what}: filename"))
            if k == "filename"
            else _rewrite_filenames(v, rw, what, budget)
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_rewrite_filenames(v, rw, what, budget) for v in obj]
    return obj


def _envoy_listener(spec: Mapping[str, Any], i: int, rw: _Rewrites) -> Listener:
    name = str(spec.get("name") or f"listener{i}")
    what = f"{rw.where}: listener {name!r}"
    address = _socket_address(spec.get("address"), rw, what)
    chains = _list(spec.get("filter_chains"), f"{what}: filter_chains")
    if len(chains) != 1:
        raise InvalidInput(f"{what}: exactly one filter chain is supported, got {len(chains)}")
    chain = _mapping(chains[0], f"{what}: filter_chains[0]")
    tls = _tls_context(chain.get("transport_socket"), rw, f"{what}: transport_socket")
    filters = _list(chain.get("filters"), f"{what}: filters")
    limits: dict[str, Any] = {}
    if filters and _mapping(filters[0], f"{what}: filters[0]").get("name") == CONNECTION_LIMIT:
        limit = _mapping(filters[0].get("typed_config") or {}, f"{what}: connection_limit")
        if limit.get("max_connections") is None:
            raise InvalidInput(f"{what}: connection_limit needs max_connections")
        limits = _limits({"max_connections": limit["max_connections"]}, what)
        filters = filters[1:]
    if len(filters) != 1:
        raise InvalidInput(
            f"{what}: exactly one network filter (after an optional {CONNECTION_LIMIT}) is "
            f"supported, got {len(filters)}"
        )
    network = _mapping(filters[0], f"{what}: filters[0]")
    config = _mapping(network.get("typed_config") or {}, f"{what}: typed_config")
    if network.get("name") == TCP_PROXY:
        cluster = config.get("cluster")
        if not isinstance(cluster, str):
            raise InvalidInput(f"{what}: tcp_proxy needs a cluster name")
        limits |= _limits({"idle_timeout": config.get("idle_timeout")}, what)
        return Listener(name, address, tcp_cluster=cluster, tls=tls, **limits)
    if network.get("name") != HCM:
        raise InvalidInput(
            f"{what}: unsupported network filter {network.get('name')!r}; "
            f"supported: {HCM}, {TCP_PROXY}"
        )
    routes = []
    route_config = _mapping(config.get("route_config"), f"{what}: route_config")
    for host in _list(route_config.get("virtual_hosts"), f"{what}: virtual_hosts"):
        host = _mapping(host, f"{what}: virtual host")
        domains = host.get("domains", ["*"])
        if domains != ["*"]:
            raise InvalidInput(f"{what}: only domains ['*'] are supported, got {domains!r}")
        for route in _list(host.get("routes"), f"{what}: routes"):
            route = _mapping(route, f"{what}: route")
            match = _mapping(route.get("match"), f"{what}: route match")
            if set(match) != {"prefix"}:
                raise InvalidInput(f"{what}: only prefix route matches are supported: {match!r}")
            target = _mapping(route.get("route"), f"{what}: route action")
            routes.append(_native_route({"prefix": match["prefix"], **target}, f"{what}: route"))
    jwe = None
    for http_filter in _list(config.get("http_filters") or [], f"{what}: http_filters"):
        http_filter = _mapping(http_filter, f"{what}: http filter")
        filter_name = http_filter.get("name")
        typed = _mapping(http_filter.get("typed_config") or {}, f"{what}: http filter config")
        if filter_name in JWE_FILTER_NAMES or typed.get("@type") == JWE_CONFIG_TYPE:
            jwe = _jwe_config(typed, rw, f"{what}: jwe filter")
        elif filter_name != ROUTER:
            raise InvalidInput(f"{what}: unsupported HTTP filter {filter_name!r}")
    protocol = _mapping(
        config.get("common_http_protocol_options") or {}, f"{what}: common_http_protocol_options"
    )
    limits |= _limits(
        {
            "request_headers_timeout": config.get("request_headers_timeout"),
            "idle_timeout": protocol.get("idle_timeout"),
        },
        what,
    )
    return Listener(name, address, routes=tuple(routes), jwe=jwe, tls=tls, **limits)
