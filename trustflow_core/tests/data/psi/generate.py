"""Regenerate the expected outputs of the PSI example's join (``manifest.json`` and each case's
``join.csv``) with upstream's own code: ``pandas.merge(alice, bob, on="id")`` written with
``to_csv(index=False)``, as ``examples/offline-sample/teeapp/psi.py`` does, under the pandas
version its requirements.txt pins (2.2.3). Not run by the tests (pandas is not a dependency):

    python -m venv /tmp/pd && /tmp/pd/bin/pip install pandas==2.2.3
    /tmp/pd/bin/python trustflow_core/tests/data/psi/generate.py [COMPAT_DATA_DIR]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy
import pandas

HERE = Path(__file__).resolve().parent
#: cases whose inputs live in the shared compat vectors (plaintexts of the upstream-encrypted
#: files the Data Capsule Proxy tests decrypt), named by their path there
COMPAT = {"compat_small_large": ("data/small.csv", "data/large.csv")}


def upstream_psi(alice: Path, bob: Path, out: Path) -> None:
    merged = pandas.merge(pandas.read_csv(alice), pandas.read_csv(bob), on="id")
    merged.to_csv(out, index=False)


def main() -> None:
    compat = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[4] / "shared/testdata/compat"
    cases = {}
    for case in sorted(p for p in (HERE / "cases").iterdir() if p.is_dir()):
        entry: dict[str, object] = {}
        if case.name in COMPAT:
            a, b = (compat / rel for rel in COMPAT[case.name])
            entry["inputs_from_compat"] = list(COMPAT[case.name])
        else:
            a, b = case / "alice.csv", case / "bob.csv"
        try:
            upstream_psi(a, b, case / "join.csv")
            entry["rows"] = len(pandas.read_csv(case / "join.csv"))
        except Exception as exc:  # what pandas refuses
            (case / "join.csv").unlink(missing_ok=True)
            entry["pandas_error"] = f"{type(exc).__name__}: {exc}"
        cases[case.name] = entry
    manifest = {
        "about": "Expected join.csv of each case, written by pandas.merge(alice, bob, on='id')"
        ".to_csv(index=False) (upstream psi.py); regenerate with generate.py.",
        "pandas": pandas.__version__,
        "numpy": numpy.__version__,
        "cases": cases,
    }
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(HERE / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
