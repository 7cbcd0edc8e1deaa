"""`bench report` and `bench diff` end to end on tiny synthetic runs made here (one set per module)."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from harness_utils import TINY, bench, load_records

from test_report_stats import SPECIALS, compile_latex, require_pdflatex

TINY_CMR = ["--set", "cmr-tto.iterations=4", "--set", "cmr-tto.render_size=64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: ours, ours@tight (xy_threshold 0.1), cmr-tto, with shape3d; B: ours at xy_threshold 0.1;
    C: ours under another seed (another protocol)."""
    root = tmp_path_factory.mktemp("report")
    a, b, c = root / "a" / "run", root / "b" / "run", root / "c"
    bench("run", "--methods", "ours,ours@tight,cmr-tto", "--set", "ours@tight.xy_threshold=0.1", "--out", a, *TINY,
          *TINY_CMR, check=True)
    bench("eval", a, "--metrics", "shape3d", "--view-size", "64", "--num-points", "500", "--quiet", check=True)
    bench("run", "--methods", "ours", "--set", "ours.xy_threshold=0.1", "--out", b, *TINY, check=True)
    bench("run", "--methods", "ours", "--seed", "1", "--limit", "2", "--out", c, *TINY, check=True)
    return {"a": a, "b": b, "c": c, "root": root}


def _json_files(folder):
    return sorted(folder.rglob("*.json"))


def test_report_statistics_variants_and_files(runs, tmp_path):
    a = runs["a"]
    rep = tmp_path / "rep"
    proc = bench("report", a, "--out", rep, "--resamples", "500", check=True)
    change = "ours@tight: eps_s 0.8976 → 0.96; xy_threshold 0.16 → 0.1"  # what the variant changed (both spellings)
    assert change in proc.stdout and change in (rep / "table.md").read_text()
    variants = pd.read_csv(rep / "variants.csv")
    # both spellings of the gate: eps_s = 1 - (2 xy_k xy_threshold)^2, xy_k = 1
    assert variants.to_dict("records") == [
        {"run": "run", "method": "ours@tight", "base": "ours", "field": "eps_s",
         "base_value": pytest.approx(1 - (2 * 0.16) ** 2), "value": pytest.approx(1 - (2 * 0.1) ** 2)},
        {"run": "run", "method": "ours@tight", "base": "ours", "field": "xy_threshold", "base_value": 0.16, "value": 0.1}]
    recs = load_records(a)
    table = pd.read_csv(rep / "table.csv").set_index("method")
    for method in ("ours", "ours@tight", "cmr-tto"):
        ious = [r["metrics"]["iou"] for (m, _), r in recs.items() if m == method]
        row = table.loc[method]
        assert row["n"] == len(ious) == 3
        assert row["iou_mean"] == pytest.approx(sum(ious) / 3, rel=1e-9)
        assert row["iou_ci_low"] <= row["iou_mean"] <= row["iou_ci_high"]
        assert min(ious) <= row["iou_ci_low"] and row["iou_ci_high"] <= max(ious)
        assert row["latency_mean"] > 0 and row["chamfer_l2_mean"] > 0
    # every pair of methods, paired on common instances, with scipy's Wilcoxon p
    comp = pd.read_csv(rep / "comparisons.csv")
    iou = comp[comp.quantity == "iou"]
    assert {(r.a, r.b) for r in iou.itertuples()} == {("ours", "ours@tight"), ("ours", "cmr-tto"),
                                                      ("ours@tight", "cmr-tto")}
    assert (iou["n"] == 3).all()
    # per-instance table: record values, 3D metrics from bench eval, the source of each instance
    inst = pd.read_csv(rep / "instances.csv", dtype={"instance": str})
    shape3d = json.loads((a / "metrics" / "shape3d.json").read_text())["methods"]
    for row in inst.itertuples():
        assert getattr(row, "_asdict")()["source"].startswith(f"synthetic scene {row.index}")
    ours = inst[inst.method == "ours"].set_index("instance")
    for instance, values in shape3d["ours"]["per_instance"].items():
        assert ours.loc[instance, "metric.chamfer_l2"] == pytest.approx(values["chamfer_l2"])
        assert ours.loc[instance, "metric.shape3d.precision"] == pytest.approx(values["precision"])
    # figures, and strict JSON everywhere
    for name in ("iou.png", "iou.pdf", "latency.png", "chamfer_l2.png", "paired-iou-ours-vs-ours@tight.png"):
        assert (rep / name).stat().st_size > 0, name
    for path in _json_files(rep):
        text = path.read_text()
        assert "NaN" not in text and "Infinity" not in text, path
        json.loads(text)
    doc = json.loads((rep / "report.json").read_text())
    assert doc["runs"][0]["run_id"] == json.loads((a / "manifest.json").read_text())["run_id"]


def test_baseline_makes_one_column_of_deltas(runs, tmp_path):
    proc = bench("report", runs["a"], "--out", tmp_path / "rep", "--baseline", "cmr-tto", "--resamples", "200",
                 check=True)
    comp = pd.read_csv(tmp_path / "rep" / "comparisons.csv")
    assert set(comp["b"]) == {"cmr-tto"} and set(comp["a"]) == {"ours", "ours@tight"}
    assert "vs cmr-tto" in proc.stdout
    bad = bench("report", runs["a"], "--out", tmp_path / "bad", "--baseline", "cmr")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--baseline cmr" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_two_copies_of_a_run_stay_two_rows_with_distinct_labels(runs, tmp_path):
    copy = tmp_path / "copy" / "run"
    shutil.copytree(runs["a"], copy)
    rep = tmp_path / "rep"
    proc = bench("report", runs["a"], copy, "--out", rep, "--resamples", "0", check=True)
    table = pd.read_csv(rep / "table.csv")
    ours = table[table.method == "ours"]
    assert len(ours) == 2 and (ours["n"] == 3).all()
    assert len(set(ours["run"])) == 2 and set(ours["run_id"]) == {json.loads((copy / "manifest.json").read_text())["run_id"]}
    assert "copies of one run" in proc.stdout
    labelled = bench("report", runs["a"], copy, "--label", f"{copy}=mine", "--out", tmp_path / "rep2",
                     "--resamples", "0", check=True)
    assert set(pd.read_csv(tmp_path / "rep2" / "table.csv")["run"]) == {"run", "mine"}
    assert "mine" in labelled.stdout


def test_runs_of_other_protocols_keep_the_warning_everywhere(runs, tmp_path):
    rep = tmp_path / "rep"
    proc = bench("report", runs["a"], runs["c"], "--out", rep, "--resamples", "0", check=True)
    warning = "WARNING: runs differ in protocol (seed)"
    assert warning in proc.stdout
    for name in ("table.md", "table.tex", "protocol.txt", "report.json"):
        assert warning in (rep / name).read_text(), name
    assert (rep / "iou.png").is_file()


def test_latency_warnings_name_a_loaded_machine_and_other_hardware(runs, tmp_path):
    loaded = tmp_path / "loaded"
    shutil.copytree(runs["b"], loaded)
    for path in (loaded / "records" / "ours").glob("*.json"):
        rec = json.loads(path.read_text())
        rec["runtime"]["load_at_start"] = 3.0 * rec["runtime"]["cores"]
        path.write_text(json.dumps(rec))
    manifest = json.loads((loaded / "manifest.json").read_text())
    manifest["environment"]["hardware"]["cpu"] = "Another CPU"
    (loaded / "manifest.json").write_text(json.dumps(manifest))
    proc = bench("report", runs["b"], loaded, "--out", tmp_path / "rep", "--resamples", "0", check=True)
    assert "3 of 3 instances started on a loaded machine" in proc.stdout
    assert "latencies come from different hardware" in proc.stdout and "Another CPU" in proc.stdout


def test_report_latex_compiles_with_special_characters_in_a_label(runs, tmp_path):
    require_pdflatex()
    rep = tmp_path / "rep"
    bench("report", runs["a"], runs["c"], "--label", f"{runs['c']}={SPECIALS}", "--out", rep, "--resamples", "0",
          check=True)
    tex = (rep / "table.tex").read_text()
    proc = compile_latex(tex, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_bench_diff_shows_the_changed_field_and_the_deltas(runs, tmp_path):
    out = tmp_path / "diff.json"
    proc = bench("diff", runs["a"], runs["b"], "--json", out, "--resamples", "300", "--top", "2", check=True)
    assert "methods.ours.config.xy_threshold: 0.16 → 0.1" in proc.stdout
    assert "methods.ours@tight: only in A" in proc.stdout
    doc = json.loads(out.read_text())
    assert {"field": "methods.ours.config.xy_threshold", "a": 0.16, "b": 0.1} in doc["protocol"]
    rec_a, rec_b = load_records(runs["a"]), load_records(runs["b"])
    diffs = {i: rec_b[("ours", i)]["metrics"]["iou"] - rec_a[("ours", i)]["metrics"]["iou"]
             for (m, i) in rec_b if m == "ours"}
    iou = [d for d in doc["deltas"] if d["method"] == "ours" and d["quantity"] == "iou"][0]
    assert iou["n"] == 3 and iou["diff"] == pytest.approx(sum(diffs.values()) / 3, rel=1e-9)
    top = sorted(diffs, key=lambda i: -abs(diffs[i]))[:2]
    assert [t["instance"] for t in doc["top"]] == top
    assert "NaN" not in out.read_text()
    bad = bench("diff", runs["a"], runs["b"], "--metric", "fid99")
    assert bad.returncode == 2 and "--metric fid99" in bad.stderr and bad.stderr.count("\n") == 1


def test_one_method_with_other_configs_in_two_runs_is_named(runs, tmp_path):
    proc = bench("report", runs["a"], runs["b"], "--out", tmp_path / "rep", "--resamples", "0", check=True)
    assert "b/run/ours (vs a/run/ours): eps_s 0.8976 → 0.96; xy_threshold 0.16 → 0.1" in proc.stdout
    table = pd.read_csv(tmp_path / "rep" / "table.csv")
    assert list(table["run"]) == ["a/run"] * 3 + ["b/run"]
