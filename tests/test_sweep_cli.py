"""`bench sweep` end to end: variants in one run directory, resume after SIGKILL, eps_s in the manifest,
the sweep table and plot; reference rows of the paper in `bench report --reference paper`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from harness_utils import TINY, bench, load_records

VALUES = (0.99, 0.9)
SWEEP = ["sweep", "--method", "ours", "--param", "eps_s=" + ",".join(map(str, VALUES)), *TINY,
         "--set", "synthetic.n=2", "--set", "ours.iterations=[2,2,2,2]"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A two-value eps_s sweep killed (SIGKILL) after its first record, then resumed to the end."""
    out = tmp_path_factory.mktemp("sweep") / "run"
    args = [*SWEEP, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "records").glob("*/*.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "records").glob("*/*.json")}
    resumed = bench(*args, "--reference", "paper", check=True)
    return {"out": out, "before": before, "stdout": resumed.stdout}


def test_sweep_resumes_without_redoing_finished_instances(swept):
    out, before = swept["out"], swept["before"]
    assert 1 <= len(before) < 2 * len(VALUES), "the kill should land mid-sweep"
    for path, (mtime, data) in before.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data, path
    recs = load_records(out)
    assert sorted(recs) == sorted((f"ours@eps_s={v}", f"{i:05d}") for v in VALUES for i in range(2))
    assert all(r["status"] == "ok" and r["attempt"] == 1 for r in recs.values())


def test_manifest_records_both_spellings_and_the_sweep(swept):
    manifest = json.loads((swept["out"] / "manifest.json").read_text())
    for v in VALUES:
        config = manifest["methods"][f"ours@eps_s={v}"]["config"]
        assert config["eps_s"] == v
        assert 1 - (2 * config["xy_k"] * config["xy_threshold"]) ** 2 == pytest.approx(v, rel=1e-9)
    [sweep] = manifest["sweeps"]  # the resumed command's sweep is the same one, kept once
    assert sweep["params"] == [{"method": "ours", "field": "eps_s", "values": list(VALUES)}]
    assert sweep["variants"] == {f"ours@eps_s={v}": {"eps_s": v} for v in VALUES}


def test_sweep_table_has_one_row_per_value_from_the_records(swept):
    rep = swept["out"] / "report"
    table = pd.read_csv(rep / "sweep.csv")
    assert list(table["eps_s"]) == list(VALUES) and list(table["method"]) == ["ours"] * len(VALUES)
    recs = load_records(swept["out"])
    for _, row in table.iterrows():
        ious = [r["metrics"]["iou"] for (m, _), r in recs.items() if m == row["variant"]]
        assert row["n"] == len(ious) == 2 and row["iou_mean"] == pytest.approx(sum(ious) / 2, rel=1e-9)
        assert row["latency_mean"] > 0
    md = (rep / "sweep.md").read_text()
    # Tab. 2's layout: the swept value first, then the metrics; the paper's row of the same value beside it
    header = [c.strip() for c in next(line for line in md.splitlines() if line.startswith("|")).split("|")[1:-1]]
    assert header[0] == "eps_s" and header.index("method") < header.index("iou") < header.index("latency [s]")
    lines = [line for line in md.splitlines() if line.startswith("|") and "0.99 " in line]
    assert len(lines) == 2 and "[paper] MeshInversion" in lines[1] and "not retrieved" in lines[1]
    assert (rep / "sweep.png").stat().st_size > 10_000
    assert "Sweep over eps_s" in swept["stdout"]


def test_fid_columns_join_the_sweep_table_after_bench_eval(swept, tmp_path):
    from bench.cli import main
    from test_fid import register_tiny

    tiny = register_tiny()
    res = CliRunner().invoke(main, ["eval", str(swept["out"]), "--metrics", "fid1", "--fid-extractor", tiny,
                                    "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    bench("report", swept["out"], "--out", tmp_path / "rep", "--resamples", "0", check=True)
    table = pd.read_csv(tmp_path / "rep" / "sweep.csv").set_index("variant")
    fid = json.loads((swept["out"] / "metrics" / "fid1.json").read_text())["methods"]
    for spec, values in fid.items():
        assert table.loc[spec, "fid1"] == pytest.approx(values["fid"], rel=1e-12)
        assert table.loc[spec, "kid1"] == pytest.approx(values["kid_mean"], rel=1e-12)


def test_reference_rows_print_every_number_and_never_pool(swept, tmp_path):
    from bench.reporting.reference import BUILTIN

    plain, withref = tmp_path / "plain", tmp_path / "ref"
    bench("report", swept["out"], "--out", plain, "--resamples", "200", check=True)
    proc = bench("report", swept["out"], "--out", withref, "--resamples", "200", "--reference", "paper", check=True)
    # measured statistics are the same with and without reference rows
    for name in ("table.csv", "stats.csv", "comparisons.csv"):
        assert (plain / name).read_bytes() == (withref / name).read_bytes(), name
    doc = yaml.safe_load(BUILTIN["paper"].read_text())
    csv = pd.read_csv(withref / "reference.csv").set_index("id")
    md = (withref / "table.md").read_text()
    section = md[md.index("Reference rows [paper]"):]
    numbers = 0
    for row in doc["rows"]:
        for col, value in row["values"].items():
            if value is None:
                assert pd.isna(csv.loc[row["id"], col])
                continue
            numbers += 1
            assert csv.loc[row["id"], col] == value
            line = next(line for line in section.splitlines() if f"[paper] {row['method']} " in line)
            assert f" {value!r} " in line, (row["id"], col, line)
            assert repr(value) in proc.stdout
    assert numbers >= 9  # MeshInversion (4), Shelf-Sup (4), the overfitted baseline (1)
    report = json.loads((withref / "report.json").read_text())
    assert [r["id"] for r in report["reference"]["rows"]] == [r["id"] for r in doc["rows"]]
    assert all(m in set(report["table"][i]["method"] for i in range(len(report["table"])))
               for m in (f"ours@eps_s={v}" for v in VALUES))
    assert not any("paper" in r["method"] for r in report["table"])


def test_grid_and_bad_params():
    from bench.cli import main
    from bench.studies.sweep import expand, parse_param

    grid = expand([parse_param("eps_s=0.99,0.9", "ours", "fast"), parse_param("ours.select_num=1,2", None, "fast")])
    assert list(grid) == ["ours@eps_s=0.99+select_num=1", "ours@eps_s=0.99+select_num=2",
                          "ours@eps_s=0.9+select_num=1", "ours@eps_s=0.9+select_num=2"]
    assert grid["ours@eps_s=0.9+select_num=2"] == {"eps_s": 0.9, "select_num": 2}
    lists = parse_param("iterations=[1,1],[2,2]", "ours", "fast", {"ours": {"z_lrs": "[0.1,0.01]",
                                                                            "pose_lrs": "[0.01,0.001]"}})
    assert lists.values == ([1, 1], [2, 2]) and list(expand([lists])) == ["ours@iterations=1-1", "ours@iterations=2-2"]
    for args, needle in [
        (["--param", "eps_s=0.9"], "name the method"),
        (["--method", "ours", "--param", "eps_z=0.9"], "did you mean 'eps_s'"),
        (["--method", "ours", "--param", "eps_s=0.9,1.5"], "ours.eps_s"),
        (["--method", "ours", "--param", "select_num=0"], "ours.select_num"),
        (["--method", "ours", "--param", "eps_s=0.9,0.9"], "given twice"),
        (["--method", "ours", "--param", "eps_s"], "[METHOD.]FIELD=V1,V2"),
        (["--method", "ours"], "--param is required"),
        (["--method", "ours", "--param", "eps_s=0.9", "--reference", "/nonexistent.yaml"], "/nonexistent.yaml"),
        (["--method", "ours", "--param", "eps_s=0.9", "--set", "ours.xy_threshold=0.1"], "two spellings"),
    ]:
        res = CliRunner().invoke(main, ["sweep", *args, "--out", "/nonexistent-dir/never-written", "--quiet"])
        assert res.exit_code == 2, (args, res.output)
        assert res.output.count("\n") == 1 and needle in res.output, (args, res.output)


def test_ablation_grid_of_the_sweep_variants(swept, tmp_path):
    from PIL import Image

    out = tmp_path / "grid.png"
    proc = bench("figure", "ablation", swept["out"], "--instances", "2", "--out", out, check=True)
    assert str(out) in proc.stdout and out.with_suffix(".pdf").is_file()
    width, height = Image.open(out).size
    assert width > 1.5 * height  # 2 rows x (input + 2 renders + 2 novel views)
    bad = bench("figure", "ablation", swept["out"], "--methods", "ours@eps_s=0.5")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no records of ours@eps_s=0.5" in bad.stderr
    bad = bench("figure", "ablation", swept["out"], "--ids", "99999")
    assert bad.returncode == 2 and "99999" in bad.stderr and bad.stderr.count("\n") == 1
