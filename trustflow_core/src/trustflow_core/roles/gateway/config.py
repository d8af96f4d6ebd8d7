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
        # jwe: {..., ecdh_cert_path: app-ecdh.crt, ecdh_private_key_path: app-ecdh.key}
        #      # P-256 key for ECDH-ES+A128KW envelopes (docs/online.md#ecdh-profile)
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

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ...errors import InvalidInput
from ...settings_schema import Node, describe, load_yaml_file
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


class Address(NamedTuple):
    """A tuple, not a dataclass: hashed and compared in C (a pool is looked up by its
    address for every relayed request)."""

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
    """The JWE filter's key material (upstream ``JweConfig``), the replay protection of
    RFC-profile envelopes (:mod:`.freshness`; our extension) and, optionally, the app's P-256
    key agreement certificate and key for ``ECDH-ES+A128KW`` envelopes (our extension; both or
    neither)."""

    cert_path: Path
    private_key_path: Path
    freshness: FreshnessConfig = DEFAULT_FRESHNESS
    ecdh_cert_path: Path | None = None
    ecdh_private_key_path: Path | None = None

    def __post_init__(self) -> None:
        if (self.ecdh_cert_path is None) != (self.ecdh_private_key_path is None):
            raise InvalidInput("jwe: ecdh_cert_path and ecdh_private_key_path go together")


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
            raise InvalidInput("no listeners")
        names = [lst.name for lst in self.listeners]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidInput(f"duplicate listener name(s) {dupes}")
        for lst in self.listeners:
            wanted = [r.cluster for r in lst.routes]
            if any(r.require_jwe for r in lst.routes) and lst.jwe is None:
                raise InvalidInput(
                    f"listener {lst.name!r} has require_jwe routes but no jwe filter"
                )
            if lst.tcp_cluster is not None:
                wanted.append(lst.tcp_cluster)
            elif not lst.routes:
                raise InvalidInput(f"listener {lst.name!r} has no routes")
            for name in wanted:
                if name not in self.clusters:
                    raise InvalidInput(
                        f"listener {lst.name!r} routes to unknown cluster "
                        f"{name!r}; clusters: {sorted(self.clusters)}"
                    )
        if self.max_body_bytes <= 0:
            raise InvalidInput("max_body_bytes must be positive")
        if self.request_timeout <= 0:
            raise InvalidInput("request_timeout must be positive")


# ---- loading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rewrites:
    address_map: Mapping[str, str]
    path_map: Mapping[str, str]

    def address(self, host: str, port: int) -> Address:
        target = self.address_map.get(f"{host}:{port}") or self.address_map.get(host)
        if target is None:
            return Address(host, port)
        if ":" in target:
            new_host, new_port = Node(target, "--map-address", host).host_port()
            return Address(new_host, new_port)
        return Address(target, port)

    def host_port(self, node: Node) -> Address:
        return self.address(*node.host_port())

    def path(self, node: Node) -> Path:
        value = node.string()
        for old, new in self.path_map.items():
            if value == old or value.startswith(old.rstrip("/") + "/"):
                value = new + value[len(old) :]
                break
        return Node(value, node.source, node.key, base=node.base).path()


def load_config(
    path: str | Path,
    *,
    address_map: Mapping[str, str] | None = None,
    path_map: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Read a native or Envoy (``static_resources``) YAML file; a bad value raises
    :class:`~trustflow_core.settings_schema.ConfigError` naming the file and its key path."""
    return _parse(load_yaml_file(path), address_map, path_map)


def parse_config(
    data: Any,
    *,
    base: Path | None = None,
    address_map: Mapping[str, str] | None = None,
    path_map: Mapping[str, str] | None = None,
    source: str = "<memory>",
) -> GatewayConfig:
    """Parse an already-loaded mapping (native or Envoy form)."""
    root = Node(data, source, base=base or Path.cwd())
    if not isinstance(data, Mapping):
        raise root.error(f"expected a mapping at the top, got {describe(data)}")
    return _parse(root, address_map, path_map)


def _parse(
    root: Node, address_map: Mapping[str, str] | None, path_map: Mapping[str, str] | None
) -> GatewayConfig:
    rw = _Rewrites(address_map or {}, path_map or {})
    if "static_resources" in root.value:
        return _parse_envoy(root, rw)
    return _parse_native(root, rw)


def _config(root: Node, listeners: list[Listener], clusters: dict[str, Cluster]) -> GatewayConfig:
    """The :class:`GatewayConfig`, its cross-checks (cluster names, ...) reported at the file."""
    return root.build(
        lambda data: GatewayConfig(
            tuple(listeners),
            clusters,
            max_body_bytes=root.get("max_body_bytes").integer(DEFAULT_MAX_BODY, minimum=1),
            request_timeout=root.get("request_timeout").duration(DEFAULT_REQUEST_TIMEOUT),
            envelope_channel=root.get("envelope_channel").name("jwe"),
            transport_channel=root.get("transport_channel").name("mtls"),
            source=root.source,
        )
    )


def _limits(listener: Node, **nodes: Node) -> dict[str, Any]:
    """The connection-limit keyword arguments of :class:`Listener` given in ``nodes``."""
    limits: dict[str, Any] = {}
    for key in ("request_headers_timeout", "idle_timeout"):
        if key in nodes and nodes[key].present:
            limits[key] = nodes[key].duration(zero_is_off=True)
    if "max_connections" in nodes and nodes["max_connections"].present:
        limits["max_connections"] = nodes["max_connections"].integer(minimum=1, digits_ok=True)
    return limits


def _listener(node: Node, **kwargs: Any) -> Listener:
    return node.build(lambda _: Listener(**kwargs))


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


def _parse_native(root: Node, rw: _Rewrites) -> GatewayConfig:
    root.mapping(_NATIVE_TOP)
    clusters = {}
    for name, spec in root.get("clusters").items():
        spec.mapping(_NATIVE_CLUSTER)
        endpoints = tuple(rw.host_port(e) for e in spec.get("endpoints").elements())
        if not endpoints:
            raise spec.get("endpoints").error("no endpoints")
        clusters[name] = Cluster(
            name,
            endpoints,
            spec.get("connect_timeout").duration(DEFAULT_CONNECT_TIMEOUT),
            _native_tls(spec.get("tls"), rw, server_side=False),
        )
    listeners = []
    for i, spec in enumerate(root.get("listeners").elements()):
        spec.mapping(_NATIVE_LISTENER)
        routes = tuple(_native_route(r) for r in spec.get("routes").elements(default=[]))
        jwe = _jwe_config(spec.get("jwe"), rw) if spec.get("jwe").present else None
        tcp = spec.get("tcp_proxy").string(None)
        if tcp is not None and (routes or jwe):
            raise spec.error("a tcp_proxy listener has no routes or jwe filter")
        listeners.append(
            _listener(
                spec,
                name=spec.get("name").text(f"listener{i}"),
                address=rw.host_port(spec.get("address")),
                routes=routes,
                jwe=jwe,
                tcp_cluster=tcp,
                tls=_native_tls(spec.get("tls"), rw, server_side=True),
                **_limits(
                    spec,
                    request_headers_timeout=spec.get("request_headers_timeout"),
                    idle_timeout=spec.get("idle_timeout"),
                    max_connections=spec.get("max_connections"),
                ),
            )
        )
    return _config(root, listeners, clusters)


NATIVE_TLS_VERSIONS = {"TLSv1.2": "TLSv1_2", "TLSv1.3": "TLSv1_3"}


def _native_tls(spec: Node, rw: _Rewrites, *, server_side: bool) -> Mapping[str, Any] | None:
    """``{cert_path, private_key_path, min_version?}`` → the Envoy TLS context of the upstream
    interact configs (the certificate file is also the trusted CA file; servers require a
    client certificate)."""
    if not spec.present:
        return None
    spec.mapping({"cert_path", "private_key_path", "min_version"})
    cert = str(rw.path(spec.get("cert_path")))
    key = str(rw.path(spec.get("private_key_path")))
    version = spec.get("min_version").choice(sorted(NATIVE_TLS_VERSIONS), "TLSv1.2")
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


def _native_route(spec: Node) -> Route:
    spec.mapping({"prefix", "cluster", "require_jwe"})
    prefix = spec.get("prefix").string()
    if not prefix.startswith("/"):
        raise spec.get("prefix").expected("a path prefix starting with '/'")
    return Route(prefix, spec.get("cluster").string(), spec.get("require_jwe").boolean(False))


def _jwe_config(spec: Node, rw: _Rewrites) -> JweFilterConfig:
    ecdh = ("ecdh_cert_path", "ecdh_private_key_path")
    spec.mapping({"cert_path", "private_key_path", "freshness", "@type", *ecdh})
    if spec.get(ecdh[0]).present != spec.get(ecdh[1]).present:
        raise spec.error(f"{ecdh[0]} and {ecdh[1]} go together")
    ecdh_paths = [rw.path(spec.get(k)) if spec.get(k).present else None for k in ecdh]
    return JweFilterConfig(
        cert_path=rw.path(spec.get("cert_path")),
        private_key_path=rw.path(spec.get("private_key_path")),
        freshness=_freshness(spec.get("freshness")),
        ecdh_cert_path=ecdh_paths[0],
        ecdh_private_key_path=ecdh_paths[1],
    )


def _freshness(spec: Node) -> FreshnessConfig:
    """``freshness: MODE`` or ``freshness: {mode, window, cache_size}`` (all optional)."""
    default = FreshnessConfig()
    if not spec.present:
        return default
    if isinstance(spec.value, str):
        return FreshnessConfig(spec.choice(MODES), default.window, default.cache_size)
    spec.mapping({"mode", "window", "cache_size"})
    return FreshnessConfig(
        spec.get("mode").choice(MODES, default.mode),
        spec.get("window").duration(default.window),
        spec.get("cache_size").integer(default.cache_size, minimum=1),
    )


# ---- Envoy static config subset ---------------------------------------------------------------


def _socket_address(obj: Node, rw: _Rewrites) -> Address:
    sock = obj.mapping().get("socket_address").mapping(required=("address", "port_value"))
    if sock.get("protocol").string("TCP") != "TCP":
        raise sock.get("protocol").error("only TCP socket addresses are supported")
    return rw.address(sock.get("address").string(), sock.get("port_value").port())


def _parse_envoy(root: Node, rw: _Rewrites) -> GatewayConfig:
    static = root.get("static_resources").mapping()
    clusters = {}
    for spec in static.get("clusters").elements(default=[]):
        spec.mapping()
        name = spec.get("name").string()
        endpoints = []
        assignment = spec.get("load_assignment").mapping(required=("endpoints",))
        for group in assignment.get("endpoints").elements():
            for lb in group.mapping().get("lb_endpoints").elements():
                endpoint = lb.mapping().get("endpoint").mapping(required=("address",))
                endpoints.append(_socket_address(endpoint.get("address"), rw))
        if not endpoints:
            raise assignment.error(f"cluster {name!r} has no endpoints")
        clusters[name] = Cluster(
            name,
            tuple(endpoints),
            spec.get("connect_timeout").duration(DEFAULT_CONNECT_TIMEOUT),
            _tls_context(spec.get("transport_socket"), rw),
        )
    listeners = [
        _envoy_listener(spec.mapping(), i, rw)
        for i, spec in enumerate(static.get("listeners").elements())
    ]
    return _config(root, listeners, clusters)


def _tls_context(socket: Node, rw: _Rewrites) -> Mapping[str, Any] | None:
    """The TLS context dict of a transport socket, with every ``filename`` rewritten (and made
    absolute) like the other paths of the config."""
    if not socket.present:
        return None
    socket.mapping()
    if socket.get("name").value != "envoy.transport_sockets.tls":
        raise socket.get("name").expected("envoy.transport_sockets.tls")
    tls: Mapping[str, Any] = _rewrite_filenames(socket.get("typed_config").mapping(), rw)
    return tls


MAX_TLS_CONTEXT_NODES = 10_000


def _rewrite_filenames(node: Node, rw: _Rewrites, budget: list[int] | None = None) -> Any:
    """A copy of ``node``'s value with every ``filename`` rewritten; at most
    :data:`MAX_TLS_CONTEXT_NODES` values are copied (YAML aliases can make a small file
    describe an exponentially large tree)."""
    budget = [MAX_TLS_CONTEXT_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise node.error(f"TLS context has more than {MAX_TLS_CONTEXT_NODES} values")
    if isinstance(node.value, Mapping):
        return {
            k: str(rw.path(child)) if k == "filename" else _rewrite_filenames(child, rw, budget)
            for k, child in node.items()
        }
    if isinstance(node.value, list):
        return [_rewrite_filenames(child, rw, budget) for child in node.elements()]
    return node.value


def _envoy_listener(spec: Node, i: int, rw: _Rewrites) -> Listener:
    name = spec.get("name").text(f"listener{i}")
    address = _socket_address(spec.get("address"), rw)
    chains = spec.get("filter_chains").elements()
    if len(chains) != 1:
        raise spec.get("filter_chains").error(
            f"exactly one filter chain is supported, got {len(chains)}"
        )
    chain = chains[0].mapping()
    tls = _tls_context(chain.get("transport_socket"), rw)
    filters = chain.get("filters").elements()
    limits: dict[str, Any] = {}
    if filters and filters[0].mapping().get("name").value == CONNECTION_LIMIT:
        limit = filters[0].get("typed_config").mapping(required=("max_connections",))
        limits = _limits(spec, max_connections=limit.get("max_connections"))
        filters = filters[1:]
    if len(filters) != 1:
        raise chain.get("filters").error(
            f"exactly one network filter (after an optional {CONNECTION_LIMIT}) is "
            f"supported, got {len(filters)}"
        )
    network = filters[0].mapping()
    config = network.get("typed_config").mapping()
    if network.get("name").value == TCP_PROXY:
        limits |= _limits(spec, idle_timeout=config.get("idle_timeout"))
        return _listener(
            spec,
            name=name,
            address=address,
            tcp_cluster=config.get("cluster").string(),
            tls=tls,
            **limits,
        )
    if network.get("name").value != HCM:
        raise network.get("name").expected(f"{HCM} or {TCP_PROXY}")
    routes = []
    route_config = config.get("route_config").mapping(required=("virtual_hosts",))
    for host in route_config.get("virtual_hosts").elements():
        host.mapping()
        domains = host.get("domains")
        if domains.present and domains.value != ["*"]:
            raise domains.error(f"only domains ['*'] are supported, got {describe(domains.value)}")
        for route in host.get("routes").elements():
            route.mapping()
            match = route.get("match").mapping({"prefix"}, required=("prefix",))
            target = route.get("route").mapping({"cluster", "require_jwe"}, required=("cluster",))
            prefix = match.get("prefix").string()
            if not prefix.startswith("/"):
                raise match.get("prefix").expected("a path prefix starting with '/'")
            routes.append(
                Route(
                    prefix, target.get("cluster").string(), target.get("require_jwe").boolean(False)
                )
            )
    jwe = None
    for http_filter in config.get("http_filters").elements(default=[]):
        http_filter.mapping()
        filter_name = http_filter.get("name").value
        typed = http_filter.get("typed_config").mapping()
        if filter_name in JWE_FILTER_NAMES or typed.get("@type").value == JWE_CONFIG_TYPE:
            jwe = _jwe_config(typed, rw)
        elif filter_name != ROUTER:
            raise http_filter.get("name").expected(f"the jwe filter or {ROUTER}")
    protocol = config.get("common_http_protocol_options").mapping()
    limits |= _limits(
        spec,
        request_headers_timeout=config.get("request_headers_timeout"),
        idle_timeout=protocol.get("idle_timeout"),
    )
    return _listener(
        spec, name=name, address=address, routes=tuple(routes), jwe=jwe, tls=tls, **limits
    )
