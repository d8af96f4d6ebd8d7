"""Trustflow Intel TDX backend: ``tdx`` attester (inside a TD) and verifier (anywhere)."""

from __future__ import annotations

PLATFORM = "TDX"
