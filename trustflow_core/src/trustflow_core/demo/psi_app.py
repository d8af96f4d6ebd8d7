"""A small PSI "TEE app" like upstream's ``examples/offline-sample/teeapp/psi.py``: asks its Data
Capsule Proxy for alice's and bob's inputs, joins them on ``id`` exactly as upstream's pandas
merge does (:func:`psi`), puts the result and has its key registered with both inputs as
ancestors. Only the standard library; it speaks plain HTTP+JSON,
so the file runs on its own in an app image without trustflow installed. It is the example
``examples/offline/psi_app.py`` (a symlink to this file) and what ``trustflow demo offline`` runs.

    python psi_app.py --proxy http://127.0.0.1:50003 \\
        --data /shared/data [--cm-endpoint HOST:PORT] [--s3-config JSON]
    python -m trustflow_core.demo.psi_app ...   # the same, installed

Without ``--s3-config`` the inputs are ``<data>/alice.csv.enc`` and ``<data>/bob.csv.enc`` and
the result is ``<data>/join.csv.enc``; with it, the inputs are ``inputs/<party>.csv.enc`` and the
result ``results/join.csv.enc`` in that bucket. Exit status 0 on success.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import urllib.error
import urllib.request
from typing import Any

PARTIES = ("alice", "bob")
RESULT_URI = "join_uuid"


def call(proxy: str, method: str, body: dict[str, Any]) -> None:
    if not proxy.startswith(("http://", "https://")):
        raise SystemExit(f"--proxy must be an http(s) URL, got {proxy!r}")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        f"{proxy}/DataCapsuleProxy/{method}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:  # noqa: S310
            answer = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        raise SystemExit(
            f"{method} failed: HTTP {exc.code}: {exc.read().decode().strip()}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SystemExit(f"{method} failed: proxy {proxy} unreachable: {reason}") from None
    if answer != {"status": {"message": "success"}}:
        raise SystemExit(f"{method}: unexpected reply {answer}")


# ---- the join: what upstream's pandas.merge(alice, bob, on="id").to_csv(index=False) writes

#: Cells pandas.read_csv reads as missing (its default na_values); written back as "".
NA_TEXT = frozenset(
    (
        *("#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND"),
        *("1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", ""),
    )
)
_INT = re.compile(r" *([+-]?)([0-9]+) *")
_FLOAT = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")
_INF = re.compile(r" *([+-]?)inf(?:inity)? *", re.IGNORECASE)
_TRUE, _FALSE = frozenset({"True", "TRUE", "true"}), frozenset({"False", "FALSE", "false"})
_INT64 = (-(2**63), 2**63 - 1)
_UINT64_MAX = 2**64 - 1


class Missing:
    """A missing cell (pandas' NaN): written as "", and equal to itself as a join key (pandas
    matches missing keys with each other)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Missing)

    def __hash__(self) -> int:
        return 0


NA = Missing()


def _exact_float(text: str) -> float:
    """``text`` (a decimal) as the double pandas reads: the same as Python's for at most 15
    significant digits and a decimal exponent within 10**±22 (one exactly rounded scaling).
    Beyond that pandas' own parser may round differently, so ValueError: such an input is
    refused rather than joined differently."""
    body = text.strip().lstrip("+-")
    mantissa, _, exponent = body.lower().partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    significant = digits.rstrip("0")
    scale = int(exponent or 0) - len(frac) + (len(digits) - len(significant))
    if len(significant) > 15 or not -22 <= scale <= 22:
        raise ValueError(
            f"the number {text.strip()!r} has more precision or range than "
            "this join reproduces exactly"
        )
    return float(text)


def _column(cells: list[str]) -> list[Any]:
    """The cells of one column typed as pandas.read_csv types them (int64/uint64, float64,
    bool, else the text), missing cells as :data:`NA`."""
    present = [c for c in cells if c not in NA_TEXT]
    if not present:
        return [NA] * len(cells)
    if all(_INT.fullmatch(c) for c in present):
        ints = [int(c) for c in present]
        fits = all(_INT64[0] <= i <= _INT64[1] for i in ints) or (
            min(ints) >= 0 and max(ints) <= _UINT64_MAX
        )
        if fits and len(present) == len(cells):
            return [int(c) for c in cells]
        if fits:  # integers with missing cells become floats
            return [NA if c in NA_TEXT else _exact_float(c) for c in cells]
        if len(present) == len(cells):
            return list(cells)  # out of (u)int64 range: pandas keeps the text
    if all(_INT.fullmatch(c) or _FLOAT.fullmatch(c) or _INF.fullmatch(c) for c in present):
        values: list[Any] = []
        for c in cells:
            inf = _INF.fullmatch(c)
            if c in NA_TEXT:
                values.append(NA)
            elif inf:
                values.append(float(f"{inf.group(1)}inf"))
            else:
                value = _exact_float(c)
                if value in (float("inf"), float("-inf")):
                    return list(cells)  # an overflowing decimal: pandas keeps the text
                values.append(value)
        return values
    if all(c in _TRUE or c in _FALSE for c in present):
        return [NA if c in NA_TEXT else c in _TRUE for c in cells]
    return [NA if c in NA_TEXT else c for c in cells]


def _cell(value: Any) -> str:
    """How DataFrame.to_csv writes a value."""
    if value is NA:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return (
            repr(value)
            if value == value and abs(value) != float("inf")
            else ("inf" if value > 0 else "-inf")
        )
    return str(value)


def _kind(values: list[Any]) -> str:
    kinds = {type(v).__name__ for v in values if v is not NA}
    if kinds <= {"int", "float"}:
        return "number"
    return kinds.pop() if len(kinds) == 1 else "object"


def read_table(path: str, key: str = "id") -> tuple[list[str], list[list[Any]]]:
    """A CSV file as pandas.read_csv reads it: the header (duplicate names numbered
    ``name.1``, ...), and the rows with typed cells. Raises ValueError for what pandas would
    refuse (no header, more cells than the header, no ``key`` column)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        raise ValueError(f"{path} is empty (pandas: no columns to parse)")
    header: list[str] = []
    seen: dict[str, int] = {}
    for name in rows[0]:
        count = seen.get(name, 0)
        seen[name] = count + 1
        header.append(f"{name}.{count}" if count else name)
    body = rows[1:]
    for n, row in enumerate(body, 2):
        if len(row) > len(header):
            raise ValueError(f"{path} line {n} has {len(row)} cells, the header {len(header)}")
    if key not in header:
        raise ValueError(f"{path} has no column {key!r}")
    columns = [_column([r[i] if i < len(r) else "" for r in body]) for i in range(len(header))]
    return header, [list(cells) for cells in zip(*columns, strict=True)] if body else []


def merge(
    left: tuple[list[str], list[list[Any]]],
    right: tuple[list[str], list[list[Any]]],
    key: str = "id",
) -> tuple[list[str], list[list[Any]]]:
    """``pandas.merge(left, right, on=key)`` (inner join, pandas 2.2): for each left row in
    order, every matching right row in order; the key once, at its place in ``left``; other
    columns present on both sides suffixed ``_x`` (left) and ``_y`` (right)."""
    (lhead, lrows), (rhead, rrows) = left, right
    li, ri = lhead.index(key), rhead.index(key)
    lkind = _kind([r[li] for r in lrows])
    rkind = _kind([r[ri] for r in rrows])
    if lrows and rrows and lkind != rkind:
        raise ValueError(f"cannot merge on {lkind} and {rkind} columns for key {key!r}")
    shared = (set(lhead) & set(rhead)) - {key}
    rkeep = [i for i, name in enumerate(rhead) if i != ri]
    header = [f"{n}_x" if n in shared else n for n in lhead]
    header += [f"{rhead[i]}_y" if rhead[i] in shared else rhead[i] for i in rkeep]
    if len(set(header)) != len(header):
        raise ValueError(f"the suffixes _x/_y would make duplicate columns: {header}")
    pairs = _inner_join_order([r[li] for r in lrows], [r[ri] for r in rrows])
    out = [lrows[i] + [rrows[j][k] for k in rkeep] for i, j in pairs]
    return header, out


def _inner_join_order(lkeys: list[Any], rkeys: list[Any]) -> list[tuple[int, int]]:
    """The (left row, right row) pairs of an inner join in the order pandas 2.2 gives them
    (``libjoin.inner_join`` with ``sort=False``): keys are numbered in order of first
    appearance, left then right, missing keys last (they match each other); pairs are made
    group by group, left-major; then they are put back in left row order (a stable sort by
    left row), except when there are exactly as many pairs as left rows, where pandas takes a
    shortcut that assumes one match per left row and permutes the pairs by the left rows'
    places in the grouped order."""
    labels: dict[Any, int] = {}
    for key in (*lkeys, *rkeys):
        if key is not NA:
            labels.setdefault(key, len(labels))
    labels[NA] = len(labels)  # missing keys: one group, after all others
    left_sorter = sorted(range(len(lkeys)), key=lambda i: labels[lkeys[i]])
    right_groups: dict[int, list[int]] = {}
    for j in sorted(range(len(rkeys)), key=lambda j: labels[rkeys[j]]):
        right_groups.setdefault(labels[rkeys[j]], []).append(j)
    pairs = [(i, j) for i in left_sorter for j in right_groups.get(labels[lkeys[i]], [])]
    if len(pairs) == len(lkeys):
        place = {row: n for n, row in enumerate(left_sorter)}
        return [pairs[place[m]] for m in range(len(lkeys))]
    return sorted(pairs, key=lambda pair: pair[0])


def psi(alice: str, bob: str, result: str) -> int:
    """Join the CSV files ``alice`` and ``bob`` on ``id`` into ``result`` exactly as
    upstream's psi.py does (``pandas.merge(..., on="id").to_csv(index=False)``: LF line
    ends, minimal quoting); return the number of rows."""
    header, rows = merge(read_table(alice), read_table(bob))
    with open(result, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(header)
        out.writerows([_cell(v) for v in row] for row in rows)
    return len(rows)


def join(data: str) -> int:
    """``<data>/alice.csv`` joined with ``<data>/bob.csv`` into ``<data>/join.csv``; the rows."""
    try:
        return psi(f"{data}/alice.csv", f"{data}/bob.csv", f"{data}/join.csv")
    except ValueError as exc:
        raise SystemExit(f"psi: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy", required=True, help="Data Capsule Proxy base URL")
    parser.add_argument("--data", required=True, help="the app's (encrypted) disk directory")
    parser.add_argument("--cm-endpoint", default="", help="CM endpoint sent in requests")
    parser.add_argument("--scope", default="default")
    parser.add_argument("--s3-config", default=None, help="S3Config JSON for inputs/results")
    args = parser.parse_args(argv)
    s3 = json.loads(args.s3_config) if args.s3_config else None
    for party in PARTIES:
        source = (
            {"s3_config": {**s3, "path": f"inputs/{party}.csv.enc"}}
            if s3
            else {"local_fs_config": {"path": f"{args.data}/{party}.csv.enc"}}
        )
        call(
            args.proxy,
            "GetInputData",
            {
                "cm_resource_config": {
                    "endpoint": args.cm_endpoint,
                    "scope": args.scope,
                    "op_name": "psi",
                    "resource_uri": f"breast_cancer_{party}",
                },
                **source,
                "dest_config": {"path": args.data},
            },
        )
    rows = join(args.data)
    dest = (
        {"s3_config": {**s3, "path": "results"}} if s3 else {"local_fs_config": {"path": args.data}}
    )
    call(
        args.proxy,
        "PutResultData",
        {
            "cm_result_config": {
                "endpoint": args.cm_endpoint,
                "scope": args.scope,
                "resource_uri": RESULT_URI,
                "ancestor_uuids": [f"breast_cancer_{p}" for p in PARTIES],
            },
            "source_config": {"path": f"{args.data}/join.csv"},
            **dest,
        },
    )
    print(f"psi: joined {rows} rows; result registered as {RESULT_URI}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
