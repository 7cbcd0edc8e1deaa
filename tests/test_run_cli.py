"""`bench run` end to end through the real CLI: records, resume after SIGKILL, shards, submitit, seeds."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness_utils import TINY, TINY_OURS, bench, load_records, stable

# Every run in these comparisons uses one intra-op thread, as each of N CPU shard workers does, so
# float reductions are identical and records must agree exactly.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """One tiny 1-shard run of `ours` on synthetic, shared by the comparisons below."""
    out = tmp_path_factory.mktemp("runs") / "one"
    proc = bench("run", "--methods", "ours", "--dataset", "synthetic", "--out", out, *TINY, env=ONE_THREAD, check=True)
    return out, proc


def test_run_writes_manifest_records_artifacts(base_run):
    out, proc = base_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"]["dataset"] == "synthetic" and manifest["dataset"]["instances"] == 3
    assert manifest["methods"]["ours"]["config"]["select_num"] == 2
    assert manifest["environment"]["packages"]["torch"]
    assert "untrained" in " ".join(manifest["methods"]["ours"]["labels"]) or manifest["dataset"]["generator"]
    recs = load_records(out)
    assert sorted(i for _, i in recs) == ["00000", "00001", "00002"]
    for rec in recs.values():
        assert rec["status"] == "ok", rec.get("error")
        assert 0.0 <= rec["metrics"]["iou"] <= 1.0
        assert rec["timings"]["total"] > 0 and rec["timings"]["optimize"] > 0
        assert (out / rec["artifact"]).is_file() and (out / rec["render"]).is_file()
    assert "ours: 3 ok, 0 failed" in proc.stderr


def test_rerun_skips_finished_records(base_run):
    out, _ = base_run
    before = {k: v["runtime"]["finished"] for k, v in load_records(out).items()}
    bench("run", "--methods", "ours", "--dataset", "synthetic", "--out", out, *TINY, check=True)
    after = {k: v["runtime"]["finished"] for k, v in load_records(out).items()}
    assert before == after


def test_same_seed_gives_identical_records(base_run, tmp_path):
    out, _ = base_run
    again = tmp_path / "again"
    bench("run", "--methods", "ours", "--dataset", "synthetic", "--out", again, *TINY, env=ONE_THREAD, check=True)
    a, b = load_records(out), load_records(again)
    assert a.keys() == b.keys()
    for key in a:
        assert stable(a[key]) == stable(b[key]), key


def test_two_local_shards_equal_one_shard(base_run, tmp_path):
    out, _ = base_run
    sharded = tmp_path / "sharded"
    bench("run", "--methods", "ours", "--dataset", "synthetic", "--out", sharded, "--shards", "2", *TINY,
          env=ONE_THREAD, check=True)
    a, b = load_records(out), load_records(sharded)
    assert a.keys() == b.keys()
    assert {r["runtime"]["shard"] for r in b.values()} == {0, 1}
    for key in a:
        assert stable(a[key]) == stable(b[key]), key


def test_submitit_local_executor_run_completes(base_run, tmp_path):
    out, _ = base_run
    sub = tmp_path / "submitit"
    bench("run", "--methods", "ours", "--dataset", "synthetic", "--out", sub, "--shards", "2",
          "--launcher", "submitit-local", *TINY, env=ONE_THREAD, check=True)
    a, b = load_records(out), load_records(sub)
    assert a.keys() == b.keys() and all(r["status"] == "ok" for r in b.values())
    for key in a:
        assert stable(a[key]) == stable(b[key]), key
    assert (sub / "logs" / "submitit").is_dir()


def test_sigkill_mid_run_then_resume_gives_each_instance_once(tmp_path):
    out = tmp_path / "killed"
    args = ["run", "--methods", "ours", "--dataset", "synthetic", "--out", str(out), *TINY,
            "--set", "synthetic.n=8", "--set", "ours.iterations=[3,3,3,3]"]
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "records").glob("*/*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "records").glob("*/*.json")))
    assert 2 <= done_before < 8, "the kill should land mid-run"
    bench(*args, check=True)
    recs = load_records(out)
    assert sorted(i for _, i in recs) == [f"{i:05d}" for i in range(8)]
    assert all(r["status"] == "ok" and r["attempt"] == 1 for r in recs.values())
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    for path in (out / "records").glob("*/*.json"):
        json.loads(path.read_text())  # every record complete
    import torch

    for path in (out / "artifacts").glob("*/*.pt"):
        torch.load(path, weights_only=False)


@pytest.mark.parametrize("args, needle", [
    (["--methods", "ourz"], "did you mean 'ours'"),
    (["--methods", "ours", "--dataset", "cubb"], "did you mean 'cub'"),
    (["--methods", "ours", "--dataset", "cub", "--data-root", "/nonexistent/cub"], "/nonexistent/cub"),
    (["--methods", "ours", "--set", "ours.selec_num=3"], "did you mean 'select_num'"),
    (["--methods", "ours", "--set", "ours.checkpoint=/nonexistent/gen.pth"], "/nonexistent/gen.pth"),
])
def test_bad_input_exits_2_with_one_line(args, needle, tmp_path):
    proc = bench("run", *args, "--out", tmp_path / "r", "--quiet")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in lines[0]


def test_unreadable_checkpoint_exits_2(tmp_path):
    bad = tmp_path / "gen.pth"
    bad.write_bytes(b"this is not a checkpoint")
    proc = bench("run", "--methods", "ours", "--out", tmp_path / "r", *TINY, "--set", f"ours.checkpoint={bad}")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and str(bad) in proc.stderr


def test_report_writes_tables_and_plots(base_run, tmp_path):
    out, _ = base_run
    proc = bench("report", out, "--out", tmp_path / "rep", check=True)
    assert "ours" in proc.stdout and "Protocol" in proc.stdout
    for name in ("table.md", "table.tex", "table.csv", "instances.csv", "iou.png", "latency.png"):
        assert (tmp_path / "rep" / name).is_file(), name
    import pandas as pd

    table = pd.read_csv(tmp_path / "rep" / "table.csv")
    recs = load_records(out)
    ious = [r["metrics"]["iou"] for r in recs.values()]
    assert table.loc[0, "n"] == 3 and table.loc[0, "failed"] == 0
    assert table.loc[0, "iou_mean"] == pytest.approx(sum(ious) / len(ious), rel=1e-6)
    assert "synthetic" in (tmp_path / "rep" / "table.md").read_text()


def test_report_of_non_run_dir_exits_2(tmp_path):
    proc = bench("report", tmp_path)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr


def test_ours_cmr_tto_umr_tto_run_and_report(tmp_path):
    out = tmp_path / "three"
    tiny_baselines = []
    for m in ("cmr-tto", "umr-tto"):
        tiny_baselines += ["--set", f"{m}.iterations=4", "--set", f"{m}.render_size=64"]
    bench("run", "--methods", "ours,cmr-tto,umr-tto", "--dataset", "synthetic", "--out", out, *TINY,
          *tiny_baselines, check=True)
    recs = load_records(out)
    assert {m for m, _ in recs} == {"ours", "cmr-tto", "umr-tto"}
    assert all(r["status"] == "ok" for r in recs.values())
    assert all("untrained" in r["labels"] for (m, _), r in recs.items() if m != "ours")
    proc = bench("report", out, check=True)
    for m in ("ours", "cmr-tto", "umr-tto"):
        assert f" {m} " in proc.stdout


def test_bad_instances_are_recorded_as_failed_and_the_run_goes_on(fixtures_dir, tmp_path):
    import shutil

    root = tmp_path / "cub"
    shutil.copytree(fixtures_dir / "fake_cub_root" / "datasets" / "cub", root)
    photos = sorted((root / "CUB_200_2011" / "images").rglob("*.png"))
    corrupt = photos[-1]
    corrupt.write_bytes(b"\x89PNG garbage")
    out = tmp_path / "run"
    proc = bench("run", "--methods", "ours", "--dataset", "cub", "--data-root", root, "--out", out, *TINY_OURS,
                 "--num-workers", "0", check=True)
    recs = load_records(out)
    status = {inst: r["status"] for (_, inst), r in recs.items()}
    assert sorted(status.values()) == ["failed"] + ["ok"] * (len(photos) - 1), status
    failed = next(r for r in recs.values() if r["status"] == "failed")
    assert "loading failed" in failed["error"] and corrupt.name in failed["error"]
    assert f"{len(photos) - 1} ok, 1 failed" in proc.stderr
    # a rerun with --retries re-attempts only the failure (still failing: attempt 2), keeps the ok one
    ok_before = next(r for r in recs.values() if r["status"] == "ok")["runtime"]["finished"]
    bench("run", "--methods", "ours", "--dataset", "cub", "--data-root", root, "--out", out, *TINY_OURS,
          "--num-workers", "0", "--retries", "1", check=True)
    recs = load_records(out)
    assert next(r for r in recs.values() if r["status"] == "failed")["attempt"] == 2
    assert next(r for r in recs.values() if r["status"] == "ok")["runtime"]["finished"] == ok_before
