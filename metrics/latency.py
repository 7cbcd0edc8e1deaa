"""Latency: per-instance wall time and optimisation-only time, summarised per method.

The method measures its own stages (CUDA-synchronised, excluding data loading and saving) and
returns them in ``Reconstruction.timings`` (``total``, ``init``, ``optimize`` seconds); the runner
stores them in each record. This metric summarises them over every ok record of the run
(all shards):

* ``total`` and ``optimize`` (and ``init`` when present): mean, median, p95, min, max seconds
  per instance (for a batched run: the batch's time divided by its size);
* ``batch_wall`` (batched runs): wall seconds of the batch each instance was part of (the record's
  ``timings_batch.total``); ``amortised``: ``batch_wall / batch_size`` (unbatched: ``total``);
* ``instances_per_s``: throughput of the run as it was batched, ``n / Σ amortised``.
"""
from __future__ import annotations

import statistics

from bench.metrics.base import EvalContext, Metric


def percentile(values, q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of a non-empty list."""
    vals = sorted(values)
    if len(vals) == 1:
        return float(vals[0])
    pos = (len(vals) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(vals) - 1)
    return float(vals[lo] + (vals[hi] - vals[lo]) * (pos - lo))


def summarize(values) -> dict | None:
    """mean / median / p95 / min / max / n of a list of seconds (None when empty)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "median": statistics.median(vals), "p95": percentile(vals, 95),
            "min": min(vals), "max": max(vals), "n": len(vals)}


def _batch_info(rec: dict) -> tuple[int, float | None]:
    """(batch size, wall seconds of the whole batch or None) of one record.

    Records keep per-instance ``timings`` (the batch's time divided by its size) and the whole
    batch's times in ``timings_batch`` (see :class:`bench.methods.base.Reconstruction`).
    """
    t = rec.get("timings") or {}
    size = max(1, int(rec.get("batch_size") or 1))
    bt = rec.get("timings_batch") or {}
    if bt.get("total") is not None:
        return size, float(bt["total"])
    if size == 1 and t.get("total") is not None:
        return 1, float(t["total"])
    return size, None


def latency_summary(records: list[dict]) -> dict:
    """Latency summary of ok records (see the module docstring)."""
    recs = [r for r in records if r.get("status", "ok") == "ok" and r.get("timings")]
    timings = [r["timings"] for r in recs]
    out = {"n_instances": len(recs)}
    for key in ("total", "init", "optimize"):
        out[key] = summarize(t.get(key) for t in timings)
    walls, amortised, batched = [], [], False
    for rec, t in zip(recs, timings):
        size, wall = _batch_info(rec)
        batched = batched or size > 1
        if wall is not None:
            walls.append(wall)
            amortised.append(wall / size)
        elif t.get("total") is not None:
            amortised.append(float(t["total"]))
    out["batch_wall"] = summarize(walls) if batched else None
    out["amortised"] = summarize(amortised)
    total = sum(amortised)
    out["instances_per_s"] = len(amortised) / total if total > 0 else None
    out["throughput_from"] = "batch wall time / batch size" if batched else "per-instance total (one at a time)"
    out["batch_sizes"] = sorted({_batch_info(r)[0] for r in recs})
    out["devices"] = sorted({str((r.get("runtime") or {}).get("device")) for r in recs if r.get("runtime")})
    return out


class LatencyMetric(Metric):
    """Per-instance wall and optimisation time (from the method's timings), summarised per method."""

    needs_artifacts = False  # reads the records only

    def corpus(self, ctx: EvalContext) -> dict:
        manifest = ctx.run.read_manifest()
        env = manifest.get("environment", {}) if isinstance(manifest, dict) else {}
        methods = {}
        for method in ctx.methods:
            methods[method] = {**latency_summary(ctx.ok_records(method)),
                               "n_failed": len(ctx.failed_records(method))}
        protocol = {"unit": "seconds", "source": "Reconstruction.timings stored in each record (method-measured, "
                    "CUDA-synchronised, excluding data loading and saving)", "percentile": "p95, linear interpolation",
                    "gpu": env.get("gpu"), "device": env.get("device")}
        return {"protocol": protocol, "methods": methods}
