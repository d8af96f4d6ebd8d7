"""``trustflow demo ...``: the end-to-end scenarios on loopback."""

from __future__ import annotations

import json

import click

_JSON = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the outcome as one JSON object (implies --quiet).",
)


@click.group("demo")
def demo() -> None:
    """Run an end-to-end scenario on 127.0.0.1 with temporary keys and a simulated TEE."""


@demo.command("online")
@click.option("--message", default="hello", show_default=True, help="What the client sends.")
@click.option("--compat", is_flag=True, help="Use the upstream JWE dialect (jwe_client.py).")
@click.option("--quiet", is_flag=True, help="Do not describe the steps on stderr.")
@_JSON
def online(message: str, compat: bool, quiet: bool, as_json: bool) -> None:
    """TEE app + RA Proxy + JWE gateway + client: attest, send one sealed request, print the
    sealed reply and its plaintext, stop everything."""
    import asyncio

    from ..roles.client.commands import print_reply
    from .online import run_online

    def say(text: str) -> None:
        if not (quiet or as_json):
            click.echo(text, err=True)

    reply = asyncio.run(run_online(message.encode("utf-8"), compat=compat, say=say))
    print_reply(reply, as_json)


@demo.command("offline")
@click.option("--s3", is_flag=True, help="Keep the data in a loopback S3 server (moto).")
@click.option("--quiet", is_flag=True, help="Do not describe the steps on stderr.")
@_JSON
def offline(s3: bool, quiet: bool, as_json: bool) -> None:
    """Capsule Manager + Data Capsule Proxy + a PSI app: owners register keys and policies, the
    attested app joins their encrypted tables, the result is stored encrypted and its key is
    registered with lineage; the grantee fetches and decrypts it."""
    import asyncio

    from .offline import run_offline

    def say(text: str) -> None:
        if not (quiet or as_json):
            click.echo(text, err=True)

    result = asyncio.run(run_offline(s3=s3, say=say))
    joined = result.joined_csv.decode("utf-8", "replace")
    if as_json:
        outcome = {"result_location": result.result_location, "rows": result.rows, "csv": joined}
        click.echo(json.dumps(outcome, indent=2))
        return
    click.echo(f"Result stored at {result.result_location} ({result.rows} rows)")
    click.echo(joined, nl=False)


@demo.command("interact")
@click.option("--quiet", is_flag=True, help="Do not describe the steps on stderr.")
@_JSON
def interact(quiet: bool, as_json: bool) -> None:
    """Capsule Manager + two Data Capsule Proxies (cm-init: group TLS asset) + two gateways
    (mTLS ingress/egress) + bob's and carol's apps: each app says hello to the other through
    mutual TLS; prints each app's line as the upstream interact sample does."""
    import asyncio

    import aiohttp

    from ..errors import TrustflowError
    from .interact import run_interact

    def say(text: str) -> None:
        if not (quiet or as_json):
            click.echo(text, err=True)

    try:
        result = asyncio.run(run_interact(say=say))
    except (
        TrustflowError,
        RuntimeError,
        OSError,
        aiohttp.ClientError,
        asyncio.TimeoutError,
    ) as exc:
        raise click.ClickException(f"demo interact failed: {exc}") from None
    if as_json:
        outcome = {
            "lines": result.lines,
            "group_ca": result.group_ca,
            "outsider_refusal": result.outsider_refusal,
        }
        click.echo(json.dumps(outcome, indent=2))
        return
    for line in result.lines.values():
        click.echo(line)


COMMANDS: list[click.Command] = [demo]
