"""``bench report``: the comparison table (terminal, Markdown, LaTeX, CSV), plots and protocol summary."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default RUN/report of the first run).")
def report(runs, out):
    """Summarise one or more run directories into one table."""
    from bench.errors import UserError
    from bench.report import build_report, print_report

    for r in runs:
        if not r.exists():
            raise UserError(f"run directory {r} does not exist")
    print_report(build_report(list(runs), out))
