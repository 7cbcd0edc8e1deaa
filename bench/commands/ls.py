"""``bench ls``: list methods, datasets and metrics, one line each (imports no torch)."""
from __future__ import annotations

import click

from bench import registry


@click.command()
@click.argument("kind", required=False, type=click.Choice(registry.KINDS))
def ls(kind):
    """List registered methods, datasets and metrics."""
    for k in [kind] if kind else registry.KINDS:
        click.echo(f"{k}:")
        for name, entry in registry.entries(k).items():
            src = "" if entry.source == "built-in" else f" [{entry.source}]"
            level = f"[{entry.level}] " if k == "metrics" else ""
            click.echo(f"  {name:<12} {level}{entry.summary}{src}")
