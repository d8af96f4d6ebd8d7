"""Trustflow Hygon CSV backend: ``CsvAttester`` (inside a CSV guest, ``/dev/csv-guest``) and
``CsvVerifier`` (SM2/SM3 chain HRK -> HSK -> CEK -> PEK -> report, pinned Hygon Root Key)."""

from __future__ import annotations

__all__: list[str] = []
