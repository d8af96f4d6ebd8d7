"""Command-line entry point of the Capsule Manager's client side (cheap to import):
``trustflow cms``, the owner CLI (``cms audit`` from :mod:`.audit_cli`)."""

from __future__ import annotations

import click

from . import audit_cli  # noqa: F401  (registers `cms audit`)
from .cms_cli import cms

COMMANDS: list[click.Command] = [cms]
