"""``trustflow client``: attest an online TEE app, send it one sealed request, print the reply
(like upstream ``jwe_client.py``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .online import Reply

DEFAULT_URL = "http://127.0.0.1:50001"


@click.command("client")
@click.argument("url_argument", metavar="[URL]", required=False)
@click.option(
    "--url",
    default=None,
    help=f"Gateway base URL, the same as the URL argument (default {DEFAULT_URL}).",
)
@click.option("--path", default="/teeapp", show_default=True, help="App path to POST to.")
@click.option("--data", default="hello", show_default=True, help="Request body (text).")
@click.option(
    "--compat",
    is_flag=True,
    help="Upstream JWE dialect (jwe_client.py: RSA-OAEP-256, A128GCM, unauthenticated header) "
    "instead of RFC 7516.",
)
@click.option(
    "--no-ecdh",
    is_flag=True,
    help="Seal to the app's RSA key even when its attested certificate offers an ECDH "
    "(P-256) key (default: ECDH-ES+A128KW when offered, RFC 7516 profile only).",
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
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object (attestation, HTTP status, envelope, plaintext) instead of text.",
)
def client(
    url_argument: str | None,
    url: str | None,
    path: str,
    data: str,
    compat: bool,
    no_ecdh: bool,
    platform: str | None,
    measurement: tuple[str, ...],
    policy_file: str | None,
    allow_simulation: bool,
    upstream_sim: bool,
    verifier_settings_file: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """GetRaCert with a fresh nonce from the gateway at URL (default
    http://127.0.0.1:50001), verify the report against the policy, seal DATA to the attested
    app key, POST it to PATH and print the sealed reply and its plaintext."""
    import asyncio

    from ...fileio import load_mapping
    from .._options import command_plugin_manager
    from .online import OnlineClient
    from .policy import build_policy

    if url_argument and url and url_argument.rstrip("/") != url.rstrip("/"):
        raise click.UsageError(f"two gateway URLs given: {url_argument} and --url {url}")
    url = url_argument or url or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} is not an http:// or https:// URL", param_hint="URL")
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
            pm=command_plugin_manager(),
            profile="upstream" if compat else "rfc",
            upstream_sim=upstream_sim,
            verifier_settings=verifier_settings,
            timeout=timeout,
            ecdh=not no_ecdh,
        ) as online:
            app = await online.attest()
            no_report = bool(app.verified.details.get("report"))
            platform = app.verified.attributes.str_tee_platform
            what = "no report (upstream sim)" if no_report else f"{platform} report verified"
            if not as_json:
                click.echo(f"Attested: {what}; cert bound to nonce {app.nonce[:16]}...", err=True)
                if app.ecdh_key is not None:
                    use = "not used (--no-ecdh)" if no_ecdh or compat else "used"
                    click.echo(f"The app offers an attested ECDH (P-256) key: {use}", err=True)
            reply = await online.request(path, data.encode("utf-8"))
        attested = {
            "platform": platform,
            "report_verified": not no_report,
            "nonce": app.nonce,
            "request_alg": reply.request_alg,
        }
        print_reply(reply, as_json, url=url, path=path, attested=attested)

    asyncio.run(run())


def print_reply(reply: Reply, as_json: bool, **context: Any) -> None:
    """Print the app's sealed reply and its plaintext as upstream's client does (``Response:``
    / ``Response Raw:``), or one JSON object (``context`` first); an HTTP status other than 200
    is then a one-line error."""
    text = reply.plaintext.decode("utf-8", "replace")
    if as_json:
        result = {**context, "status": reply.status, "envelope": dict(reply.envelope)}
        click.echo(json.dumps({**result, "plaintext": text}, indent=2))
    else:
        click.echo(f"Response: {dict(reply.envelope)}")
        click.echo(f"Response Raw: {text}", nl=not text.endswith("\n"))
    if reply.status != 200:
        raise click.ClickException(f"the app answered HTTP {reply.status}")


COMMANDS: list[click.Command] = [client]
