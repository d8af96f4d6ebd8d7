import click


@click.group()
def attest() -> None:
    """TODO."""
