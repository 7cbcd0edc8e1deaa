"""Faults around the run directory, replayed through the real CLI (issue #11, groups 1, 2, 5, 7, 8, 9).

Each refused command: exit 2, one line on stderr, no traceback, and every file already written is
byte-identical (hash of the run directory before and after). Read-only and full-disk cases use small
tmpfs mounts and need root (CI runs as root); elsewhere they are skipped with the reason.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness_utils import TINY_OURS, bench, load_records

# 4 synthetic instances at 64 px; the shared base run did the first 2 of them.
SMALL = [*TINY_OURS, "--set", "synthetic.n=4", "--set", "synthetic.image_size=64"]
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="tmpfs mounts (read-only, full disk) need root")


def tree_hash(root: Path, skip=()) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_file() and not path.is_symlink() and not any(rel.startswith(s) for s in skip):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def one_error_line(proc, code: int = 2) -> str:
    """Assert the refused command's shape: exit ``code``, one non-empty stderr line, no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 2-of-4-instance run at the default --out (results/synthetic-fast) under a fresh cwd."""
    cwd = tmp_path_factory.mktemp("cwd")
    bench("run", "--methods", "ours", *SMALL, "--limit", "2", cwd=cwd, check=True)
    return cwd / "results" / "synthetic-fast"


@pytest.fixture()
def run_copy(base, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(base, dest, symlinks=True)
    return dest


def run_into(out: Path, *extra, **kw):
    return bench("run", "--methods", "ours", *SMALL, "--out", out, *extra, **kw)


# ---------------------------------------------------------------------------------------------
# 1. operating-system errors


def test_latest_link_only_under_the_default_results_folder(base):
    link = base.parent / "latest"
    assert link.is_symlink() and os.readlink(link) == base.name  # a custom --out: see the extension test


@pytest.mark.parametrize("case", ["file", "under-file", "long-name", "empty"])
def test_out_that_cannot_be_a_folder(tmp_path, case):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me\n")
    out = {"file": blocker, "under-file": blocker / "run", "long-name": tmp_path / ("x" * 300), "empty": ""}[case]
    before = tree_hash(tmp_path)
    line = one_error_line(run_into(out, "--limit", "1", cwd=tmp_path))
    assert "--out" in line and (case == "empty" or str(out)[:40] in line) and len(line) < 300
    assert tree_hash(tmp_path) == before


@contextlib.contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@needs_root
def test_out_on_read_only_file_system(tmp_path, run_copy):
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        line = one_error_line(run_into(ro / "run", "--limit", "1"))
        assert "read-only" in line
        before = tree_hash(run_copy)
        line = one_error_line(bench("report", run_copy, "--out", ro / "report"))
        assert "read-only" in line.lower() and tree_hash(run_copy) == before
        line = one_error_line(bench("sample", "--out", ro / "samples", "--n", "1"))
        assert "read-only" in line.lower()


def test_report_and_sample_out_is_a_file(tmp_path, run_copy):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me\n")
    before = tree_hash(run_copy)
    one_error_line(bench("report", run_copy, "--out", blocker))
    one_error_line(bench("sample", "--out", blocker, "--n", "1"))
    assert blocker.read_text() == "keep me\n" and tree_hash(run_copy) == before


def _fill(folder: Path, leave_bytes: int) -> Path:
    """Fill the file system of ``folder`` until about ``leave_bytes`` are free."""
    filler = folder / "filler"
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))
    return filler


@needs_root
def test_disk_full_mid_run_stops_cleanly_and_resumes(tmp_path, base):
    with tmpfs(tmp_path / "small", "8m") as mnt:
        run = mnt / "run"
        shutil.copytree(base, run, symlinks=True)
        before = tree_hash(run, skip=("manifest.json", "logs/", ".lock"))
        filler = _fill(mnt, 96 * 1024)  # room for the manifest and logs, not for an artifact
        line = one_error_line(run_into(run, "--limit", "3"))
        assert "disk is full" in line and "rerun" in line
        after = tree_hash(run, skip=("manifest.json", "logs/", ".lock"))
        assert {k: v for k, v in after.items() if k in before} == before  # nothing written before changed
        assert len(load_records(run)) == 2  # no partial or failed record for the instance in flight
        assert not list(run.rglob(".*.tmp"))
        filler.unlink()  # space freed: the same command resumes
        run_into(run, "--limit", "3", check=True)
        recs = load_records(run)
        assert len(recs) == 3 and all(r["status"] == "ok" and r["attempt"] == 1 for r in recs.values())


@needs_root
def test_disk_full_during_report_and_eval(tmp_path, base):
    with tmpfs(tmp_path / "small", "8m") as mnt:
        run = mnt / "run"
        shutil.copytree(base, run, symlinks=True)
        filler = _fill(mnt, 0)
        before = tree_hash(run)
        assert "disk is full" in one_error_line(bench("report", run))
        assert "disk is full" in one_error_line(bench("eval", run, "--metrics", "iou,latency"))
        assert tree_hash(run) == before
        filler.unlink()


# ---------------------------------------------------------------------------------------------
# 2. damaged run directories


@pytest.mark.parametrize("damage", ["truncated", "empty", "object", "list"])
def test_damaged_record_is_moved_aside_and_redone(run_copy, damage):
    rec_path = run_copy / "records" / "ours" / "00001.json"
    text = rec_path.read_text()
    rec_path.write_text({"truncated": text[: len(text) // 2], "empty": "", "object": "{}", "list": "[1, 2]"}[damage])
    keep = tree_hash(run_copy / "records")
    del keep["ours/00001.json"]
    proc = run_into(run_copy, "--limit", "2", check=True)
    assert "damaged record" in proc.stderr and str(rec_path) in proc.stderr
    aside = list((run_copy / "records" / "ours" / ".damaged").iterdir())
    assert len(aside) == 1
    recs = load_records(run_copy)
    assert recs[("ours", "00001")]["status"] == "ok" and recs[("ours", "00001")]["attempt"] == 1
    after = tree_hash(run_copy / "records")
    assert all(after[k] == v for k, v in keep.items() if not k.startswith("ours/.damaged"))


@pytest.mark.parametrize("damage", ["truncated", "list"])
def test_damaged_manifest_is_one_line_and_repair_restores_it(run_copy, damage):
    path = run_copy / "manifest.json"
    good = path.read_text()
    path.write_text(good[:100] if damage == "truncated" else "[]")
    before = tree_hash(run_copy)
    for proc in (bench("report", run_copy), bench("eval", run_copy, "--metrics", "iou"), run_into(run_copy)):
        line = one_error_line(proc)
        assert "manifest.json is damaged" in line and "bench repair" in line
    assert tree_hash(run_copy) == before
    proc = bench("repair", run_copy)
    assert proc.returncode == 0 and "restored" in proc.stdout
    assert json.loads(path.read_text()) == json.loads(good)
    bench("report", run_copy, check=True)


def test_repair_says_what_it_cannot_rebuild(run_copy):
    (run_copy / "manifest.json").write_text("{")
    (run_copy / "logs" / "manifest.json").unlink()
    proc = bench("repair", run_copy)
    assert proc.returncode == 1 and "cannot be rebuilt" in proc.stdout and "Traceback" not in proc.stderr
    # the original command writes a new manifest and keeps the records (same protocol hash) ...
    run_into(run_copy, "--limit", "2", check=True)
    assert len(load_records(run_copy)) == 2
    # ... while a command of another protocol is refused
    (run_copy / "manifest.json").unlink()
    (run_copy / "logs" / "manifest.json").unlink()
    assert "another protocol" in one_error_line(run_into(run_copy, "--limit", "2", "--set", "ours.select_num=3"))


def test_damaged_metric_file(run_copy):
    bench("eval", run_copy, "--metrics", "iou", check=True)
    path = run_copy / "metrics" / "iou.json"
    path.write_text(path.read_text()[:50])
    before = tree_hash(run_copy)
    line = one_error_line(bench("report", run_copy))
    assert str(path) in line and "bench repair" in line and tree_hash(run_copy) == before
    proc = bench("repair", run_copy)
    assert proc.returncode == 0 and "bench eval" in proc.stdout
    bench("report", run_copy, check=True)


@pytest.mark.parametrize("damage", ["missing", "truncated", "foreign"])
def test_damaged_artifact_is_a_metric_failure(run_copy, damage):
    import torch

    art = run_copy / "artifacts" / "ours" / "00000.pt"
    if damage == "missing":
        art.unlink()
    elif damage == "truncated":
        art.write_bytes(art.read_bytes()[:200])
    else:
        torch.save({"weights": torch.zeros(3)}, art)
    proc = bench("eval", run_copy, "--metrics", "shape3d", "--num-points", "200", "--view-size", "16")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "artifact" in proc.stderr and "00000" in proc.stderr
    doc = json.loads((run_copy / "metrics" / "shape3d.json").read_text())
    assert "00000" in doc["artifact_failures"]["ours"]
    assert doc["methods"]["ours"]["n_failed"] == 1 and doc["methods"]["ours"]["n_instances"] == 1
    proc = bench("repair", run_copy)  # moves the record aside, so `bench run` redoes the instance
    assert proc.returncode == 0 and not (run_copy / "records" / "ours" / "00000.json").exists()


# ---------------------------------------------------------------------------------------------
# 5. launch inputs


@pytest.mark.parametrize("args,env", [
    (["--shards", "-1"], {}), (["--shards", "0"], {}), (["--num-workers", "-1"], {}),
    (["--slurm", "foo", "--launcher", "submitit-local"], {}), (["--shard", "5/2"], {}),
    ([], {"RANK": "5", "WORLD_SIZE": "2"}), ([], {"RANK": "abc", "WORLD_SIZE": "2"}),
])
def test_bad_launch_inputs(tmp_path, args, env):
    out = tmp_path / "run"
    one_error_line(run_into(out, "--limit", "1", *args, env=env))
    assert not out.exists()


def _children_alive(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (proc / "stat").read_text().split(") ")[-1].split()[0]
                if "bench.launch" in cmd and marker in cmd and state != "Z":
                    pids.append(int(proc.name))
    return pids


def test_sigkill_of_the_shards_parent_kills_its_workers(run_copy):
    cmd = [sys.executable, "-m", "bench.cli", "run", "--methods", "ours", *SMALL, "--out", str(run_copy),
           "--shards", "2"]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(_children_alive(str(run_copy))) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert len(_children_alive(str(run_copy))) == 2, "workers did not start"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        time.sleep(5)
        assert _children_alive(str(run_copy)) == []
    finally:
        for pid in _children_alive(str(run_copy)):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# 7. order of checks


def test_rejected_command_does_not_block_the_corrected_one(run_copy, tmp_path):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    one_error_line(run_into(run_copy, "--limit", "2", "--methods", "ours,cmr-tto",
                            "--set", "cmr-tto.betas=[0.5]"))
    one_error_line(run_into(run_copy, "--limit", "2", "--methods", "ours,ours@v2",
                            "--set", f"ours@v2.checkpoint={bad}"))
    run_into(run_copy, "--limit", "1", "--methods", "ours,ours@v2", check=True)  # corrected: ours@v2 runs
    assert ("ours@v2", "00000") in load_records(run_copy)


# ---------------------------------------------------------------------------------------------
# 8. extending a run, concurrent runs


def test_extending_a_2_instance_run_to_4_computes_exactly_2_more(run_copy):
    before = tree_hash(run_copy / "records")
    proc = run_into(run_copy, "--limit", "4", check=True)
    recs = load_records(run_copy)
    assert len(recs) == 4 and all(r["attempt"] == 1 for r in recs.values())
    after = tree_hash(run_copy / "records")
    assert all(after[k] == v for k, v in before.items())
    assert "ours: 4 ok, 0 failed" in proc.stderr
    manifest = json.loads((run_copy / "manifest.json").read_text())
    assert manifest["limit"] == 4 and manifest["dataset"]["instances"] == 4
    assert not (run_copy.parent / "latest").exists()  # no link beside a custom --out
    proc = run_into(run_copy, "--limit", "1", check=True)  # lowering reports, never deletes
    assert "3 record(s) beyond --limit 1 kept" in proc.stderr and len(load_records(run_copy)) == 4


def test_other_protocol_names_only_the_differing_fields(run_copy):
    before = tree_hash(run_copy)
    line = one_error_line(run_into(run_copy, "--limit", "2", "--seed", "7"))
    assert "seed 0 → 7" in line and len(line) < 250
    line = one_error_line(run_into(run_copy, "--limit", "2", "--set", "ours.select_num=3"))
    assert "ours.select_num 2 → 3" in line and len(line) < 300
    assert tree_hash(run_copy) == before


def _wait_for_lock(run: Path, proc, timeout=120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads((run / ".lock").read_text()).get("pid") == proc.pid:
                return
        time.sleep(0.1)
    raise AssertionError("the first run never took the lock")


def test_second_bench_run_on_one_out_is_refused(run_copy):
    cmd = [sys.executable, "-m", "bench.cli", "run", "--methods", "ours", *SMALL, "--out", str(run_copy),
           "--limit", "4"]  # two instances to compute: time for the second command to meet the lock
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(run_copy, first)
        line = one_error_line(run_into(run_copy, "--limit", "4"))
        assert f"pid {first.pid}" in line and "another bench run" in line
    finally:
        first.wait(timeout=600)
    assert first.returncode == 0, first.stderr
    recs = load_records(run_copy)
    assert len(recs) == 4 and all(r["attempt"] == 1 for r in recs.values())


def test_shard_processes_claim_instances(run_copy):
    cmd = [sys.executable, "-m", "bench.cli", "run", "--methods", "ours", *SMALL, "--out", str(run_copy),
           "--limit", "3", "--shard", "0/1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        p.wait(timeout=600)
        assert p.returncode == 0, p.stderr
    recs = load_records(run_copy)
    assert len(recs) == 3 and all(r["attempt"] == 1 for r in recs.values())  # each computed once
    assert not list((run_copy / "claims" / "ours").glob("*.lock"))


# ---------------------------------------------------------------------------------------------
# 9. exit codes


def test_run_where_every_instance_fails_exits_1(fixtures_dir, tmp_path):
    root = tmp_path / "cub"
    shutil.copytree(fixtures_dir / "fake_cub_root" / "datasets" / "cub", root)
    for img in [p for p in (root / "CUB_200_2011" / "images").rglob("*") if p.is_file()]:
        img.unlink()
    proc = bench("run", "--methods", "ours", *TINY_OURS, "--dataset", "cub", "--data-root", root, "--limit", "2",
                 "--out", tmp_path / "run")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: every instance failed (2)") and "loading failed" in last


def test_report_of_a_run_without_records_exits_2(run_copy):
    shutil.rmtree(run_copy / "records")
    assert "no records" in one_error_line(bench("report", run_copy))


def test_eval_computes_what_it_can_without_fid_weights(run_copy, tmp_path):
    proc = bench("eval", run_copy, "--num-points", "200", "--view-size", "16",
                 env={"TORCH_HOME": str(tmp_path / "empty-hub")})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "fid1 skipped" in proc.stderr and "not computed" in proc.stderr.strip().splitlines()[-1]
    written = {p.stem for p in (run_copy / "metrics").glob("*.json")}
    assert {"iou", "latency", "shape3d"} <= written and "fid1" not in written
