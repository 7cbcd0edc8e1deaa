"""``bench report``: read the runs, compute the statistics, write every output (data first).

Written into the report folder (default ``RUN/report`` of the first run):

* ``table.csv`` / ``table.json`` — one row per (run, method): n, failed, per quantity
  ``<q>_mean``, ``<q>_ci_low``, ``<q>_ci_high``, ``<q>_median``, the corpus metrics (FID, KID,
  ``<col>_ci_low/high`` where bootstrapped), run label, run id, dataset;
* ``stats.csv`` — the same statistics in long form (one row per run, method, quantity; with std);
* ``comparisons.csv`` — the paired comparisons (every pair, or each against ``--baseline``);
* ``variants.csv`` — the config fields each variant (and each method across runs) changed;
* ``instances.csv`` (and ``instances.parquet`` with pyarrow) — every per-instance value with the
  instance's source file, status and error;
* ``table.md`` / ``table.tex`` — the display table (mean [95 % CI]), comparisons, changes, warnings;
* ``protocol.txt``, ``report.json`` (strict JSON: runs, warnings, changes, the tables);
* ``<quantity>.png|pdf`` and ``paired-<quantity>-<A>-vs-<B>.png|pdf`` figures;
* with ``--reference paper|FILE``: ``reference.csv`` (the paper's numbers, their source and status),
  shown below the measured table and never pooled with it;
* for a run made by ``bench sweep``: ``sweep.csv`` / ``sweep.json`` (one row per swept value, Tab. 2's
  columns), ``sweep.md`` (with the reference rows of the same values beside them) and ``sweep.png|pdf``.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import UserError
from bench.reporting import figures, provenance, stats, sweep, tables
from bench.reporting import reference as ref
from bench.reporting.frames import corpus_metrics, instance_frame, quantities
from bench.reporting.runs import ReportRun, copy_warnings, load_runs, protocol_warnings
from bench.reporting.variants import change_lines, config_changes


@dataclass
class ReportOptions:
    """How a report is computed (``bench report`` flags)."""

    labels: dict[str, str] = field(default_factory=dict)
    baseline: str | None = None
    resamples: int = stats.RESAMPLES
    seed: int = stats.SEED
    zoom: bool = False
    reference: str | None = None


TERMINAL_COLUMNS = 5  # value columns per terminal table


def protocol_lines(runs: list[ReportRun]) -> list[str]:
    """Per run: its label, id, protocol, environment, hardware, method weights and metric protocols."""
    lines = []
    for run in runs:
        m = run.manifest
        env = m.get("environment", {})
        proto = run.protocol()
        lines.append(f"{run.label} (id {run.run_id}): " + ", ".join(f"{k}={v}" for k, v in proto.items() if v is not None)
                     + f"; git={(env.get('git') or '?')[:12]}, torch={env.get('packages', {}).get('torch')}")
        lines.append(f"  hardware: {provenance.hardware_line(run)}")
        ds = m.get("dataset", {})
        if ds.get("generator"):
            lines.append(f"  data generator: {ds['generator']}")
        for name, desc in m.get("methods", {}).items():
            w = ", ".join(f"{k}={v['sha256'][:12]}" for k, v in desc.get("weights", {}).items()) or "none given"
            lab = f" [{', '.join(desc.get('labels', []))}]" if desc.get("labels") else ""
            lines.append(f"  {name}{lab}: weights {w}")
        for name, data in run.metrics.items():
            proto_fields = data.get("protocol") or {}
            if proto_fields:
                lines.append(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in proto_fields.items()))
    return lines


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name)


def compute(run_paths: list[Path], options: ReportOptions | None = None) -> dict:
    """Every table of a report, nothing written: ``{"runs", "frame", "quantities", "stats", "table",
    "display", "comparisons", "changes", "change_lines", "warnings", "protocol", "several", "options",
    "reference", "reference_display", "sweep", "sweep_display"}``."""
    opts = options or ReportOptions()
    runs = load_runs([Path(p) for p in run_paths], opts.labels)
    frame = instance_frame(runs)
    if frame.empty:
        raise UserError(f"no records in {', '.join(str(r.root) for r in runs)}; run `bench run --out RUN ...` "
                        "first (nothing to report)")
    if opts.baseline is not None and stats.missing_baseline(frame, opts.baseline):
        raise UserError(f"--baseline {opts.baseline}: no such method in the report (methods: "
                        f"{', '.join(dict.fromkeys(frame['method']))})")
    qs = quantities(frame)
    st = stats.metric_stats(frame, qs, opts.resamples, seed=opts.seed)
    corpus = {(r.key, m): v for r in runs for m, v in corpus_metrics(r).items()}
    table = tables.summary_table(st, corpus, runs, qs)
    corpus_names = list(dict.fromkeys(c for v in corpus.values() for c in v if not c.endswith(("_ci_low", "_ci_high"))))
    several = stats.several_runs(frame)
    labels = {(r, m): ", ".join(sorted({lab for s in g["labels"] for lab in s.split(",") if lab}))
              for (r, m), g in frame.groupby(["run", "method"], sort=False)}
    comp = stats.comparisons(frame, [q for q in qs if not q.name.startswith("optimize")], opts.baseline,
                             opts.resamples, seed=opts.seed)
    changes = config_changes(runs)
    warnings = (protocol_warnings(runs) + copy_warnings(runs) + provenance.timing_warnings(runs, frame)
                + (stats.small_sample_notes(st) if opts.resamples else []))
    doc = ref.load_reference(opts.reference) if opts.reference else None
    sweep_table = sweep.sweep_frame(runs, table, qs)
    return {"runs": runs, "frame": frame, "several": several, "quantities": qs, "stats": st, "table": table,
            "display": tables.display_table(table, qs, corpus_names, several, labels), "comparisons": comp,
            "changes": changes, "change_lines": change_lines(changes, several), "warnings": warnings,
            "protocol": protocol_lines(runs), "options": opts, "reference": doc,
            "reference_display": ref.display_frame(doc) if doc else None, "sweep": sweep_table,
            "sweep_display": sweep.display_frame(sweep_table, runs, qs, table, doc, several)
            if not sweep_table.empty else None}


def build_report(run_paths: list[Path], out_dir: Path | None = None, options: ReportOptions | None = None) -> dict:
    """Compute the report of ``run_paths`` and write it into ``out_dir``; returns :func:`compute`'s
    dict with ``out_dir`` and ``files`` added."""
    import pandas as pd

    from bench.store import atomic_write_bytes, atomic_write_json

    result = compute(run_paths, options)
    runs, opts = result["runs"], result["options"]
    out_dir = Path(out_dir) if out_dir else runs[0].run.report_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    warnings, comp = result["warnings"], result["comparisons"]
    files = []

    def write(name: str, data: bytes) -> None:
        atomic_write_bytes(out_dir / name, data)
        files.append(out_dir / name)

    table = result["table"] if result["several"] else result["table"].drop(columns=["run"])
    write("table.csv", table.to_csv(index=False).encode())
    write("stats.csv", result["stats"].drop(columns=["run_key"]).to_csv(index=False).encode())
    write("comparisons.csv", comp.to_csv(index=False).encode())
    write("variants.csv", pd.DataFrame(result["changes"], columns=["run", "method", "base", "field", "base_value",
                                                                   "value"]).to_csv(index=False).encode())
    write("instances.csv", result["frame"].drop(columns=["run_key"]).to_csv(index=False).encode())
    if importlib.util.find_spec("pyarrow") is not None:  # Parquet beside the CSV when pyarrow is installed
        import io

        buf = io.BytesIO()
        result["frame"].drop(columns=["run_key"]).to_parquet(buf, index=False)
        write("instances.parquet", buf.getvalue())
    write("table.md", markdown(result).encode())
    write("table.tex", tables.to_latex(result["display"], warnings).encode())
    write("protocol.txt", ("\n".join(warnings + result["protocol"]) + "\n").encode())
    doc = {"runs": [r.describe() for r in runs],
           "warnings": warnings, "changes": result["changes"], "protocol": result["protocol"],
           "statistics": {"ci": f"{int(stats.LEVEL * 100)}% bootstrap (scipy.stats.bootstrap, BCa) over instances",
                          "resamples": opts.resamples, "seed": opts.seed, "paired_test": "Wilcoxon signed-rank"},
           "table": tables.table_json(table), "stats": tables.table_json(result["stats"].drop(columns=["run_key"])),
           "comparisons": tables.table_json(comp)}
    if result["reference"] is not None:
        reference = ref.reference_frame(result["reference"])
        write("reference.csv", reference.to_csv(index=False).encode())
        doc["reference"] = {"name": result["reference"]["name"], "title": result["reference"].get("title"),
                            "rows": tables.table_json(reference)}
    if result["sweep_display"] is not None:
        write("sweep.csv", result["sweep"].to_csv(index=False).encode())
        write("sweep.md", sweep_markdown(result).encode())
        doc["sweep"] = tables.table_json(result["sweep"])
        atomic_write_json(out_dir / "sweep.json", doc["sweep"], sort_keys=False)
        files.append(out_dir / "sweep.json")
    for name, obj in (("table.json", tables.table_json(table)), ("report.json", doc)):
        atomic_write_json(out_dir / name, obj, sort_keys=False)
        files.append(out_dir / name)
    files += write_figures(result, out_dir)
    if result["sweep_display"] is not None:
        files += figures.sweep_figure(result["sweep"], runs, result["quantities"], result["table"],
                                      result["reference"], out_dir)
    return {**result, "out_dir": out_dir, "files": files}


def write_figures(result: dict, out_dir: Path) -> list[Path]:
    """A figure per quantity, and a paired figure of the first quantity (IoU) per compared pair."""
    frame, st, warnings, opts = result["frame"], result["stats"], result["warnings"], result["options"]
    plot_warnings = [w for w in warnings if w.startswith("WARNING: runs differ")]
    paths = []
    for q in result["quantities"]:
        paths += figures.quantity_figure(frame, st, q, out_dir, plot_warnings, zoom=opts.zoom, seed=opts.seed)
    comp = result["comparisons"]
    if not result["quantities"] or comp.empty:
        return paths
    groups = {stats.group_name(r, m, result["several"]): (k, r, m)
              for (k, r, m) in frame.groupby(["run_key", "run", "method"], sort=False).groups}
    q = result["quantities"][0]
    for _, c in comp[comp.quantity == q.name].iterrows():
        stem = f"paired-{q.name}-{_safe(c['a'])}-vs-{_safe(c['b'])}"
        paths += figures.paired_figure(frame, q, groups[c["b"]], groups[c["a"]], out_dir, plot_warnings,
                                       c["b"], c["a"], stem)
    return paths


def markdown(result: dict) -> str:
    """table.md: warnings, the display table, comparisons, what variants changed, protocol."""
    parts = [f"> **{w}**\n" for w in result["warnings"]]
    parts.append(tables.to_markdown(result["display"]))
    parts.append(f"\nMeans with {int(stats.LEVEL * 100)} % bootstrap CI over instances "
                 f"({result['options'].resamples} resamples, seed {result['options'].seed}).\n")
    if result["reference"] is not None:
        parts.append(f"\n{reference_title(result)}\n\n" + tables.to_markdown(result["reference_display"]))
    if result["sweep_display"] is not None:
        parts.append("\n" + sweep_markdown(result))
    for q in result["quantities"]:
        t = tables.comparison_table(result["comparisons"], q.name, result["options"].baseline)
        if not t.empty:
            parts.append(f"\n**{q.axis_label}: A − B** (paired, common instances; Wilcoxon signed-rank p)\n\n"
                         + tables.to_markdown(t))
    if result["change_lines"]:
        parts.append("\nWhat each variant changed:\n\n" + "".join(f"* {line}\n" for line in result["change_lines"]))
    parts.append("\nProtocol:\n\n" + "".join(f"    {line}\n" for line in result["protocol"]))
    return "".join(parts)


def reference_title(result: dict) -> str:
    doc = result["reference"]
    return (f"Reference rows [{doc['name']}]: {doc.get('title') or ''} — reported there, not measured here, "
            "never pooled with the rows above")


def sweep_markdown(result: dict) -> str:
    """sweep.md: the sweep table (Tab. 2's layout) with reference rows beside the swept values."""
    fields = ", ".join(sweep.fields_of(result["runs"]))
    note = (f" Rows `[{result['reference']['name']}]` are the reference's numbers for the same value."
            if result["reference"] is not None else "")
    return (f"**Sweep over {fields}** (one row per value; means with {int(stats.LEVEL * 100)} % bootstrap CI)."
            f"{note}\n\n" + tables.to_markdown(result["sweep_display"]))


def print_report(result: dict) -> None:
    """The report on the terminal (rich): table, IoU comparisons, changes, warnings, protocol."""
    import sys

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console() if sys.stdout.isatty() else Console(width=200)

    def show(df, title: str) -> None:
        table = Table(title=Text(title, style="italic"))  # Text: "[paper]" is not markup
        for col in df.columns:
            text_col = col in ("run", "method", "labels") or col.endswith(": A") or col in {q.name for q in result["quantities"]}
            table.add_column(Text(str(col)), justify="left" if text_col else "right", no_wrap=col != "labels")
        for row in df.itertuples(index=False):
            table.add_row(*[Text(tables.fmt(v)) for v in row])  # Text: "[s]", "[0.8, 0.9]" are not markup
        console.print(table)

    for w in result["warnings"]:
        console.print(Text(w, style="bold red" if w.startswith("WARNING") else "yellow"))
    display = result["display"]
    keys = [c for c in display.columns if c in ("run", "method", "n", "failed")]
    values = [c for c in display.columns if c not in keys]
    for start in range(0, len(values), TERMINAL_COLUMNS):  # wide tables in chunks that fit a terminal
        show(display[keys + values[start:start + TERMINAL_COLUMNS]],
             f"meshbench comparison (mean [{int(stats.LEVEL * 100)}% bootstrap CI])" if start == 0 else "")
    if result["reference"] is not None:
        ref_display = result["reference_display"]
        ref_values = [c for c in ref_display.columns if c != "reference"]
        for start in range(0, len(ref_values), TERMINAL_COLUMNS):
            show(ref_display[["reference"] + ref_values[start:start + TERMINAL_COLUMNS]],
                 reference_title(result) if start == 0 else "")
    if result["sweep_display"] is not None:
        show(result["sweep_display"], f"Sweep over {', '.join(sweep.fields_of(result['runs']))}")
    for q in result["quantities"][:1]:
        t = tables.comparison_table(result["comparisons"], q.name, result["options"].baseline)
        if not t.empty:
            show(t, f"{q.axis_label}: A − B on common instances (paired; Wilcoxon p)")
    if result["change_lines"]:
        console.print("[bold]What each variant changed[/bold]")
        for line in result["change_lines"]:
            console.print(Text("  " + line))
    console.print("[bold]Protocol[/bold]")
    for line in result["protocol"]:
        console.print(Text("  " + line))
    if "out_dir" in result:
        console.print(f"written: {result['out_dir']}/ " + ", ".join(p.name for p in result["files"]))
