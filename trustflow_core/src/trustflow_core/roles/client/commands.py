"""``trustflow client``: attest an online TEE app, send it one sealed request, print the reply
(like upstream ``jwe_client.py``)."""

from __future__ import annotations

import click


@click.command("client")
@click.option(
    "--url",
    default="http://127.0.0.1:50001",
    show_default=True,
    help="Gateway base URL (GetRaCert and the app are reached through it).",
)
@click.option("--path", default="/teeapp", show_default=True, help="App path to POST to.")
@click.option("--data", default="hello", show_default=True, help="Request body (text).")
@click.option(
    "--compat",
    is_flag=True,
    help="Upstream JWE dialect (jwe_client.py: RSA-OAEP-256, A128GCM, unauthenticated header) "
    "instead of RFC 7516.",
)
@click.option("--platform", default=None, help="Required str_tee_platform (e.g. TDX, CSV, SIM).")
@click.option(
    "--measurement",
    multiple=True,
    metavar="NAME=HEX",
    help="Required attribute, e.g. hex_ta_measurement=ab12... (repeatable).",
)
@click.option(
    "--policy",
    "policy_file",
    default=None,
    help="Upstream UnifiedAttestationPolicy JSON (main_attributes); combined with the options.",
)
@click.option("--allow-simulation", is_flag=True, help="Accept simulated (sim) evidence.")
@click.option(
    "--upstream-sim",
    is_flag=True,
    help="Accept a GetRaCert reply without a report (upstream sim proxy); needs "
    "--allow-simulation and proves nothing about the app.",
)
@click.option(
    "--verifier-settings",
    "verifier_settings_file",
    default=None,
    help="YAML/JSON mapping: verifier name -> settings (e.g. sim: {trusted_platform_keys: [...]}).",
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds per call.")
def client(
    url: str,
    path: str,
    data: str,
    compat: bool,
    platform: str | None,
    measurement: tuple[str, ...],
    policy_file: str | None,
    allow_simulation: bool,
    upstream_sim: bool,
    verifier_settings_file: str | None,
    timeout: float,
) -> None:
    """GetRaCert with a fresh nonce, verify the report against the policy, seal DATA to the
    attested app key, POST it to PATH and print the sealed reply and its plaintext."""
    import asyncio

    from ...fileio import load_mapping
    from ...manager import get_plugin_manager
    from .online import OnlineClient
    from .policy import build_policy

    policy = build_policy(
        load_mapping(policy_file, "policy file") if policy_file else None,
        platform=platform,
        measurements=measurement,
        allow_simulation=allow_simulation,
    )
    verifier_settings = (
        load_mapping(verifier_settings_file, "verifier settings") if verifier_settings_file else {}
    )

    async def run() -> None:
        async with OnlineClient(
            url,
            policy=policy,
            pm=get_plugin_manager(),
            profile="upstream" if compat else "rfc",
            upstream_sim=upstream_sim,
            verifier_settings=verifier_settings,
            timeout=timeout,
        ) as online:
            app = await online.attest()
            what = (
                "no report (upstream sim)"
                if app.verified.details.get("report")
                else (f"{app.verified.attributes.str_tee_platform} report verified")
            )
            click.echo(f"Attested: {what}; cert bound to nonce {app.nonce[:16]}...", err=True)
            reply = await online.request(path, data.encode("utf-8"))
        click.echo(f"Response: {dict(reply.envelope)}")
        text = reply.plaintext.decode("utf-8", "replace")
        click.echo(f"Response Raw: {text}", nl=not text.endswith("\n"))
        if reply.status != 200:
            raise click.ClickException(f"the app answered HTTP {reply.status}")

    asyncio.run(run())


COMMANDS: list[click.Command] = [client]
