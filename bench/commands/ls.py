"""``bench ls``: list methods, datasets and metrics, one line each (imports no torch for the built-ins;
a third-party entry is imported to read its ``summary``, and with it whatever its module imports)."""
from __future__ import annotations

import click

from bench import registry


@click.command()
@click.argument("kind", required=False, type=click.Choice(registry.KINDS))
def ls(kind):
    """List registered methods, datasets and metrics."""
    for k in [kind] if kind else registry.KINDS:
        click.echo(f"{k}:")
        table = registry.entries(k)
        width = max([12, *map(len, table)])  # a plugin's longer name keeps the summaries aligned
        for name, entry in table.items():
            src = "" if entry.source == "built-in" else f" [{entry.source}]"
            level = f"[{entry.level}] " if k == "metrics" else ""
            click.echo(f"  {name:<{width}} {level}{entry.summary}{src}")
