"""The one way settings are validated: a config file (or any settings mapping) read through a
:class:`Node` that knows the file and the dotted key path of every value it hands out.

Every role's config file and every backend's settings go through here, so every bad value is
reported the same way, as one :class:`ConfigError`::

    config error: /etc/trustflow/cm.yaml: storage.url: expected a non-empty string, got 5

Why a small helper rather than a schema library (pydantic, msgspec): the core distribution is
deliberately minimal (docs/packaging.md), and the checks the configs need are mostly ones no
schema library has -- Envoy durations (``"0.25s"``), paths relative to the config file and
rewritten by ``--map-path``, addresses rewritten by ``--map-address``, Envoy's stringly-typed
integers, secrets never echoed back. A typed cursor keeps the parsing code a plain function per
config section, and the errors name the file and the key path without a translation layer.

Usage::

    root = load_yaml_file(path)                  # Node at the top of the file
    section = root.get("storage").mapping({"url", "timeout_s"})   # unknown keys refused
    timeout = section.get("timeout_s").integer(30, minimum=1)
    url = section.get("url").string(None)        # None: optional

A backend validating a bare settings mapping starts from :meth:`Node.settings`; its errors name
no file, and :meth:`Node.build` re-roots them under the config file and key the settings came
from.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import InvalidInput

T = TypeVar("T")
D = TypeVar("D")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default that makes a missing value an error.
REQUIRED: Any = _Required()

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_@-]+")
_SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|url", re.IGNORECASE)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(s|ms)")
_SHOWN = 60


class ConfigError(InvalidInput):
    """A configuration value is missing or bad.

    ``source`` is the file (or another origin such as ``"sim verifier settings"``), ``key``
    the dotted key path (``""``: the whole file), ``problem`` what is wrong. ``str()`` is
    ``"<source>: <key>: <problem>"``; the ``trustflow`` command prints it as one
    ``config error: ...`` line and exits with status 1."""

    def __init__(self, problem: str, *, source: str = "", key: str = "") -> None:
        self.problem = problem
        self.source = source
        self.key = key
        super().__init__(": ".join(part for part in (source, key, problem) if part))

    def rooted(self, source: str, prefix: str) -> ConfigError:
        """This error as seen from ``source`` with the key path under ``prefix``."""
        return ConfigError(self.problem, source=source, key=join_key(prefix, self.key))


def join_key(prefix: str, key: str) -> str:
    """``prefix`` and ``key`` joined as a dotted key path (list indices stay ``[i]``)."""
    if not prefix or not key:
        return prefix or key
    return prefix + key if key.startswith("[") else f"{prefix}.{key}"


def _child_key(prefix: str, key: object) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    text = str(key)
    return join_key(prefix, text) if _PLAIN_KEY.fullmatch(text) else f"{prefix}[{text!r}]"


def describe(value: Any, *, secret: bool = False) -> str:
    """How a bad value is shown in an error: its repr (shortened), or only its type when it
    may be a secret."""
    if secret and isinstance(value, str):
        return "a string (not shown)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


class Node:
    """A value of a settings tree with where it came from: ``source`` (file name), ``key`` (dotted
    key path) and ``base`` (the directory relative paths are resolved against; None = as given).

    A missing key is a Node whose ``value`` is None with ``present`` False. The typed accessors
    (:meth:`string`, :meth:`integer`, :meth:`port`, ...) return the value or raise
    :class:`ConfigError`; their ``default`` is returned for a missing or null value, and
    :data:`REQUIRED` (the default) makes that an error."""

    __slots__ = ("base", "key", "present", "source", "value")

    def __init__(
        self,
        value: Any,
        source: str = "",
        key: str = "",
        *,
        base: Path | None = None,
        present: bool = True,
    ) -> None:
        self.value = value
        self.source = source
        self.key = key
        self.base = base
        self.present = present and value is not None

    @classmethod
    def settings(cls, settings: Mapping[str, Any] | None, what: str) -> Node:
        """The root of a backend's settings mapping (None = empty); errors name ``what``
        (e.g. ``"sim verifier settings"``) until :meth:`build` re-roots them."""
        return cls({} if settings is None else settings, what)

    def __repr__(self) -> str:
        return f"Node({self.source}: {self.key or '<top>'})"

    # ---- errors ------------------------------------------------------------------------------

    def error(self, problem: str) -> ConfigError:
        """A :class:`ConfigError` about this value."""
        return ConfigError(problem, source=self.source, key=self.key)

    def expected(self, what: str) -> ConfigError:
        """``expected <what>, got <value>``."""
        secret = bool(_SECRET_KEY.search(self.key.rsplit(".", 1)[-1]))
        return self.error(f"expected {what}, got {describe(self.value, secret=secret)}")

    def build(self, make: Callable[[Any], T]) -> T:
        """``make(self.value)`` (for example a backend's ``from_settings``), its errors about
        the value reported at this file and key: a :class:`ConfigError` is re-rooted under this
        key, another :class:`~trustflow_core.errors.InvalidInput` becomes a
        :class:`ConfigError` at this key; other errors pass unchanged."""
        try:
            return make(self.value)
        except ConfigError as exc:
            if exc.source == self.source:
                raise
            raise exc.rooted(self.source, self.key) from None
        except InvalidInput as exc:
            raise self.error(str(exc)) from None

    # ---- structure ---------------------------------------------------------------------------

    def get(self, key: str) -> Node:
        """The child ``key`` of a mapping (this node must be a mapping or missing)."""
        mapping = self._as_mapping()
        return Node(
            mapping.get(key),
            self.source,
            _child_key(self.key, key),
            base=self.base,
            present=key in mapping,
        )

    def _as_mapping(self) -> Mapping[str, Any]:
        if not self.present:
            return {}
        if not isinstance(self.value, Mapping):
            raise self.expected("a mapping")
        return self.value

    def mapping(
        self, allowed: Collection[str] | None = None, *, required: Collection[str] = ()
    ) -> Node:
        """This node, checked to be a mapping (missing = empty) with only ``allowed`` keys
        (None: any) and every ``required`` one."""
        mapping = self._as_mapping()
        for key in mapping:
            if not isinstance(key, str):
                raise Node(key, self.source, self.key).expected("string keys")
        if allowed is not None:
            unknown = sorted(set(mapping) - set(allowed))
            if unknown:
                raise self.error(
                    f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
                )
        missing = [key for key in required if mapping.get(key) is None]
        if missing:
            raise self.error(f"missing required key(s) {', '.join(missing)}")
        return self if self.present else Node({}, self.source, self.key, base=self.base)

    def items(self) -> Iterator[tuple[str, Node]]:
        """``(key, child)`` of a mapping (missing = empty)."""
        for key in self.mapping().value:
            yield key, self.get(key)

    def elements(self, *, default: list[Any] | None = None) -> list[Node]:
        """The children of a list; a missing value is ``default`` (None = required)."""
        if not self.present:
            if default is None:
                raise self.error("missing (a list is required)")
            value = default
        elif isinstance(self.value, list):
            value = self.value
        else:
            raise self.expected("a list")
        return [
            Node(v, self.source, _child_key(self.key, i), base=self.base)
            for i, v in enumerate(value)
        ]

    def raw_mapping(self) -> dict[str, Any]:
        """A plain copy of a mapping (missing = empty), for settings handed on unparsed."""
        return dict(self.mapping().value)

    def _missing(self, default: D, what: str) -> D:
        if default is REQUIRED:
            raise self.error(f"missing ({what} is required)")
        return default

    # ---- scalars -----------------------------------------------------------------------------

    def string(self, default: D = REQUIRED, *, empty: bool = False) -> str | D:
        """A string (non-empty unless ``empty``)."""
        if not self.present:
            return self._missing(default, "a string")
        if not isinstance(self.value, str) or (not empty and not self.value):
            raise self.expected("a string" if empty else "a non-empty string")
        return self.value

    def text(self, default: D = REQUIRED) -> str | D:
        """A scalar read as text, as YAML writers mean it (``1`` → ``"1"``); not a bool."""
        if not self.present:
            return self._missing(default, "a value")
        if isinstance(self.value, bool) or not isinstance(self.value, str | int | float):
            raise self.expected("a string")
        return str(self.value)

    def strings(self, default: D = REQUIRED) -> list[str] | D:
        """A list of strings."""
        if not self.present:
            return self._missing(default, "a list of strings")
        return [e.string(empty=True) for e in self.elements()]

    def name(self, default: D = REQUIRED) -> str | D:
        """A backend name (a non-empty string)."""
        if not self.present:
            return self._missing(default, "a backend name")
        if not isinstance(self.value, str) or not self.value.strip():
            raise self.expected("a backend name")
        return self.value

    def choice(self, options: Collection[str], default: D = REQUIRED) -> str | D:
        """One of ``options``."""
        if not self.present:
            return self._missing(default, "a value")
        if self.value not in options:
            raise self.expected(f"one of {', '.join(options)}")
        return str(self.value)

    def boolean(self, default: D = REQUIRED) -> bool | D:
        """``true`` or ``false`` (YAML booleans only, not strings)."""
        if not self.present:
            return self._missing(default, "true or false")
        if not isinstance(self.value, bool):
            raise self.expected("true or false")
        return self.value

    def integer(
        self,
        default: D = REQUIRED,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        digits_ok: bool = False,
    ) -> int | D:
        """An integer in ``[minimum, maximum]``; ``digits_ok``: a string of digits too (the
        JSON form of Envoy's uint64)."""
        if not self.present:
            return self._missing(default, "an integer")
        value = self.value
        if digits_ok and isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.expected(_int_words(minimum, maximum))
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self.expected(_int_words(minimum, maximum))
        return value

    def number(
        self, default: D = REQUIRED, *, minimum: float = 0.0, zero_ok: bool = True
    ) -> float | D:
        """A finite number ``>= minimum`` (``> 0`` when not ``zero_ok``)."""
        if not self.present:
            return self._missing(default, "a number")
        value = self.value
        what = "a positive number" if not zero_ok else f"a number >= {minimum:g}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.expected(what)
        try:
            number = float(value)
        except OverflowError:
            raise self.expected(what) from None
        if not minimum <= number < math.inf or (number == 0 and not zero_ok):
            raise self.expected(what)
        return number

    def port(self, default: D = REQUIRED) -> int | D:
        """A TCP port, 0..65535 (0: any free port); digits in a string are accepted."""
        return self.integer(default, minimum=0, maximum=65535, digits_ok=True)

    def duration(self, default: D = REQUIRED, *, zero_is_off: bool = False) -> float | D:
        """Seconds: a number or an Envoy duration string (``"0.25s"``, ``"250ms"``); positive
        and finite, or 0 when ``zero_is_off`` (a timeout that can be turned off)."""
        if not self.present:
            return self._missing(default, "a duration")
        what = "a duration ('0.25s', '250ms' or seconds)" + (", 0 = off" if zero_is_off else " > 0")
        value = self.value
        if isinstance(value, str):
            match = _DURATION.fullmatch(value.strip())
            if not match:
                raise self.expected(what)
            number = float(match.group(1))
            seconds = number / 1000 if match.group(2) == "ms" else number
        elif isinstance(value, int | float) and not isinstance(value, bool):
            try:
                seconds = float(value)
            except OverflowError:  # an integer beyond any float
                seconds = math.inf
        else:
            raise self.expected(what)
        if not 0 <= seconds < math.inf or (seconds == 0 and not zero_is_off):  # NaN fails too
            raise self.expected(what)
        return seconds

    def path(self, default: D = REQUIRED) -> Path | D:
        """A file path, ``~`` expanded; relative ones are relative to ``base`` when set."""
        if not self.present:
            return self._missing(default, "a file path")
        if not isinstance(self.value, str | os.PathLike) or not str(self.value):
            raise self.expected("a file path")
        path = Path(self.value).expanduser()
        return self.base / path if self.base is not None and not path.is_absolute() else path

    def host_port(self, default: D = REQUIRED) -> tuple[str, int] | D:
        """``"host:port"`` as ``(host, port)``."""
        if not self.present:
            return self._missing(default, "host:port")
        if not isinstance(self.value, str) or ":" not in self.value:
            raise self.expected("'host:port'")
        host, _, port = self.value.rpartition(":")
        if not host:
            raise self.expected("'host:port'")
        return host, Node(port, self.source, self.key).port()

    def endpoints(self, default: D = REQUIRED, *, check: bool = True) -> tuple[str, ...] | D:
        """One or more endpoints, in order and without repeats: ``"h1:p1,h2:p2"`` or a list
        of such strings (docs/failover.md). With ``check`` each must be ``host:port``."""
        if not self.present:
            return self._missing(default, "host:port[,host:port...]")
        if isinstance(self.value, str):
            items = [(self, part) for part in self.value.split(",")]
        elif isinstance(self.value, list) and self.value:
            items = [(e, part) for e in self.elements() for part in e.string().split(",")]
        else:
            raise self.expected("'host:port', 'host:port,host:port,...' or a list of them")
        out: list[str] = []
        for node, part in items:
            part = part.strip()
            if not part:
                raise node.expected("'host:port[,host:port...]' without empty entries")
            if check:
                part = "{}:{}".format(*Node(part, node.source, node.key).host_port())
            if part not in out:
                out.append(part)
        return tuple(out)


def _int_words(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer {minimum}..{maximum}"
    if minimum == 1:
        return "a positive integer"
    if minimum is not None:
        return f"an integer >= {minimum}"
    return "an integer"


# ---- files -------------------------------------------------------------------------------------


def yaml_problem(exc: Exception) -> str:
    """A YAML parser error as ``line L, column C: problem`` (no ``<unicode string>``)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if context:
        problem = f"{problem} ({context})"
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def parse_yaml(text: str, source: str) -> Any:
    """``text`` parsed as YAML; a syntax error is a :class:`ConfigError` naming ``source`` and
    the line."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {yaml_problem(exc)}", source=source) from None
    except ValueError as exc:  # e.g. an integer of 5000 digits
        raise ConfigError(f"not valid YAML: {exc}", source=source) from None
    except RecursionError:
        raise ConfigError("nested too deeply", source=source) from None


def load_yaml_file(path: str | os.PathLike[str], *, relative_to_file: bool = True) -> Node:
    """The top of a YAML config file, checked to be a mapping (an empty file is an empty
    mapping). Relative paths in it are relative to its directory when ``relative_to_file``.
    An unreadable file or bad YAML raises :class:`ConfigError` naming the file."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", source=source) from None
    except UnicodeDecodeError:
        raise ConfigError("cannot read: not UTF-8 text", source=source) from None
    data = parse_yaml(text, source)
    base = path.resolve().parent if relative_to_file else None
    node = Node({} if data is None else data, source, base=base)
    if not isinstance(node.value, Mapping):
        raise node.error(f"expected a mapping at the top, got {describe(node.value)}")
    return node
