"""Trustflow storage backend ``local``: ``file://`` URIs and absolute paths, confined to roots."""

from __future__ import annotations
