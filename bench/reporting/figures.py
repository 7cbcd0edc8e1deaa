"""Figures fit for a paper (matplotlib; PNG and PDF of each).

* :func:`quantity_figure` — one quantity per figure, one panel per dataset: every instance as a
  jittered dot per (run, method), the mean with its 95 % bootstrap CI as a black error bar, n in each
  tick label and the legend; the y axis starts at 0 for IoU, latency and errors (IoU ends at 1)
  unless ``zoom``.
* :func:`paired_figure` — instance-wise A vs B of one quantity on the instances both finished, with
  the diagonal y = x (points above it: the y method higher), square axes fitted to the data.

Warnings (protocol differences) go into every figure's title.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bench.reporting.frames import is_number
from bench.reporting.stats import common_pairs, group_name, group_values, several_runs

FORMATS = ("png", "pdf")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    from bench.store import atomic_write_bytes

    import io

    paths = []
    for ext in FORMATS:
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight")
        path = out_dir / f"{stem}.{ext}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def _title(text: str, warnings: list[str]) -> str:
    return text + "".join(f"\n{w}" for w in warnings)


def quantity_figure(frame, stats, quantity, out_dir: Path, warnings: list[str], zoom: bool = False,
                    seed: int = 0) -> list[Path]:
    """The per-instance distribution of ``quantity`` per (run, method), one panel per dataset."""
    plt = _pyplot()
    ok = frame[(frame.status == "ok") & frame[quantity.column].notna()] if quantity.column in frame else frame.iloc[:0]
    if ok.empty:
        return []
    datasets = list(dict.fromkeys(ok["dataset"]))
    several = several_runs(frame)  # labels as in the tables, even if one run has this value
    groups_per = {d: list(ok[ok.dataset == d].groupby(["run_key", "run", "method"], sort=False).groups)
                  for d in datasets}
    width = max(3.5, 1.3 * sum(len(g) for g in groups_per.values())) + 2.8  # + the legend on the right
    fig, axes = plt.subplots(1, len(datasets), figsize=(width, 4.2), squeeze=False)
    rng = np.random.default_rng(seed)
    colour = 0  # one colour per (run, method) across panels
    for ax, dataset in zip(axes[0], datasets):
        names = []
        for x, (key, run, method) in enumerate(groups_per[dataset]):
            values = ok[(ok.run_key == key) & (ok.method == method)][quantity.column].to_numpy(float)
            name = group_name(run, method, several)
            names.append(f"{name}\n(n={len(values)})")
            ax.scatter(x + rng.uniform(-0.18, 0.18, len(values)), values, s=14, alpha=0.55, color=f"C{colour % 10}",
                       label=f"{name}: instances (n={len(values)})", zorder=2)
            colour += 1
            s = stats[(stats.run_key == key) & (stats.method == method) & (stats.quantity == quantity.name)]
            if not s.empty:
                mean, low, high = (float(s.iloc[0][k]) for k in ("mean", "ci_low", "ci_high"))
                err = None if not (math.isfinite(low) and math.isfinite(high)) else [[mean - low], [high - mean]]
                ax.errorbar([x + 0.32], [mean], yerr=err, fmt="D", color="black", markersize=5, capsize=4,
                            zorder=3, label="mean with 95% bootstrap CI" if x == 0 else None)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_xlabel("method (one dot per instance)")
        ax.set_ylabel(quantity.axis_label)
        ax.set_title(f"dataset: {dataset}", fontsize=9)
        if quantity.from_zero and not zoom:
            top = 1.0 if quantity.name == "iou" else None
            ax.set_ylim(bottom=0, top=top if top is not None else max(ax.get_ylim()[1], 0) * 1.05 or 1)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = {}, []
    for ax in axes[0]:  # one legend for every panel, outside the axes: never over the data
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    labels.sort(key=lambda lab: lab.startswith("mean"))  # the mean marker last
    axes[0][-1].legend([handles[lab] for lab in labels], labels, fontsize=7, loc="upper left",
                       bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(_title(f"{quantity.axis_label} per instance", warnings), fontsize=10)
    fig.tight_layout()
    paths = _save(fig, out_dir, quantity.name)
    plt.close(fig)
    return paths


def paired_figure(frame, quantity, a: tuple[int, str, str], b: tuple[int, str, str], out_dir: Path,
                  warnings: list[str], name_a: str, name_b: str, stem: str) -> list[Path]:
    """Scatter of ``quantity`` per common instance: x = group ``a`` (run_key, run, method), y = ``b``."""
    plt = _pyplot()
    both = common_pairs(*(group_values(frame, g[0], g[2], quantity.column) for g in (a, b)))
    if both.empty:
        return []
    fig, ax = plt.subplots(figsize=(4.6, 4.6))
    # the data's range, square, with a margin: instance-wise differences are what this plot is for
    lo, hi = float(np.nanmin(both.to_numpy())), float(np.nanmax(both.to_numpy()))
    pad = max(hi - lo, abs(hi) * 1e-3, 1e-12) * 0.08
    lo, hi = lo - pad, hi + pad
    if quantity.from_zero:
        lo = max(lo, 0.0)
    if quantity.name == "iou":
        hi = min(hi, 1.0)
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1, label="y = x (equal)")
    ax.scatter(both["a"], both["b"], s=16, alpha=0.7, label=f"instances (n={len(both)})")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel(f"{name_a}: {quantity.axis_label}")
    ax.set_ylabel(f"{name_b}: {quantity.axis_label}")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title(_title(f"{quantity.name}: {name_b} vs {name_a}, per instance", warnings), fontsize=9)
    fig.tight_layout()
    paths = _save(fig, out_dir, stem)
    plt.close(fig)
    return paths


def sweep_figure(frame, runs, quantities, table, doc: dict | None, out_dir: Path) -> list[Path]:
    """``sweep.png``/``.pdf``: one panel per metric against the first swept field (one line per
    combination of the other fields), 95 % CI error bars for per-instance quantities, reference values
    as hollow markers."""
    from bench.reporting.sweep import fields_of, metric_columns

    if frame.empty:
        return []
    plt = _pyplot()
    fields = fields_of(runs)
    x_field, others = fields[0], fields[1:]
    cols = [(n, p) for n, p in metric_columns(table, quantities) if frame.get(f"{n}_mean" if p else n) is not None
            and frame[f"{n}_mean" if p else n].notna().any()]
    if not cols:
        return []
    labels = {q.name: q.axis_label for q in quantities}
    width = min(4, len(cols))
    height = math.ceil(len(cols) / width)
    fig, axes = plt.subplots(height, width, figsize=(3.6 * width, 3.0 * height), squeeze=False)
    numeric_x = all(is_number(v) for v in frame[x_field].dropna())
    xs_all = sorted(set(frame[x_field].dropna())) if numeric_x else list(dict.fromkeys(frame[x_field]))
    position = (lambda v: v) if numeric_x else (lambda v: xs_all.index(v))
    log_x = numeric_x and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 20
    groups = frame.groupby([f for f in ["run", "method", *others] if f in frame], sort=False, dropna=False)
    for k, (name, per_instance) in enumerate(cols):
        ax = axes[k // width][k % width]
        for key, g in groups:
            g = g.sort_values(x_field, key=(None if numeric_x else (lambda s: s.map(xs_all.index))))
            x = [position(v) for v in g[x_field]]
            label = " ".join(str(p) for p in (key if isinstance(key, tuple) else (key,)))
            if per_instance:
                mean = g[f"{name}_mean"].astype(float)
                low = (mean - g[f"{name}_ci_low"].astype(float)).clip(lower=0)
                high = (g[f"{name}_ci_high"].astype(float) - mean).clip(lower=0)
                ax.errorbar(x, mean, yerr=[low.fillna(0), high.fillna(0)], marker="o", capsize=3, label=label,
                            linestyle="-" if numeric_x else "none")  # no line between unordered categories
            else:
                ax.plot(x, g[name].astype(float), marker="o", label=label, linestyle="-" if numeric_x else "none")
        if doc:
            pts = [(m["sweep"][x_field], m["values"].get(name)) for m in doc["rows"]
                   if set((m.get("sweep") or {})) == {x_field} and m["values"].get(name) is not None]
            if pts:
                ax.plot([position(p[0]) for p in pts], [p[1] for p in pts], linestyle="none", marker="s",
                        markerfacecolor="none", color="black", label=f"[{doc['name']}]")
        if log_x:
            ax.set_xscale("log")
        if not numeric_x:
            ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all], rotation=30, ha="right")
        ax.set_xlabel(x_field)
        ax.set_ylabel(labels.get(name, name) + (" (mean, 95% CI)" if per_instance else ""))
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7)
    for k in range(len(cols), width * height):
        axes[k // width][k % width].axis("off")
    n = sorted(set(int(v) for v in frame["n"]))
    fig.suptitle(f"bench sweep: metrics against {x_field} (n = {', '.join(map(str, n))} instances per value)")
    fig.tight_layout()
    paths = _save(fig, out_dir, "sweep")
    plt.close(fig)
    return paths
