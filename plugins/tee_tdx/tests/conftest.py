"""Shared fixtures and helpers of the tee_tdx tests.

The attestation vectors live in ``shared/testdata/attestation`` (``$TRUSTFLOW_ATTESTATION_DIR``,
else next to the compat vectors). Expected outcomes are read from its ``expected.json``.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from trustflow_core.testing.fixtures import compat_vectors_dir

from trustflow_tee_tdx.collateral import Collateral

pytest_plugins = ["trustflow_core.testing.fixtures"]


@lru_cache(maxsize=1)
def attestation_dir() -> Path:
    configured = os.environ.get("TRUSTFLOW_ATTESTATION_DIR")
    path = Path(configured) if configured else compat_vectors_dir().parent / "attestation"
    if not (path / "expected.json").is_file():
        raise FileNotFoundError(f"attestation vectors not found at {path}")
    return path


@lru_cache(maxsize=1)
def _expected() -> str:
    return (attestation_dir() / "expected.json").read_text()


def expected_tdx() -> dict[str, Any]:
    """A fresh copy of ``expected.json``'s ``tdx`` section."""
    return json.loads(_expected())["tdx"]


def quote_files() -> list[str]:
    return [name for name, v in expected_tdx().items() if "quote_len" in v]


def evaluations() -> list[tuple[str, int, dict[str, Any]]]:
    """(quote file, index, evaluation) for every collateral evaluation in expected.json."""
    return [
        (name, i, ev)
        for name, v in expected_tdx().items()
        for i, ev in enumerate(v.get("evaluations", []))
    ]


def read(name: str) -> bytes:
    return (attestation_dir() / name).read_bytes()


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def collateral_from_files(files: list[str]) -> Collateral:
    """Assemble collateral from an ``expected.json`` file list: bundles (optionally "(a, b
    only)"), PCS responses, DER CRLs and issuer-chain PEMs."""
    result = Collateral()
    for entry in files:
        match = re.fullmatch(r"(\S+)(?: \((.*) only\))?", entry)
        assert match, entry
        path = attestation_dir() / match.group(1)
        data = path.read_bytes()
        if path.suffix == ".pem":
            if "tcb_signing" in path.name:
                piece = Collateral(tcb_info_issuer_chain=data, qe_identity_issuer_chain=data)
            else:
                piece = Collateral(pck_crl_issuer_chain=data)
        elif data.startswith(b'{"tcbInfo"'):
            piece = Collateral.from_pcs(tcb_info_response=data)
        elif data.startswith(b'{"enclaveIdentity"'):
            piece = Collateral.from_pcs(qe_identity_response=data)
        elif data.startswith(b"{"):
            piece = Collateral.from_json(data)
            if match.group(2):
                keep = [k.strip() for k in match.group(2).split(",")]
                piece = Collateral(**{k: getattr(piece, k) for k in keep})
        elif "root" in path.name:
            piece = Collateral(root_ca_crl=data)
        else:
            piece = Collateral(pck_crl=data)
        result = result.merged(piece)
    return result


@pytest.fixture(autouse=True)
def _only_this_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "tee_tdx")
    for name in ("TRUSTFLOW_TEE", "TRUSTFLOW_VERIFIER", "TRUSTFLOW_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(name, raising=False)
