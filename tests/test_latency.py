"""Latency summary per method from record timings (bench.metrics.latency)."""
from __future__ import annotations

import pytest

from bench.metrics.base import EvalContext, EvalOptions
from bench.metrics.latency import LatencyMetric, latency_summary, percentile
from bench.store import RunDir


def _rec(i, total, optimize, status="ok", **extra):
    return {"method": "m", "instance": f"{i:05d}", "index": i, "status": status, "metrics": {},
            "timings": {"total": total, "init": total - optimize, "optimize": optimize} if status == "ok" else {},
            "batch_size": extra.pop("batch_size", 1), **extra}


def test_percentile_matches_numpy():
    np = pytest.importorskip("numpy")
    vals = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    for q in (0, 50, 95, 100):
        assert percentile(vals, q) == pytest.approx(float(np.percentile(vals, q)))


def test_summary_sequential():
    recs = [_rec(i, t, t - 0.5) for i, t in enumerate([1.0, 2.0, 3.0, 10.0])] + [_rec(9, 0, 0, status="failed")]
    s = latency_summary(recs)
    assert s["n_instances"] == 4
    assert s["total"]["mean"] == pytest.approx(4.0) and s["total"]["median"] == pytest.approx(2.5)
    assert s["total"]["p95"] == pytest.approx(percentile([1, 2, 3, 10], 95))
    assert s["optimize"]["mean"] == pytest.approx(3.5) and s["init"]["mean"] == pytest.approx(0.5)
    assert s["instances_per_s"] == pytest.approx(4 / 16)
    assert s["throughput_from"].startswith("per-instance")


def test_summary_batched_throughput():
    # two batches of 4 instances: per-instance timings are the batch's share, the batch's own
    # wall time is in the record's timings_batch
    recs = []
    for i in range(8):
        r = _rec(i, 1.5 if i < 4 else 2.5, 1.0, batch_size=4)
        r["timings_batch"] = {"total": 6.0 if i < 4 else 10.0}
        recs.append(r)
    s = latency_summary(recs)
    assert s["instances_per_s"] == pytest.approx(8 / 16.0)
    assert s["batch_sizes"] == [4] and s["throughput_from"].startswith("batch")
    assert s["batch_wall"]["mean"] == pytest.approx(8.0) and s["amortised"]["mean"] == pytest.approx(2.0)
    assert s["total"]["mean"] == pytest.approx(2.0) and s["optimize"]["mean"] == pytest.approx(1.0)


def test_latency_metric_summarises_record_timings(tmp_path):
    """Latency is a summary of the timings every record stores (it adds nothing to a record)."""
    from bench import registry

    assert registry.get("metrics", "latency").level == "corpus"
    m = LatencyMetric()
    run = RunDir(tmp_path / "run")
    run.write_manifest({"dataset": {"dataset": "synthetic"}, "environment": {"device": "cpu"}})
    for i, t in enumerate([1.0, 3.0]):
        run.write_record(_rec(i, t, t / 2))
    run.write_record(_rec(5, 0, 0, status="failed"))
    res = m.corpus(EvalContext(run, ["m"], EvalOptions(progress=False)))
    v = res["methods"]["m"]
    assert v["n_instances"] == 2 and v["n_failed"] == 1 and v["total"]["mean"] == pytest.approx(2.0)
    assert res["protocol"]["unit"] == "seconds"
