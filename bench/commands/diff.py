"""``bench diff RUN_A RUN_B``: protocol and environment differences, per-metric deltas with CIs on the
common instances, and the instances that changed most."""
from __future__ import annotations

from pathlib import Path

import click

from bench.reporting.stats import RESAMPLES, SEED


@click.command()
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option("--metric", default="iou", show_default=True, help="Per-instance value that ranks the changed instances.")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many most-changed instances to list.")
@click.option("--resamples", type=click.IntRange(min=0), default=RESAMPLES, show_default=True,
              help="Bootstrap resamples of each 95% confidence interval (0: no intervals).")
@click.option("--seed", type=int, default=SEED, show_default=True, help="Seed of the bootstrap resampling.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write everything as strict JSON to this file.")
def diff(run_a, run_b, metric, top, resamples, seed, json_path):
    """Compare two runs: what differs in their protocol, and what it changed in the numbers (B − A)."""
    from bench.errors import UserError
    from bench.reporting.diff import diff_runs, print_diff

    for r in (run_a, run_b):
        if not r.exists():
            raise UserError(f"run directory {r} does not exist")
    result = diff_runs(run_a, run_b, metric, top, resamples=resamples, seed=seed)
    if json_path is not None:
        from bench.reporting.tables import table_json
        from bench.store import atomic_write_json

        atomic_write_json(json_path, {
            "a": result["runs"][0].describe(), "b": result["runs"][1].describe(),
            "protocol": result["protocol"], "environment": result["environment"], "metric": metric,
            "methods_only_in": result["methods_only_in"], "deltas": table_json(result["deltas"]),
            "top": table_json(result["top"])}, sort_keys=False)
    print_diff(result)
