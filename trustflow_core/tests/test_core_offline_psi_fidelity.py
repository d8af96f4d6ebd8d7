"""The PSI example's join writes exactly what upstream's psi.py writes (issue 15):
``pandas.merge(alice, bob, on="id").to_csv(index=False)`` — LF line ends, pandas' ``_x``/``_y``
suffixes, every pair for duplicate ids in pandas' order, pandas' reading of numbers, booleans
and missing cells. The expected files were written by pandas itself (data/psi/generate.py,
the version in data/psi/manifest.json); inputs it cannot reproduce exactly are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trustflow_core.demo import psi_app
from trustflow_core.demo.offline import sample_tables
from trustflow_core.testing.support import compat_vectors_dir

VECTORS = Path(__file__).resolve().parent / "data" / "psi"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())


def _inputs(case: str) -> tuple[Path, Path]:
    entry = MANIFEST["cases"][case]
    if "inputs_from_compat" in entry:
        alice, bob = (compat_vectors_dir() / rel for rel in entry["inputs_from_compat"])
        return alice, bob
    return VECTORS / "cases" / case / "alice.csv", VECTORS / "cases" / case / "bob.csv"


def test_vectors_come_from_upstreams_pandas() -> None:
    assert MANIFEST["pandas"] == "2.2.3"  # upstream teeapp/requirements.txt
    alice, bob = sample_tables()  # what trustflow demo offline joins
    assert _inputs("demo_sample")[0].read_bytes() == alice
    assert _inputs("demo_sample")[1].read_bytes() == bob
    assert set(MANIFEST["cases"]) == {p.name for p in (VECTORS / "cases").iterdir() if p.is_dir()}


@pytest.mark.parametrize(
    "case", sorted(c for c, e in MANIFEST["cases"].items() if "pandas_error" not in e)
)
def test_join_is_what_pandas_wrote(case: str, tmp_path: Path) -> None:
    alice, bob = _inputs(case)
    out = tmp_path / "join.csv"
    rows = psi_app.psi(str(alice), str(bob), str(out))
    expected = (VECTORS / "cases" / case / "join.csv").read_bytes()
    assert out.read_bytes() == expected
    assert rows == MANIFEST["cases"][case]["rows"]
    assert b"\r" not in expected.replace(b'"line\nbreak"', b"")  # LF line ends


@pytest.mark.parametrize(
    "case", sorted(c for c, e in MANIFEST["cases"].items() if "pandas_error" in e)
)
def test_join_refuses_what_pandas_refuses(case: str, tmp_path: Path) -> None:
    alice, bob = _inputs(case)
    with pytest.raises(ValueError, match="cannot merge on number and str columns for key 'id'"):
        psi_app.psi(str(alice), str(bob), str(tmp_path / "join.csv"))
    assert "merge on int64 and object columns" in MANIFEST["cases"][case]["pandas_error"]


def test_inputs_pandas_would_round_differently_are_refused(tmp_path: Path) -> None:
    """pandas' own float parser rounds 18 significant digits differently from a correctly
    rounded one (it reads 123456789.123456789 as 123456789.12345678): refused, not guessed."""
    (tmp_path / "alice.csv").write_text("id,v\n1,123456789.123456789\n2,0.5\n")
    (tmp_path / "bob.csv").write_text("id,w\n1,x\n")
    with pytest.raises(SystemExit, match=r"psi: the number '123456789\.123456789' has more"):
        psi_app.join(str(tmp_path))
    assert not (tmp_path / "join.csv").exists()
