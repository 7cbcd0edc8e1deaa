"""The sweep table of a report: one row per swept value (combination), in the layout of the
supplement's Tab. 2 — the swept fields, then IoU, FID_1, FID_10, FID_12, KID and latency — with
reference rows of the same values beside them, and a plot of each metric against the value.

It reads what ``bench sweep`` recorded in the manifest (``sweeps``) and the report's numeric table;
nothing here recomputes a statistic.
"""
from __future__ import annotations

import math

from bench.reporting import reference as ref
from bench.reporting.tables import MISSING, fmt, fmt_ci

#: Tab. 2's column order; other shown quantities follow.
LEAD = ("iou", "fid1", "fid10", "fid12", "kid1", "kid10", "kid12", "latency")


def swept(runs) -> list[tuple[object, int, dict]]:
    """``(run, sweep number, sweep)`` for every sweep recorded in the runs' manifests (1-based numbers)."""
    return [(run, i + 1, s) for run in runs for i, s in enumerate(run.manifest.get("sweeps") or [])]


def metric_columns(table, quantities) -> list[tuple[str, bool]]:
    """``(name, per_instance)`` of the metrics a sweep table shows, Tab. 2's first."""
    per_instance = [q.name for q in quantities if q.shown and f"{q.name}_mean" in table]
    corpus = [c for c in table.columns if c not in _NON_METRIC and not c.endswith(("_mean", "_ci_low", "_ci_high",
                                                                                       "_median"))]
    names = list(dict.fromkeys([n for n in LEAD if n in per_instance or n in corpus] + per_instance + corpus))
    return [(n, n in per_instance) for n in names]


_NON_METRIC = {"run", "run_id", "dataset", "method", "n", "failed"}


def sweep_frame(runs, table, quantities):
    """The numeric sweep table (``sweep.csv``): per run, sweep and variant with records, the swept fields'
    values, n, failed and the metric columns of the report's table (``<q>_mean``/``_ci_low``/``_ci_high``
    for per-instance quantities, the value for corpus metrics)."""
    import pandas as pd

    cols = metric_columns(table, quantities)
    rows = []
    for run, number, sweep in swept(runs):
        mine = table[table["run"] == run.label].set_index("method")
        for spec, assignment in sweep["variants"].items():
            if spec not in mine.index:
                continue  # not run yet (or only its shard elsewhere)
            t = mine.loc[spec]
            row = {"run": run.label, "sweep": number, "method": spec.split("@", 1)[0], "variant": spec,
                   **assignment, "n": int(t["n"]), "failed": int(t["failed"])}
            for name, per_instance in cols:
                keys = [f"{name}_mean", f"{name}_ci_low", f"{name}_ci_high"] if per_instance else [name]
                row.update({k: t[k] for k in keys if k in t.index})
            rows.append(row)
    return pd.DataFrame(rows)


def fields_of(runs) -> list[str]:
    return list(dict.fromkeys(p["field"] for _, _, s in swept(runs) for p in s["params"]))


def display_frame(frame, runs, quantities, table, doc: dict | None, several: bool):
    """Strings for people, one row per value: the fields, method, n, ``mean [CI]`` / values; with ``doc``
    each row is followed by the reference rows of the same values (labelled ``[paper] …``, never pooled)."""
    import pandas as pd

    fields = fields_of(runs)
    cols = metric_columns(table, quantities)
    labels = {q.name: q.axis_label for q in quantities}
    rows = []
    for _, r in frame.iterrows():
        row = {"run": r["run"]} if several else {}
        row.update({f: _value(r.get(f)) for f in fields})
        row.update({"method": r["method"], "n": str(r["n"]), "failed": str(r["failed"])})
        for name, per_instance in cols:
            head = labels.get(name, name)
            row[head] = (fmt_ci(r.get(f"{name}_mean"), r.get(f"{name}_ci_low"), r.get(f"{name}_ci_high"))
                         if per_instance else fmt(r.get(name)))
        rows.append(row)
        assignment = {f: (r[f].item() if hasattr(r[f], "item") else r[f]) for f in fields
                      if f in r.index and _value(r[f]) != MISSING}
        for match in (ref.sweep_matches(doc, assignment) if doc else []):
            extra = {"run": ""} if several else {}
            extra.update({f: _value(match["sweep"].get(f)) for f in fields})
            extra.update({"method": f"[{doc['name']}] {match['method']}", "n": "", "failed": ""})
            for name, per_instance in cols:
                extra[labels.get(name, name)] = (ref.shown(match["values"][name]) if name in match["values"]
                                                 else "")
            rows.append(extra)
    return pd.DataFrame(rows)


def _value(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    return str(v)
