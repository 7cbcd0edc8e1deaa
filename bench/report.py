"""Comparison tables and plots from run directories (data first: CSV/JSON; pretty second).

One row per (run, method): n, failed, IoU mean/median, latency mean/p95, optimisation time, every
other per-instance metric found in the records (mean), and the corpus-level metrics ``bench eval``
wrote (FID, KID, 3D). Under the table: the protocol each run was made under, so numbers made under
different protocols are never compared without seeing it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from bench.store import RunDir

LATENCY_KEY = "total"
OPT_KEY = "optimize"


def instance_frame(runs: list[RunDir]):
    """One row per (run, method, instance) with status, metrics and timings (pandas DataFrame)."""
    import pandas as pd

    rows = []
    for run in runs:
        listed = list(run.read_manifest().get("methods", {}))
        order = {m: k for k, m in enumerate(listed)}
        for rec in sorted(run.iter_records(), key=lambda r: (order.get(r["method"], len(order)), r["method"])):
            row = {"run": run.root.name, "method": rec["method"], "instance": rec["instance"], "index": rec["index"],
                   "status": rec["status"], "error": rec.get("error"), "batch_size": rec.get("batch_size"),
                   "labels": ",".join(rec.get("labels", []))}
            row.update({f"metric.{k}": v for k, v in (rec.get("metrics") or {}).items() if _is_number(v)})
            row.update({f"time.{k}": v for k, v in (rec.get("timings") or {}).items() if _is_number(v)})
            rows.append(row)
    return pd.DataFrame(rows)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_SKIP = {"n_images", "n_instances", "n_failed", "n_without_gt", "kid_subset_size", "kid_std"}


def corpus_columns(name: str, values: dict) -> dict[str, str]:
    """``{key in the file: report column}`` of corpus metric ``name``: the registry's columns; a metric
    registered without columns contributes every top-level number as ``<name>.<key>``. Per-instance
    metrics (IoU) are summarised from the records instead."""
    from bench import registry

    entry = registry.entries("metrics").get(name)
    if entry is not None and entry.instance_level:
        return {}
    if entry is not None and entry.columns:
        return {c.key: c.name for c in entry.columns}
    return {k: f"{name}.{k}" for k, v in values.items() if _is_number(v) and k not in _SKIP}


def corpus_metrics(run: RunDir) -> dict[str, dict[str, float]]:
    """``{method: {column: value}}`` from the ``{"methods": {method: {...}}}`` files ``bench eval`` wrote."""
    from bench.registry import Column

    out: dict[str, dict[str, float]] = {}
    for name, data in run.read_metrics().items():
        per_method = data.get("methods", {}) if isinstance(data, dict) else {}
        for method, values in per_method.items():
            if not isinstance(values, dict):
                continue
            for key, col in corpus_columns(name, values).items():
                value = Column(key, col).read(values)
                if _is_number(value):
                    out.setdefault(method, {})[col] = float(value)
    return out


def summary_frame(runs: list[RunDir]):
    """One row per (run, method) — the comparison table (pandas DataFrame)."""
    import pandas as pd

    inst = instance_frame(runs)
    rows = []
    if inst.empty:
        return pd.DataFrame(rows)
    for (run_name, method), grp in inst.groupby(["run", "method"], sort=False):
        ok = grp[grp.status == "ok"]
        labels = sorted({lab for s in grp["labels"] for lab in s.split(",") if lab})
        row = {"run": run_name, "method": method, "n": int(len(ok)), "failed": int(len(grp) - len(ok))}
        if "metric.iou" in ok:
            row["iou_mean"] = ok["metric.iou"].mean()
            row["iou_median"] = ok["metric.iou"].median()
        if f"time.{LATENCY_KEY}" in ok:
            t = ok[f"time.{LATENCY_KEY}"].dropna()
            row["latency_mean_s"] = t.mean()
            row["latency_p95_s"] = t.quantile(0.95) if len(t) else math.nan
        if f"time.{OPT_KEY}" in ok:
            row["optimize_mean_s"] = ok[f"time.{OPT_KEY}"].mean()
        for col in sorted(c for c in ok.columns if c.startswith("metric.") and c != "metric.iou"):
            row[col.removeprefix("metric.") + "_mean"] = ok[col].mean()
        run = next(r for r in runs if r.root.name == run_name)
        row.update(corpus_metrics(run).get(method, {}))
        row["labels"] = ", ".join(labels)
        rows.append(row)
    return pd.DataFrame(rows)


def protocol_lines(runs: list[RunDir]) -> list[str]:
    """Human-readable protocol summary per run, plus a warning when runs differ."""
    lines, seen = [], {}
    for run in runs:
        m = run.read_manifest()
        ds = m.get("dataset", {})
        env = m.get("environment", {})
        proto = {"dataset": ds.get("dataset"), "split": ds.get("split"), "mask": ds.get("mask"),
                 "camera": ds.get("camera"), "image_size": ds.get("image_size"), "profile": m.get("profile"),
                 "seed": m.get("seed")}
        seen[run.root.name] = proto
        lines.append(f"{run.root.name}: " + ", ".join(f"{k}={v}" for k, v in proto.items() if v is not None)
                     + f"; device={env.get('device')}, git={(env.get('git') or '?')[:12]}, "
                     f"torch={env.get('packages', {}).get('torch')}")
        if ds.get("generator"):
            lines.append(f"  data generator: {ds['generator']}")
        for name, desc in m.get("methods", {}).items():
            w = ", ".join(f"{k}={v['sha256'][:12]}" for k, v in desc.get("weights", {}).items()) or "none given"
            lab = f" [{', '.join(desc.get('labels', []))}]" if desc.get("labels") else ""
            lines.append(f"  {name}{lab}: weights {w}")
        for name, data in run.read_metrics().items():
            proto_fields = data.get("protocol") or {}
            if proto_fields:
                lines.append(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in proto_fields.items()))
    protos = list(seen.values())
    if len(protos) > 1 and any(p != protos[0] for p in protos[1:]):
        keys = sorted({k for p in protos for k in p if any(q.get(k) != protos[0].get(k) for q in protos)})
        lines.insert(0, f"WARNING: runs differ in protocol ({', '.join(keys)}): numbers are not comparable")
    return lines


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"
    return str(v)


def to_markdown(df) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(df) -> str:
    esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
    cols = list(df.columns)
    lines = [r"\begin{tabular}{" + "l" * 2 + "r" * (len(cols) - 2) + "}", r"\toprule",
             " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(_fmt(v)) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_plots(inst, out_dir: Path) -> list[Path]:
    """IoU distribution and latency per method (matplotlib PNGs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    ok = inst[inst.status == "ok"] if not inst.empty else inst
    if ok.empty:
        return paths
    keys = [(r, m) for (r, m), _ in ok.groupby(["run", "method"], sort=False)]
    label = (lambda r, m: m) if len({r for r, _ in keys}) == 1 else (lambda r, m: f"{r}/{m}")
    for col, title, ylabel, fname in (("metric.iou", "IoU per instance", "IoU", "iou.png"),
                                      (f"time.{LATENCY_KEY}", "latency per instance", "wall time [s]",
                                       "latency.png")):
        if col not in ok:
            continue
        data = [ok[(ok.run == r) & (ok.method == m)][col].dropna().values for r, m in keys]
        fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(keys)), 3.2))
        ax.boxplot(data, showmeans=True)
        for k, d in enumerate(data, start=1):
            ax.scatter([k] * len(d), d, s=10, alpha=0.6)
        ax.set_xticks(range(1, len(keys) + 1), [f"{label(r, m)}\n(n={len(d)})" for (r, m), d in zip(keys, data)],
                      rotation=15)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("method (box: quartiles, triangle: mean, dots: instances)", fontsize=8)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def build_report(run_paths: list[Path], out_dir: Path | None = None) -> dict:
    """Write table.{csv,md,tex}, instances.csv, protocol.txt and plots; return what was made."""
    from bench.store import atomic_write_bytes

    runs = [RunDir(Path(p).resolve()) for p in run_paths]
    for r in runs:
        r.read_manifest()  # one-line error when a path is not a run directory
    inst = instance_frame(runs)
    if inst.empty:
        from bench.errors import UserError

        raise UserError(f"no records in {', '.join(str(r.root) for r in runs)}; run `bench run --out RUN ...` "
                        "first (nothing to report)")
    for r in runs:
        r.read_metrics()  # one-line error naming a damaged metric file, before anything is written
    out_dir = Path(out_dir) if out_dir else runs[0].report_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summary_frame(runs)
    if len(runs) == 1 and not table.empty:
        table = table.drop(columns=["run"])
    protocol = protocol_lines(runs)
    atomic_write_bytes(out_dir / "table.csv", table.to_csv(index=False).encode())
    atomic_write_bytes(out_dir / "instances.csv", inst.to_csv(index=False).encode())
    atomic_write_bytes(out_dir / "table.md", (to_markdown(table) + "\nProtocol:\n\n" +
                                              "\n".join(f"    {line}" for line in protocol) + "\n").encode())
    atomic_write_bytes(out_dir / "table.tex", to_latex(table).encode())
    atomic_write_bytes(out_dir / "protocol.txt", ("\n".join(protocol) + "\n").encode())
    atomic_write_bytes(out_dir / "table.json", json.dumps(json.loads(table.to_json(orient="records")),
                                                          indent=2).encode())
    plots = write_plots(inst, out_dir)
    return {"table": table, "protocol": protocol, "out_dir": out_dir, "plots": plots}


def print_report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    import sys

    console = Console() if sys.stdout.isatty() else Console(width=200)
    df = result["table"]
    table = Table(title="meshbench comparison")
    for col in df.columns:
        text_col = col in ("run", "method", "labels")
        table.add_column(col, justify="left" if text_col else "right", no_wrap=col != "labels")
    for row in df.itertuples(index=False):
        table.add_row(*[_fmt(v) for v in row])
    console.print(table)
    console.print("[bold]Protocol[/bold]")
    for line in result["protocol"]:
        style = "bold red" if line.startswith("WARNING") else None
        console.print(Text(line if style else "  " + line, style=style or ""))
    console.print(f"written: {result['out_dir']}/table.{{md,tex,csv,json}}, instances.csv, "
                  + ", ".join(p.name for p in result["plots"]))
