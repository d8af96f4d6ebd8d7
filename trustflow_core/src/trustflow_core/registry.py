"""The typed facade over the plugin hooks: which backends are installed, choosing one,
and reporting plugins. Roles and commands use these functions, never ``pm.hook`` directly.

A lookup names its kind by a typed constant (:data:`ATTESTER`, :data:`VERIFIER`,
:data:`KEY_EXCHANGE`, :data:`STORAGE`, :data:`ENVELOPE_CHANNEL`, :data:`TRANSPORT_CHANNEL`) and
returns that kind's contract: ``backend_class(pm, STORAGE, "local")`` is a ``type[Storage]``,
and a kind that does not exist is an undefined name, caught by the type checker and the linter,
not a string that fails at run time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

import pluggy

from .attestation import Attester, Attributes, Verifier
from .backend import Backend
from .channel import EnvelopeChannel, TransportChannel
from .errors import BackendNotFound, BackendUnavailable, PluginError
from .keyexchange import KeyExchange
from .manager import TrustflowPluginManager
from .storage import Storage

B = TypeVar("B", bound=Backend)


@dataclass(frozen=True)
class Hook:
    """A registration hook: the base class(es) its classes must have."""

    name: str
    hook: str
    bases: tuple[type[Backend], ...]


HOOKS: dict[str, Hook] = {
    h.name: h
    for h in (
        Hook("attester", "trustflow_register_attesters", (Attester,)),
        Hook("verifier", "trustflow_register_verifiers", (Verifier,)),
        Hook("key_exchange", "trustflow_register_key_exchanges", (KeyExchange,)),
        Hook("storage", "trustflow_register_storages", (Storage,)),
        Hook("channel", "trustflow_register_channels", (EnvelopeChannel, TransportChannel)),
    )
}


@dataclass(frozen=True)
class Kind(Generic[B]):
    """A kind of backend a role uses: its contract class, the hook registering it, its
    environment override and the words errors use for it."""

    label: str
    hook: str
    contract: type[B]
    env: str


def _kind(label: str, hook: str, contract: Any, env: str) -> Any:
    # mypy rejects an abstract class where type[B] is expected (python/mypy#4717), so the
    # contract goes in untyped and each constant below is annotated with its Kind[contract].
    return Kind(label, hook, contract, env)


ATTESTER: Kind[Attester] = _kind("attester", "attester", Attester, "TRUSTFLOW_TEE")
VERIFIER: Kind[Verifier] = _kind("verifier", "verifier", Verifier, "TRUSTFLOW_VERIFIER")
KEY_EXCHANGE: Kind[KeyExchange] = _kind(
    "key exchange", "key_exchange", KeyExchange, "TRUSTFLOW_KEY_EXCHANGE"
)
STORAGE: Kind[Storage] = _kind("storage", "storage", Storage, "TRUSTFLOW_STORAGE")
ENVELOPE_CHANNEL: Kind[EnvelopeChannel] = _kind(
    "envelope channel", "channel", EnvelopeChannel, "TRUSTFLOW_CHANNEL"
)
TRANSPORT_CHANNEL: Kind[TransportChannel] = _kind(
    "transport channel", "channel", TransportChannel, "TRUSTFLOW_CHANNEL"
)
KINDS: tuple[Kind[Any], ...] = (
    ATTESTER,
    VERIFIER,
    KEY_EXCHANGE,
    STORAGE,
    ENVELOPE_CHANNEL,
    TRANSPORT_CHANNEL,
)

#: Which distribution provides the well-known storage and channel names, for install hints.
#: TEE backends (attesters, verifiers) follow the naming convention ``trustflow-tee-<name>``.
KNOWN_PROVIDERS: dict[str, str] = {
    "local": "trustflow-storage-local",
    "oss": "trustflow-storage-oss",
    "s3": "trustflow-storage-oss",
    "jwe": "trustflow-channel-jwe",
    "mtls": "trustflow-channel-mtls",
}


@dataclass(frozen=True)
class Registration:
    """One backend class and the plugin that registered it."""

    cls: type[Backend]
    plugin: str


def registrations(pm: pluggy.PluginManager, kind: str) -> dict[str, Registration]:
    """Every backend of ``kind`` by name. Raises :class:`PluginError` for a class of the wrong
    type, a missing ``name`` or a name registered twice (naming both modules)."""
    spec = HOOKS[kind]
    found: dict[str, Registration] = {}
    caller = getattr(pm.hook, spec.hook)
    for impl in reversed(caller.get_hookimpls()):  # registration order

        def register(cls: Any, _plugin: str = impl.plugin_name) -> None:
            _check_class(spec, cls, _plugin)
            previous = found.get(cls.name)
            if previous is not None:
                raise PluginError(
                    f"{kind} backend name {cls.name!r} is registered twice: by "
                    f"{previous.cls.__module__}.{previous.cls.__qualname__} (plugin "
                    f"{previous.plugin!r}) and {cls.__module__}.{cls.__qualname__} "
                    f"(plugin {_plugin!r})"
                )
            found[cls.name] = Registration(cls, _plugin)

        impl.function(*[register for _ in impl.argnames])
    if kind == "verifier":
        _check_unique_platforms(found)
        for reg in found.values():
            _check_verifier_knowledge(reg.cls, reg.plugin)  # type: ignore[arg-type]
    if kind in ("attester", "verifier"):
        _check_development_default(kind, found)
    return found


def _check_class(spec: Hook, cls: Any, plugin: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, spec.bases)):
        wanted = " or ".join(b.__name__ for b in spec.bases)
        raise PluginError(f"plugin {plugin!r} registered {cls!r} as a {spec.name}; need a {wanted}")
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        raise PluginError(f"plugin {plugin!r} registered {cls.__qualname__} without a name")


def _check_unique_platforms(found: Mapping[str, Registration]) -> None:
    seen: dict[str, str] = {}
    for name, reg in found.items():
        platform = reg.cls.platform  # type: ignore[attr-defined]
        if platform in seen:
            raise PluginError(
                f"verifiers {seen[platform]!r} and {name!r} both claim platform {platform!r}"
            )
        seen[platform] = name


def _check_verifier_knowledge(cls: type[Verifier], plugin: str) -> None:
    """The policy identity a verifier declares must name real attributes."""
    known = {f.name for f in fields(Attributes)}
    declared = {**cls.identity_fields, **(cls.constraint_fields or {})}
    bad = sorted(attr for attr in declared.values() if attr not in known)
    if bad:
        raise PluginError(
            f"verifier {cls.name!r} (plugin {plugin!r}) maps policy fields to unknown "
            f"attribute(s) {bad}"
        )
    if cls.identity_fields and not cls.tee_name:
        raise PluginError(f"verifier {cls.name!r} (plugin {plugin!r}) has no tee_name")


def _check_development_default(kind: str, found: Mapping[str, Registration]) -> None:
    marked = sorted(n for n, r in found.items() if getattr(r.cls, "development_default", False))
    if len(marked) > 1:
        raise PluginError(f"{kind} backends {marked} all claim to be the development default")
    for name in marked:
        if not found[name].cls.simulated:
            raise PluginError(
                f"{kind} backend {name!r} claims to be the development default but is not simulated"
            )


def backends_of(pm: pluggy.PluginManager, kind: Kind[B]) -> dict[str, type[B]]:
    """The installed backend classes of ``kind``, by name. Raises :class:`PluginError` for a
    badly registered class (see :func:`registrations`)."""
    return {
        name: reg.cls
        for name, reg in registrations(pm, kind.hook).items()
        if issubclass(reg.cls, kind.contract)
    }


def development_default(pm: pluggy.PluginManager, kind: Kind[B]) -> type[B] | None:
    """The installed backend of ``kind`` (attesters and verifiers declare one) that roles use
    when configuration names none (the one whose class sets ``development_default``), or
    None."""
    for cls in backends_of(pm, kind).values():
        if getattr(cls, "development_default", False):
            return cls
    return None


def attester_class(pm: pluggy.PluginManager, name: str | None) -> type[Attester] | None:
    """The attester a role was configured with: ``name``, or with None the development
    default (None when no installed attester is one)."""
    if name is None:
        return development_default(pm, ATTESTER)
    return backend_class(pm, ATTESTER, name)


def verifier_class(pm: pluggy.PluginManager, name: str | None) -> type[Verifier] | None:
    """Like :func:`attester_class`, for verifiers."""
    if name is None:
        return development_default(pm, VERIFIER)
    return backend_class(pm, VERIFIER, name)


def _not_found(
    pm: pluggy.PluginManager, kind: Kind[Any], name: str, installed: Mapping[str, Any]
) -> BackendNotFound:
    elsewhere = [k.label for k in KINDS if k is not kind and name in backends_of(pm, k)]
    if elsewhere:
        what = f" ({name!r} is {' and '.join(map(_a, elsewhere))}, not {_a(kind.label)})"
        install = ""
    else:
        what = ""
        hint = KNOWN_PROVIDERS.get(name)
        if kind in (ATTESTER, VERIFIER):
            hint = f"trustflow-tee-{name}"
        install = f" Is {hint} installed?" if hint else ""
    return BackendNotFound(
        f"no {kind.label} backend {name!r}{what}; installed {kind.label} backends: "
        f"{sorted(installed)}.{install} See 'trustflow plugins'"
    )


def _a(label: str) -> str:
    return f"an {label}" if label[0] in "aeiou" else f"a {label}"


def backend_class(pm: pluggy.PluginManager, kind: Kind[B], name: str | None = None) -> type[B]:
    """Choose a backend class of ``kind`` (:data:`ATTESTER`, :data:`STORAGE`, ...).

    Order: the explicit ``name``; else the kind's environment variable (e.g. ``TRUSTFLOW_TEE``);
    else the viable, non-simulated backend with the highest ``priority``. Simulated backends are
    only ever used when named. An unknown name, or the name of a backend of another kind (the
    ``mtls`` transport channel asked for as an envelope channel, a channel asked for as a
    storage), raises :class:`BackendNotFound` naming the kind and the installed names; a named
    backend that is not viable raises :class:`BackendUnavailable`.
    """
    installed = backends_of(pm, kind)
    name = name or os.environ.get(kind.env) or None
    if name is not None:
        cls = installed.get(name)
        if cls is None:
            raise _not_found(pm, kind, name, installed)
        reason = cls.unviable_reason()
        if reason is not None:
            raise BackendUnavailable(f"{kind.label} backend {name!r} cannot run here: {reason}")
        return cls
    candidates = [c for c in installed.values() if not c.simulated and c.viable()]
    if not candidates:
        raise BackendUnavailable(
            f"no usable {kind.label} backend on this host "
            f"(installed: {sorted(installed)}; simulated backends must be named explicitly)"
        )
    return max(candidates, key=lambda c: c.priority)


def verifier_for_platform(pm: pluggy.PluginManager, platform: str) -> type[Verifier]:
    """The verifier class for a report's exact ``str_tee_platform``."""
    verifiers = backends_of(pm, VERIFIER).values()
    for cls in verifiers:
        if cls.platform == platform:
            return cls
    raise BackendNotFound(
        f"no verifier for TEE platform {platform!r}; installed verifiers handle "
        f"{sorted(c.platform for c in verifiers)}. See 'trustflow plugins'"
    )


def storage_for_uri(pm: pluggy.PluginManager, uri: str) -> type[Storage]:
    """The highest-priority viable storage class serving ``uri``'s scheme (``file`` when the
    URI has none)."""
    scheme = uri.split("://", 1)[0] if "://" in uri else "file"
    candidates = [c for c in backends_of(pm, STORAGE).values() if scheme in c.schemes]
    usable = [c for c in candidates if c.viable()]
    if not usable:
        hint = KNOWN_PROVIDERS.get("local" if scheme == "file" else scheme)
        extra = f" Is {hint} installed?" if hint and not candidates else ""
        raise BackendNotFound(f"no usable storage backend for {scheme}:// URIs.{extra}")
    return max(usable, key=lambda c: c.priority)


# ---- reporting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendInfo:
    kind: str
    name: str
    cls: str
    viable: bool
    reason: str | None
    simulated: bool
    priority: float


@dataclass(frozen=True)
class PluginInfo:
    name: str
    dist: str
    version: str
    module: str
    hooks: tuple[str, ...]
    backends: tuple[BackendInfo, ...] = ()
    error: str | None = None
    file: str | None = field(default=None)


def list_plugins(pm: TrustflowPluginManager) -> list[PluginInfo]:
    """Every plugin the manager loaded (and, with lenient loading, failed to load), with its
    distribution, version, hooks and backends (with viability on this host)."""
    per_plugin: dict[str, list[BackendInfo]] = {}
    for kind in HOOKS:
        for name, reg in registrations(pm, kind).items():
            cls = reg.cls
            reason = cls.unviable_reason()
            per_plugin.setdefault(reg.plugin, []).append(
                BackendInfo(
                    kind,
                    name,
                    f"{cls.__module__}.{cls.__qualname__}",
                    reason is None,
                    reason,
                    cls.simulated,
                    cls.priority,
                )
            )
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        source = pm.sources.get(name)
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        infos.append(
            PluginInfo(
                name=name,
                dist=source.dist if source else "?",
                version=source.version if source else "?",
                module=getattr(plugin, "__name__", repr(plugin)),
                hooks=hooks,
                backends=tuple(per_plugin.get(name, ())),
                file=getattr(plugin, "__file__", None),
            )
        )
    infos.extend(
        PluginInfo(f.name, f.dist, f.version, "?", (), (), f.error) for f in pm.load_failures
    )
    return sorted(infos, key=lambda i: (i.name != "core", i.name))
