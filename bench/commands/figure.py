"""``bench figure``: qualitative figures of a run directory (``bench figure ablation RUN``)."""
from __future__ import annotations

from pathlib import Path

import click


@click.group()
def figure():
    """Qualitative figures of a run (see `bench figure ablation --help`)."""


@figure.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--methods", help="Comma-separated methods or variants, in column order (default: the variants of "
                                "the run's last `bench sweep`, else every method).")
@click.option("--instances", "count", type=click.IntRange(min=1), default=4, show_default=True,
              help="Rows: the first N instances every method finished.")
@click.option("--ids", help="Comma-separated instance ids instead of --instances.")
@click.option("--azimuth", type=float, default=90.0, show_default=True,
              help="Azimuth (degrees) of the novel view, at the canonical orientation of the FID views.")
@click.option("--size", type=click.IntRange(min=16), default=128, show_default=True, help="Novel-view size (px).")
@click.option("--out", type=click.Path(path_type=Path), help="Output PNG (default RUN/report/ablation.png; PDF beside).")
def ablation(run, methods, count, ids, azimuth, size, out):
    """The texture-loss ablation grid (supplement Fig. 2) of RUN, or any methods side by side: rows
    instances; columns input | each method's input-view render | each method's novel view."""
    from bench.errors import UserError
    from bench.store import RunDir
    from bench.views.grid import ablation_figure, common_instances, default_methods

    rd = RunDir(run)
    if not rd.exists():
        raise UserError(f"run directory {run} does not exist (or has no manifest)")
    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else default_methods(rd)
    unknown = [m for m in chosen if not rd.records(m)]
    if unknown:
        raise UserError(f"--methods: no records of {', '.join(unknown)} in {run} (methods: {', '.join(rd.methods())})")
    rows = common_instances(rd, chosen, count, [i.strip() for i in ids.split(",")] if ids else None)
    paths = ablation_figure(rd, chosen, rows, out or rd.report_dir / "ablation.png", azimuth=azimuth, size=size)
    click.echo("written: " + ", ".join(str(p) for p in paths))
