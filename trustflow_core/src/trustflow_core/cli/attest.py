"""``trustflow attest``: produce and check UnifiedAttestationReports with installed backends.

* ``trustflow attest report --plat sim --user-data HEX [--out FILE]`` prints (or writes) the
  report as wire JSON.
* ``trustflow attest verify --report FILE | --quote FILE --plat P [--collateral FILE]
  [--policy FILE] [--user-data HEX] [--allow-simulation] [--time ISO8601] [--json]`` prints a
  verdict; exit status 0 only when the evidence is accepted, 1 otherwise (errors included).
  ``--quote`` takes raw platform evidence (a TDX quote, a CSV report), wrapped into a report by
  the verifier's ``report_from_evidence``; ``--collateral``/``--certs`` add its endorsements.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from ..errors import InvalidInput, VerificationError
from ..fileio import load_mapping

_SETTINGS_HELP = "YAML/JSON mapping of backend settings (as in the config file section)."


def _parse_hex(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise InvalidInput(f"{what} must be hex, got {value!r}") from exc


def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(f"--time must be ISO 8601, got {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@click.group()
def attest() -> None:
    """Generate and verify attestation reports (UnifiedAttestationReport JSON)."""


@attest.command()
@click.option(
    "--plat",
    default=None,
    help="Attester backend name (e.g. sim, tdx, csv). Default: $TRUSTFLOW_TEE, else the best "
    "usable non-simulated attester.",
)
@click.option("--user-data", required=True, help="Hex of at most 32 bytes to bind.")
@click.option(
    "--report-type",
    type=click.Choice(["Passport", "BackgroundCheck"]),
    default="Passport",
    show_default=True,
)
@click.option("--settings", "settings_file", default=None, help=_SETTINGS_HELP)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write here.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object: the backend, the platform, where the report went, the report.",
)
def report(
    plat: str | None,
    user_data: str,
    report_type: str,
    settings_file: str | None,
    out: str | None,
    as_json: bool,
) -> None:
    """Generate a report binding USER_DATA and print it as wire JSON (or write it to --out)."""
    from ..attestation import Attester
    from ..fileio import atomic_write_bytes
    from ..manager import get_plugin_manager
    from ..registry import ATTESTER, backend_class

    data = _parse_hex(user_data, "--user-data")
    settings = load_mapping(settings_file, "settings file") if settings_file else {}
    cls: type[Attester] = backend_class(get_plugin_manager(), ATTESTER, plat)

    async def generate() -> Any:
        async with cls.from_settings(settings) as attester:
            return await attester.generate(data, report_type=report_type)

    generated = asyncio.run(generate()).to_dict()
    text = json.dumps(generated, indent=2) + "\n"
    if out is not None:
        atomic_write_bytes(out, text.encode())
    if as_json:
        result = {
            "backend": cls.name,
            "platform": cls.platform,
            "report_type": report_type,
            "out": out,
            "report": generated,
        }
        click.echo(json.dumps(result, indent=2))
    elif out is None:
        click.echo(text, nl=False)
    else:
        click.echo(f"wrote {cls.platform} report to {out}", err=True)


@attest.command()
@click.option("--report", "report_file", default=None, help="Report JSON file ('-' = stdin).")
@click.option(
    "--quote",
    "quote_file",
    default=None,
    help="Raw platform evidence file (e.g. a TDX quote, a CSV report) instead of --report; "
    "needs --plat.",
)
@click.option(
    "--collateral",
    "--certs",
    "endorsements_file",
    default=None,
    help="Endorsements for the evidence: collateral JSON (TDX) or certificate chain (CSV).",
)
@click.option(
    "--plat",
    default=None,
    help="Verifier backend name. Default: the verifier for the report's str_tee_platform.",
)
@click.option(
    "--policy",
    "policy_file",
    default=None,
    help="UnifiedAttestationPolicy YAML/JSON (main_attributes, allow_simulation). Default: "
    "only the report's platform is required.",
)
@click.option(
    "--user-data",
    default=None,
    help="Require this hex user data (zero-padded to 32 bytes) in every policy entry.",
)
@click.option("--allow-simulation", is_flag=True, help="Accept simulated evidence.")
@click.option("--time", "at", default=None, help="Verify as of this ISO 8601 time.")
@click.option("--settings", "settings_file", default=None, help=_SETTINGS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable verdict.")
@click.pass_context
def verify(
    ctx: click.Context,
    report_file: str | None,
    quote_file: str | None,
    endorsements_file: str | None,
    plat: str | None,
    policy_file: str | None,
    user_data: str | None,
    allow_simulation: bool,
    at: str | None,
    settings_file: str | None,
    as_json: bool,
) -> None:
    """Verify a report against a policy and print the verdict (exit 0 only if accepted)."""
    from ..attestation import MAX_USER_DATA, Attributes, Policy, Report, Verifier
    from ..manager import get_plugin_manager
    from ..registry import VERIFIER, backend_class, verifier_for_platform

    now = _parse_time(at) if at else None
    settings = load_mapping(settings_file, "settings file") if settings_file else {}
    policy = Policy.from_dict(load_mapping(policy_file, "policy")) if policy_file else None
    required = _parse_hex(user_data, "--user-data") if user_data is not None else None
    if (report_file is None) == (quote_file is None):
        raise click.UsageError("give exactly one of --report and --quote")
    if quote_file is not None and not plat:
        raise click.UsageError("--quote needs --plat to know the evidence format")
    pm = get_plugin_manager()
    try:
        if quote_file is not None:
            cls: type[Verifier] = backend_class(pm, VERIFIER, plat)
            endorsements = _read_bytes(endorsements_file) if endorsements_file else None
            report = cls.report_from_evidence(_read_bytes(quote_file), endorsements=endorsements)
        else:
            assert report_file is not None
            data = _read_bytes(report_file)
            if _is_json_text(data):
                report = Report.from_dict(_report_mapping(data, report_file))
                cls = (
                    backend_class(pm, VERIFIER, plat)
                    if plat
                    else verifier_for_platform(pm, report.str_tee_platform)
                )
                if endorsements_file is not None:  # endorsements for a report that lacks them
                    report = cls.report_from_evidence(
                        json.dumps(report.to_dict()).encode(),
                        endorsements=_read_bytes(endorsements_file),
                    )
            else:  # raw evidence where a report was expected: find its platform
                cls = _raw_evidence_verifier(pm, data, report_file, plat)
                click.echo(
                    f"note: {report_file} is raw {cls.platform} evidence, not a report JSON; "
                    f"verifying it as --quote {report_file} --plat {cls.name}",
                    err=True,
                )
                endorsements = _read_bytes(endorsements_file) if endorsements_file else None
                report = cls.report_from_evidence(data, endorsements=endorsements)
    except InvalidInput as exc:
        _print_verdict(VerificationError("format", str(exc)), None, as_json)
        ctx.exit(1)

    if policy is None:
        policy = Policy((Attributes(str_tee_platform=report.str_tee_platform),))
    if required is not None:
        if len(required) > MAX_USER_DATA:
            raise InvalidInput(f"--user-data is {len(required)} bytes; at most 32 are bound")
        policy = policy.with_user_data(required.ljust(MAX_USER_DATA, b"\0"))
    if allow_simulation:
        policy = dataclasses.replace(policy, allow_simulation=True)

    async def check() -> Any:
        async with cls.from_settings(settings) as verifier:
            return await verifier.verify(report, policy, now=now)

    try:
        verified = asyncio.run(check())
    except VerificationError as exc:
        _print_verdict(exc, None, as_json)
        ctx.exit(1)
    _print_verdict(None, verified, as_json)


def _is_json_text(data: bytes) -> bool:
    """Whether ``data`` is text that starts like a JSON object (a report file), rather than
    binary evidence."""
    try:
        return data.decode("utf-8").lstrip().startswith("{")
    except UnicodeDecodeError:
        return False


def _report_mapping(data: bytes, path: str) -> Any:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"report {path} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput(f"report {path} must hold a mapping, not {type(doc).__name__}")
    return doc


def _raw_evidence_verifier(pm: Any, data: bytes, path: str, plat: str | None) -> Any:
    """The verifier class for raw evidence ``data`` given as ``--report path``: the one named
    by ``plat``, else the one installed verifier that recognizes it; :class:`InvalidInput`
    saying what to do when none or several do."""
    from ..registry import VERIFIER, backend_class, backends_of

    if plat:
        return backend_class(pm, VERIFIER, plat)
    found = [c for c in backends_of(pm, VERIFIER).values() if c.recognizes_evidence(data)]
    if len(found) == 1:
        return found[0]
    why = (
        "no installed verifier recognizes it as raw evidence"
        if not found
        else f"it could be raw evidence of {', '.join(sorted(c.name for c in found))}"
    )
    raise InvalidInput(
        f"{path} is not a report JSON and {why}; for raw evidence use --quote {path} --plat P"
    )


def _read_bytes(path: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from exc


def _print_verdict(error: VerificationError | None, verified: Any, as_json: bool) -> None:
    attributes = verified.attributes.to_dict() if verified is not None else {}
    if as_json:
        verdict = {
            "verdict": "rejected" if error else "accepted",
            "check": error.check if error else None,
            "message": error.detail if error else "",
            "simulated": bool(verified and verified.simulated),
            "attributes": attributes,
            "details": dict(verified.details) if verified is not None else {},
        }
        click.echo(json.dumps(verdict, indent=2))
        return
    if error is not None:
        click.echo(f"rejected: check {error.check!r} failed: {error.detail}")
        return
    click.echo("accepted" + (" (SIMULATED evidence)" if verified.simulated else ""))
    for name, value in attributes.items():
        click.echo(f"  {name}: {value}")
    for name, value in verified.details.items():
        click.echo(f"  {name}: {value}")
