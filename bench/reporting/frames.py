"""The report's data: one row per (run, method, instance), and the corpus values ``bench eval`` wrote.

Per-instance columns: ``metric.<name>`` for every number a record's ``metrics`` holds (IoU) and for
every per-instance value of a metric file (``per_instance`` of ``shape3d``: named by the metric's
registered column, e.g. ``metric.chamfer_l2``, other keys as ``metric.<metric>.<key>``), and
``time.<stage>`` for the record's timings. The *quantities* a report summarises are listed by
:func:`quantities`: each with its column, unit, direction and whether its axis starts at 0.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.reporting.runs import ReportRun

_SKIP = {"n_images", "n_instances", "n_failed", "n_without_gt", "kid_subset_size", "kid_std"}


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Quantity:
    """A per-instance quantity a report summarises.

    Attributes:
        name: its name in tables (``iou``, ``latency``, ``chamfer_l2``).
        column: its column in the instance frame (``metric.iou``, ``time.total``).
        unit: unit for headers and axes ("" for a pure number).
        higher_is_better: direction (None: neither).
        from_zero: whether plots start its axis at 0 (IoU, latency, errors).
        shown: whether the display tables show it (registered metric columns and latency; the
            others, e.g. ``iou_init`` and the optimisation time, are in the CSV/JSON only).
    """

    name: str
    column: str
    unit: str = ""
    higher_is_better: bool | None = None
    from_zero: bool = True
    shown: bool = True

    @property
    def axis_label(self) -> str:
        return f"{self.name} [{self.unit}]" if self.unit else self.name


# Record timings a report summarises: (stage, quantity name, shown in display tables).
TIMED = (("total", "latency", True), ("optimize", "optimize", False))


def _registered_columns() -> dict:
    """``{column name: Column}`` of every registered metric column."""
    from bench import registry

    return {col.name: col for entry in registry.entries("metrics").values() for col in entry.columns}


def per_instance_column(metric: str, key: str) -> str:
    """Instance-frame column of value ``key`` in metric file ``metric``'s ``per_instance`` entries: the
    registered column's name (``metric.chamfer_l2``), else ``metric.<metric>.<key>``."""
    from bench import registry

    entry = registry.entries("metrics").get(metric)
    named = {col.key: col.name for col in (entry.columns if entry is not None else ())}
    return f"metric.{named[key]}" if key in named else f"metric.{metric}.{key}"


def instance_frame(runs: list[ReportRun]):
    """One row per (run, method, instance) with provenance, status, metrics and timings (DataFrame).

    Columns: ``run`` (label), ``run_key``, ``run_id``, ``dataset``, ``method``, ``instance``, ``index``,
    ``source`` (the instance's file), ``status``, ``error``, ``batch_size``, ``labels``, ``device``,
    ``host``, ``load_at_start``, ``cores``, ``threads``, then ``metric.*`` and ``time.*``.
    """
    import pandas as pd

    rows = []
    for run in runs:
        listed = list(run.manifest.get("methods", {}))
        order = {m: k for k, m in enumerate(listed)}
        extra = _per_instance_values(run)
        for rec in sorted(run.run.iter_records(), key=lambda r: (order.get(r["method"], len(order)), r["method"])):
            runtime = rec.get("runtime") or {}
            row = {"run": run.label, "run_key": run.key, "run_id": run.run_id, "dataset": run.dataset,
                   "method": rec["method"], "instance": rec["instance"], "index": rec["index"],
                   "source": rec.get("source"), "status": rec["status"], "error": rec.get("error"),
                   "batch_size": rec.get("batch_size"), "labels": ",".join(rec.get("labels", [])),
                   "device": runtime.get("device"), "host": runtime.get("host"),
                   "load_at_start": runtime.get("load_at_start"), "cores": runtime.get("cores"),
                   "threads": runtime.get("threads")}
            row.update({f"metric.{k}": v for k, v in (rec.get("metrics") or {}).items() if is_number(v)})
            if rec["status"] == "ok":
                row.update(extra.get((rec["method"], rec["instance"]), {}))
            row.update({f"time.{k}": v for k, v in (rec.get("timings") or {}).items() if is_number(v)})
            rows.append(row)
    frame = pd.DataFrame(rows)
    metric_cols = sorted(c for c in frame.columns if c.startswith("metric."))
    time_cols = sorted(c for c in frame.columns if c.startswith("time."))
    return frame[[c for c in frame.columns if not c.startswith(("metric.", "time."))] + metric_cols + time_cols]


def _per_instance_values(run: ReportRun) -> dict[tuple[str, str], dict[str, float]]:
    """``{(method, instance): {column: value}}`` from the ``per_instance`` parts of the metric files."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for name, doc in run.metrics.items():
        for method, values in (doc.get("methods") or {}).items():
            per = values.get("per_instance") if isinstance(values, dict) else None
            for instance, entry in (per or {}).items():
                if isinstance(entry, dict):
                    cell = out.setdefault((method, instance), {})
                    cell.update({per_instance_column(name, k): float(v) for k, v in entry.items() if is_number(v)})
    return out


def quantities(frame) -> list[Quantity]:
    """The per-instance quantities present in ``frame``, in report order: registered metric columns
    (IoU first), the record's other metrics, then latency and optimisation time."""
    registered = _registered_columns()
    out = []
    metric_cols = [c for c in frame.columns if c.startswith("metric.") and "." not in c.removeprefix("metric.")]
    for col in sorted(metric_cols, key=lambda c: (c != "metric.iou", c.removeprefix("metric.") not in registered, c)):
        name = col.removeprefix("metric.")
        if name in registered:
            reg = registered[name]
            q = Quantity(name, col, reg.unit, reg.higher_is_better, from_zero=reg.unit != "dB")
        else:
            q = Quantity(name, col, shown=False)
        out.append(q)
    for stage, name, shown in TIMED:
        if f"time.{stage}" in frame.columns:
            out.append(Quantity(name, f"time.{stage}", "s", False, shown=shown))
    return out


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
    return {k: f"{name}.{k}" for k, v in values.items() if is_number(v) and k not in _SKIP}


def corpus_metrics(run: ReportRun) -> dict[str, dict[str, float]]:
    """``{method: {column: value}}`` from the ``{"methods": {method: {...}}}`` files ``bench eval``
    wrote; a value with a bootstrap interval beside it (``<key>_ci``: ``{"low", "high"}``, written by
    ``bench eval --fid-bootstrap N``) adds ``<column>_ci_low`` / ``<column>_ci_high``."""
    from bench.registry import Column

    out: dict[str, dict[str, float]] = {}
    for name, data in run.metrics.items():
        per_method = data.get("methods", {}) if isinstance(data, dict) else {}
        for method, values in per_method.items():
            if not isinstance(values, dict):
                continue
            for key, col in corpus_columns(name, values).items():
                value = Column(key, col).read(values)
                if is_number(value):
                    cell = out.setdefault(method, {})
                    cell[col] = float(value)
                    ci = Column(f"{key}_ci", col).read(values)
                    if isinstance(ci, dict) and is_number(ci.get("low")) and is_number(ci.get("high")):
                        cell[f"{col}_ci_low"], cell[f"{col}_ci_high"] = float(ci["low"]), float(ci["high"])
    return out
