"""``bench diff RUN_A RUN_B``: what differs between two runs and what it did to the numbers.

* **protocol** — every manifest field that differs (dataset, seed, profile, limit, each method's
  config, weights and labels, metric protocols), as ``field: A → B``;
* **environment** — git commit, package versions, device and hardware that differ;
* **deltas** — per method in both runs and per quantity: mean(B − A) on the instances both
  finished, its 95 % bootstrap CI and the Wilcoxon signed-rank p (:func:`bench.reporting.stats.paired`);
* **top** — the instances whose value changed most (``|B − A|``, top k), ids as ``bench gallery`` takes them.
"""
from __future__ import annotations

from pathlib import Path

from bench.manifest import changed_fields, lookup
from bench.reporting import stats
from bench.reporting.frames import instance_frame, quantities
from bench.reporting.runs import load_runs

VOLATILE = ("run_id", "created", "command", "environment", "resumed")


def _field_changes(a: dict, b: dict) -> list[dict]:
    return [{"field": f, "a": lookup(a, f), "b": lookup(b, f)} for f in changed_fields(a, b)]


def diff_runs(path_a: Path, path_b: Path, metric: str = "iou", top: int = 10, labels: dict | None = None,
              resamples: int = stats.RESAMPLES, seed: int = stats.SEED) -> dict:
    """``{"runs", "protocol", "environment", "deltas" (DataFrame), "top" (DataFrame), "metric"}``."""
    import pandas as pd

    from bench.errors import UserError

    runs = load_runs([Path(path_a), Path(path_b)], labels)
    a, b = runs
    ma = {k: v for k, v in a.manifest.items() if k not in VOLATILE}
    mb = {k: v for k, v in b.manifest.items() if k not in VOLATILE}
    protocol = _field_changes(ma, mb)
    environment = _field_changes(a.manifest.get("environment") or {}, b.manifest.get("environment") or {})
    frame = instance_frame(runs)
    if frame.empty:
        raise UserError(f"no records in {a.root} or {b.root}; nothing to compare")
    qs = quantities(frame)
    names = [q.name for q in qs]
    if metric not in names:
        raise UserError(f"--metric {metric}: not a per-instance value of these runs (have: {', '.join(names)})")
    common = [m for m in dict.fromkeys(frame[frame.run_key == 0]["method"]) if m in set(frame[frame.run_key == 1]["method"])]
    rows, changed = [], []
    for method in common:
        for q in qs:
            sa, sb = (stats.group_values(frame, r.key, method, q.column) for r in runs)
            res = stats.paired(sb, sa, resamples, seed=seed)  # B − A: B is paired's first side
            if res["n"]:
                rows.append({"method": method, "quantity": q.name, "unit": q.unit, "n": res["n"],
                             "mean_a": res["mean_b"], "mean_b": res["mean_a"], "diff": res["diff"],
                             "ci_low": res["ci_low"], "ci_high": res["ci_high"], "p_value": res["p_value"]})
            if q.name == metric:
                both = stats.common_pairs(sa, sb)
                both["diff"] = both["b"] - both["a"]
                both["method"] = method
                changed.append(both.reset_index())
    top_frame = pd.concat(changed) if changed else pd.DataFrame(columns=["instance", "a", "b", "diff", "method"])
    if not top_frame.empty:
        top_frame = top_frame.reindex(top_frame["diff"].abs().sort_values(ascending=False).index)
        top_frame = top_frame.reset_index(drop=True).head(top)
    return {"runs": runs, "protocol": protocol, "environment": environment, "metric": metric,
            "methods_only_in": {r.label: sorted(set(frame[frame.run_key == r.key]["method"]) - set(common)) for r in runs},
            "deltas": pd.DataFrame(rows), "top": top_frame[["method", "instance", "a", "b", "diff"]]}


def print_diff(result: dict) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from bench.reporting.tables import fmt, signed

    console = Console() if sys.stdout.isatty() else Console(width=200)
    a, b = result["runs"]
    console.print(f"A = {a.label} (id {a.run_id})\nB = {b.label} (id {b.run_id})", highlight=False)

    def changes(title: str, rows: list[dict]) -> None:
        console.print(f"[bold]{title}[/bold]" + ("" if rows else ": none"))
        for r in rows:
            if r["a"] is None and isinstance(r["b"], dict) or r["b"] is None and isinstance(r["a"], dict):
                text = "only in B" if r["a"] is None else "only in A"
            else:
                text = f"{r['a']!r} → {r['b']!r}"
            console.print(f"  {r['field']}: {text}", highlight=False, markup=False)

    changes("Protocol differences (A → B)", result["protocol"])
    changes("Environment differences (A → B)", result["environment"])
    for label, only in result["methods_only_in"].items():
        if only:
            console.print(f"methods only in {label}: {', '.join(only)}", highlight=False)

    def show(df, title: str, cols: list[str]) -> None:
        table = Table(title=title)
        for col in cols:
            table.add_column(col, justify="left" if col in ("method", "quantity", "instance", "unit") else "right")
        for _, row in df.iterrows():
            table.add_row(*[Text(signed(row[c]) if c in ("diff", "ci_low", "ci_high") else fmt(row[c])) for c in cols])
        console.print(table)

    deltas = result["deltas"]
    if not deltas.empty:
        show(deltas, "B − A on common instances (mean, 95% bootstrap CI, Wilcoxon p)",
             ["method", "quantity", "unit", "n", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value"])
    if not result["top"].empty:
        show(result["top"], f"instances whose {result['metric']} changed most (B − A)",
             ["method", "instance", "a", "b", "diff"])

