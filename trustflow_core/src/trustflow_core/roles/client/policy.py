"""Build the attestation policy of ``trustflow client`` from a file and options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from ...attestation import Attributes, Policy
from ...errors import InvalidInput

_NAMES = {f.name for f in fields(Attributes)}


def build_policy(
    data: Mapping[str, Any] | None,
    *,
    platform: str | None = None,
    measurements: tuple[str, ...] = (),
    allow_simulation: bool = False,
) -> Policy:
    """``data`` (upstream policy JSON) with ``platform`` and ``NAME=HEX`` requirements added to
    every entry (or to one new entry when ``data`` has none)."""
    base = Policy.from_dict(data) if data else Policy()
    extra: dict[str, str] = {}
    if platform:
        extra["str_tee_platform"] = platform
    for item in measurements:
        name, sep, value = item.partition("=")
        if not sep or name not in _NAMES or not value:
            raise InvalidInput(
                f"--measurement must be NAME=VALUE with NAME an attestation attribute "
                f"(e.g. hex_ta_measurement), got {item!r}"
            )
        extra[name] = value
    entries = base.main_attributes or (Attributes(),)
    if extra:
        entries = tuple(Attributes(**{**e.__dict__, **extra}) for e in entries)
    return Policy(entries, allow_simulation or base.allow_simulation)
