import click


@click.group()
def util() -> None:
    """TODO."""
