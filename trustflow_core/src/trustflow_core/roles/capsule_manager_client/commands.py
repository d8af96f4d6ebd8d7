"""Command-line entry point of the Capsule Manager's client side (cheap to import):
``trustflow cms``, the owner CLI."""

from __future__ import annotations

import click

from .cms_cli import cms

COMMANDS: list[click.Command] = [cms]
