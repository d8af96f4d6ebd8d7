"""The ``trustflow`` command: one entry point, subcommands added by the core and plugins
through the ``trustflow_add_commands`` hook."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import asdict
from typing import Any

import click

from ..errors import TrustflowError
from ..extras import missing_extra
from ..settings_schema import ConfigError

HELP = """Trustflow: hand encrypted data to TEE applications and release keys only to
attested, authorized apps.

Run 'trustflow plugins' to see the installed plugins and their backends."""


class TrustflowGroup(click.Group):
    """A click group that turns :class:`TrustflowError` into a one-line error and exit code 1
    (``config error: FILE: KEY.PATH: problem`` for a
    :class:`~trustflow_core.settings_schema.ConfigError`, ``Error: ...`` for the others), and
    refuses a plugin command that would shadow an existing one."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        from ..errors import PluginError

        name = name or cmd.name
        if name in self.commands:
            raise PluginError(f"two plugins add a 'trustflow {name}' command")
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:  # one line: config error: <file>: <key path>: <problem>
            click.echo(f"config error: {exc}", err=True)
            ctx.exit(1)
        except TrustflowError as exc:
            raise click.ClickException(str(exc)) from exc


def require_extra(command: click.Command, extra: str, path: str = "trustflow") -> None:
    """Make ``command`` and every command below it refuse to run, with one line naming the
    ``pip install``, while ``extra`` is not installed. ``--help`` is answered before any
    callback runs, so it keeps working."""
    path = f"{path} {command.name}"
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            require_extra(sub, extra, path)
    callback = command.callback
    if callback is None:
        return
    what = f"'{path}'"

    @functools.wraps(callback)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        problem = missing_extra(extra, what)
        if problem:
            raise click.ClickException(problem)
        return callback(*args, **kwargs)

    command.callback = guarded


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def version(as_json: bool) -> None:
    """Print the versions of trustflow-core and every installed plugin distribution."""
    from ..manager import get_plugin_manager

    pm = get_plugin_manager(lenient=True)
    versions = {s.dist: s.version for s in pm.sources.values()}
    if as_json:
        click.echo(json.dumps(versions, indent=2))
        return
    for dist, ver in sorted(versions.items()):
        click.echo(f"{dist} {ver}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--hook", "hook", default=None, help="Only plugins implementing this hook.")
def plugins(as_json: bool, hook: str | None) -> None:
    """List installed plugins: version, hooks, backends and whether each backend can run here."""
    from ..manager import get_plugin_manager
    from ..registry import list_plugins

    infos = list_plugins(get_plugin_manager(lenient=True))
    if hook:
        infos = [i for i in infos if hook in i.hooks]
    if as_json:
        click.echo(json.dumps([asdict(i) for i in infos], indent=2))
        return
    for info in infos:
        click.echo(f"{info.name}  ({info.dist} {info.version})")
        if info.error:
            click.secho(f"    LOAD ERROR: {info.error}", fg="red")
            continue
        click.echo(f"    module: {info.module}")
        if info.hooks:
            click.echo(f"    hooks:  {', '.join(info.hooks)}")
        for b in info.backends:
            state = "usable" if b.viable else f"not usable here: {b.reason}"
            sim = ", simulated" if b.simulated else ""
            click.echo(f"    {b.kind:<12} {b.name:<8} {state}{sim}")


def build_cli() -> click.Group:
    """A new ``trustflow`` group with the core's and every plugin's commands added."""
    from ..manager import get_plugin_manager

    group = TrustflowGroup(name="trustflow", help=HELP)
    group.add_command(version)
    group.add_command(plugins)
    get_plugin_manager().hook.trustflow_add_commands(cli=group)
    return group


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        group = build_cli()
    except TrustflowError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    group.main(args=argv, prog_name="trustflow")
