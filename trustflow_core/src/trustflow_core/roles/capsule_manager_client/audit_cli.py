"""``trustflow cms audit``: an owner's audit trail of its data in the CM (docs/audit.md).

The entries, the CM's signed tree head and an inclusion proof per entry are fetched and
verified against the CM's certificate before anything is shown; ``--previous`` adds the proof
that the log only grew since an earlier ``--json`` output. ``--json`` prints the verified
bundle, which ``trustflow util verify-audit`` checks again offline.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import click

from ...errors import InvalidInput, ObjectNotFound
from .cms_cli import Context, cms, json_option

#: Details shown in the table, in this order, for the entry kinds that have them.
_SHOWN = ("app_party", "op", "columns", "platform", "reason", "requester", "voters", "rule_id")


def parse_since(text: str) -> int:
    """``--since``: an ISO 8601 date or time (UTC unless it names an offset; ``Z`` allowed)
    or seconds since the epoch; returns milliseconds since the epoch."""
    if text.isdigit():
        return int(text) * 1000
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"--since {text!r} is neither an ISO 8601 time nor seconds since the epoch"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp() * 1000)


def _time(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _detail(details: dict[str, Any]) -> str:
    parts = []
    for name in _SHOWN:
        value = details.get(name)
        if value in (None, "", []):
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        parts.append(f"{name}={value}")
    if details.get("suppressed"):
        parts.append(f"(+{details['suppressed']} refusals not logged one by one)")
    return " ".join(parts)


def render_table(bundle: dict[str, Any]) -> str:
    """The bundle as a readable table and a line on what was verified."""
    entries = [json.loads(item["entry"]) for item in bundle["entries"]]
    rows = [
        (str(e["index"]), _time(e["time_ms"]), e["kind"], e["data_uuid"], _detail(e["details"]))
        for e in entries
    ]
    header = ("#", "time (UTC)", "decision", "data_uuid", "details")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)), r[4]]).rstrip()
        for r in [header, *rows]
    ]
    head = bundle["head"]
    lines.append(
        f"{len(rows)} entries verified in the CM's signed log of {head['size']} entries "
        f"(root {head['root'][:16]}…, signed {_time(head['timestamp_ms'])} UTC)"
        + (
            f"; consistent with the previous head of {bundle['consistency']['from']['size']}"
            if bundle.get("consistency")
            else ""
        )
    )
    return "\n".join(lines)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ObjectNotFound(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{what} {path} is not readable JSON: {exc}") from None


@cms.command("audit")
@click.option("--data-uuid", default="", help="Only entries about this data.")
@click.option("--since", default="", help="Only entries from this time (ISO 8601, UTC) on.")
@click.option(
    "--previous",
    type=click.Path(dir_okay=False, path_type=Path),
    help="An earlier `audit --json` output (same filters): prove the log only grew since.",
)
@json_option
@click.pass_obj
def audit(c: Context, data_uuid: str, since: str, previous: Path | None) -> None:
    """Show what the CM decided about your data (releases, refusals, policy changes, results,
    exports, deletions), verified against the CM's signed log."""
    from .audit import fetch_bundle

    since_ms = parse_since(since) if since else 0
    earlier = _read_json(previous, "previous audit") if previous is not None else None
    creds = c.credentials()
    bundle = c.run(
        lambda client: fetch_bundle(
            client, creds, data_uuid=data_uuid, since_ms=since_ms, previous=earlier
        )
    )
    if c.as_json:
        click.echo(json.dumps(bundle, indent=2))
    else:
        click.echo(render_table(bundle))
