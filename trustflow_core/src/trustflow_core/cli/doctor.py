"""``trustflow attest doctor --plat P [--settings FILE] [--verifier-settings FILE]
[--report-type T] [--json]``: for people with real TEE hardware. Prints what the attester
found about this host (guest detection and every generation path with why it can or cannot
work), generates a report, verifies it locally and prints a verdict. Exit status 0 only when
the verdict is "ready" (docs/real-tee.md#doctor)."""

from __future__ import annotations

import asyncio
import json

import click

from ..fileio import load_mapping

_MARK = {"ok": "ok", "warn": "warn", "unusable": "--", "fail": "FAIL", "info": "info"}


@click.command()
@click.option("--plat", required=True, help="Attester backend to check (e.g. tdx, csv).")
@click.option(
    "--settings",
    "settings_file",
    default=None,
    help="YAML/JSON mapping of attester settings (as the roles get them).",
)
@click.option(
    "--verifier-settings",
    "verifier_settings_file",
    default=None,
    help="YAML/JSON mapping of settings for the local verifier (collateral, cert sources).",
)
@click.option(
    "--report-type",
    type=click.Choice(["Passport", "BackgroundCheck"]),
    default="Passport",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
@click.pass_context
def doctor(
    ctx: click.Context,
    plat: str,
    settings_file: str | None,
    verifier_settings_file: str | None,
    report_type: str,
    as_json: bool,
) -> None:
    """Check that this host can produce PLAT evidence the local verifier accepts."""
    from ..doctor import READY, run_doctor
    from ..errors import BackendNotFound
    from ..manager import get_plugin_manager
    from ..registry import ATTESTER, backends_of, verifier_for_platform

    settings = load_mapping(settings_file, "settings file") if settings_file else {}
    verifier_settings = (
        load_mapping(verifier_settings_file, "verifier settings file")
        if verifier_settings_file
        else {}
    )
    pm = get_plugin_manager()
    attesters = backends_of(pm, ATTESTER)
    attester_cls = attesters.get(plat)
    if attester_cls is None:
        raise BackendNotFound(f"no attester backend {plat!r}; installed: {sorted(attesters)}")
    verifier_cls = verifier_for_platform(pm, attester_cls.platform)
    result = asyncio.run(
        run_doctor(
            attester_cls,
            verifier_cls,
            settings=settings,
            verifier_settings=verifier_settings,
            report_type=report_type,
        )
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"trustflow attest doctor: {plat} ({result.platform})")
        for check in result.checks:
            click.echo(
                f"  [{_MARK.get(check.status, check.status):>4}] {check.name}: {check.detail}"
            )
        for name, value in result.details.items():
            click.echo(f"         {name}: {value}")
        click.echo(f"verdict: {result.verdict}")
    if result.verdict != READY:
        ctx.exit(1)
