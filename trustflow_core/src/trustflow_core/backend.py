"""The base of every backend a plugin registers.

A backend is a class. Plugins register classes through the registration hooks
(:mod:`trustflow_core.hookspecs`); the core instantiates them with
:meth:`Backend.from_settings` only when a role or command needs one.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from typing_extensions import Self

if TYPE_CHECKING:
    import pluggy


class Backend:
    """Common class-level contract of attesters, verifiers, key exchanges, storages and channels.

    Subclasses set ``name`` (the registry key and config value, unique per kind) and may set
    ``priority`` (higher wins automatic selection) and ``simulated`` (never auto-selected, and
    its evidence is rejected unless a policy allows simulation).
    """

    kind: ClassVar[str] = "backend"
    name: ClassVar[str]
    priority: ClassVar[float] = 0.0
    simulated: ClassVar[bool] = False

    @classmethod
    def viable(cls) -> bool:
        """Return whether the backend can work on this host. Must never raise."""
        return cls.unviable_reason() is None

    @classmethod
    def unviable_reason(cls) -> str | None:
        """Why the backend cannot work on this host, or None when it can. Never raises."""
        return None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None) -> Self:
        """Build an instance from a plain settings mapping (config file section, CLI flags).

        The default accepts no settings; backends with options override it and raise
        :class:`~trustflow_core.errors.InvalidInput` naming any unknown or bad key.
        """
        from .errors import InvalidInput

        if settings:
            raise InvalidInput(f"{cls.kind} {cls.name!r} takes no settings, got {sorted(settings)}")
        return cls()

    @classmethod
    def from_role(cls, settings: Mapping[str, Any] | None, *, pm: pluggy.PluginManager) -> Self:
        """Build an instance for a role whose plugin manager is ``pm``: what roles call.

        The default is :meth:`from_settings` (``pm`` unused). A backend that builds other
        backends (the ``capsule_manager`` key exchange builds its attester and the CM client's
        channel and verifiers) overrides this to choose them from ``pm``, so that a role and
        everything it builds see one set of plugins; its :meth:`from_settings` stays usable on
        its own (then with the installed plugins).
        """
        return cls.from_settings(settings)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release clients and files the backend owns. Idempotent."""
