"""``bench report``: the comparison table with confidence intervals, paired comparisons, what each
variant changed, provenance warnings, reference rows of a paper, the sweep table of a ``bench sweep`` run,
figures (terminal, Markdown, LaTeX, CSV/JSON, PNG/PDF)."""
from __future__ import annotations

from pathlib import Path

import click

from bench.reporting.stats import RESAMPLES, SEED


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default RUN/report of the first run).")
@click.option("--label", "labels", multiple=True, metavar="RUN=NAME",
              help="Short name of a run in tables and plots (repeatable; default its folder name, made unique).")
@click.option("--baseline", metavar="METHOD",
              help="Compare every method against this one (METHOD, or LABEL/METHOD across runs) instead of every pair.")
@click.option("--resamples", type=click.IntRange(min=0), default=RESAMPLES, show_default=True,
              help="Bootstrap resamples of each 95% confidence interval (0: no intervals).")
@click.option("--seed", type=int, default=SEED, show_default=True, help="Seed of the bootstrap resampling.")
@click.option("--zoom", is_flag=True, help="Let plot axes fit the data instead of starting IoU and latency at 0.")
@click.option("--reference", metavar="paper|FILE",
              help="Show a paper's numbers as labelled rows below the measured ones (`paper`: MeshInversion's; "
                   "FILE: a YAML of the same schema). Never pooled with measured rows.")
def report(runs, out, labels, baseline, resamples, seed, zoom, reference):
    """Summarise one or more run directories: one row per (run, method), never merged."""
    from bench.errors import UserError
    from bench.reporting import ReportOptions, build_report, print_report
    from bench.reporting.runs import parse_labels

    for r in runs:
        if not r.exists():
            raise UserError(f"run directory {r} does not exist")
    opts = ReportOptions(labels=parse_labels(labels), baseline=baseline, resamples=resamples, seed=seed, zoom=zoom,
                         reference=reference)
    print_report(build_report(list(runs), out, opts))
