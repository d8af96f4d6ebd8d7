"""A small PSI "TEE app" like upstream's ``examples/offline-sample/teeapp/psi.py``: asks its Data
Capsule Proxy for alice's and bob's inputs, joins them on ``id``, puts the result and has its key
registered with both inputs as ancestors. Only the standard library; it speaks plain HTTP+JSON,
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


def join(data: str) -> int:
    """Inner join of ``alice.csv`` and ``bob.csv`` on ``id`` into ``join.csv``; return rows."""
    tables = {}
    for party in PARTIES:
        with open(f"{data}/{party}.csv", newline="") as f:
            tables[party] = list(csv.reader(f))
    alice, bob = tables["alice"], tables["bob"]
    bob_by_id = {row[0]: row for row in bob[1:]}
    rows = 0
    with open(f"{data}/join.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(alice[0] + [f"bob_{c}" for c in bob[0][1:]])
        for row in alice[1:]:
            if row[0] in bob_by_id:
                out.writerow(row + bob_by_id[row[0]][1:])
                rows += 1
    return rows


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
