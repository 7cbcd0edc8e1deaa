"""`bench run --launcher slurm` against a real one-node Slurm (Debian's slurmctld, slurmd, munge).

The cluster comes from ``tests/cluster/slurm-up.sh``: `.ci/run` starts it and exports
``MESHBENCH_SLURM_CONF``; run as root without it, this module starts (and stops) one itself; otherwise
it is skipped. Every run is tiny (the suite's smallest settings); a run's instances are "done exactly
once" when each appears in one ``ok`` line of the shard logs, however often its task was requeued.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from harness_utils import TINY_OURS

SCRIPT = Path(__file__).with_name("slurm-up.sh")


def tiny(n: int, iterations: str = "[1,1,1,1]", launcher: bool = True) -> list[str]:
    """The suite's smallest settings on ``n`` synthetic instances (``launcher``: as Slurm tasks of one CPU)."""
    slurm_options = ["--launcher", "slurm", "--slurm-cpus-per-task", "1"] if launcher else []
    return [*slurm_options, *TINY_OURS, "--set", f"ours.iterations={iterations}", "--set", f"synthetic.n={n}",
            "--set", "synthetic.image_size=64"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``{"env": environment with SLURM_CONF, "state": state folder}`` of a live one-node cluster."""
    conf = os.environ.get("MESHBENCH_SLURM_CONF")
    started = None
    if not conf:
        if os.geteuid() != 0:
            pytest.skip("Slurm cluster test: not root, so no slurmctld/slurmd can be started here (CI runs it)")
        state = tmp_path_factory.mktemp("slurm")
        proc = subprocess.run(["bash", str(SCRIPT), "start", str(state)], capture_output=True, text=True, timeout=600)
        if proc.returncode == 3:
            pytest.skip(proc.stderr.strip().splitlines()[-1])
        assert proc.returncode == 0, proc.stderr[-3000:]
        conf, started = str(state / "slurm.conf"), state
    env = {**os.environ, "SLURM_CONF": conf, "OMP_NUM_THREADS": "1", "BENCH_SLURM_POLL_S": "2"}
    yield {"env": env, "state": Path(conf).parent}
    if started is not None:
        subprocess.run(["bash", str(SCRIPT), "stop", str(started)], timeout=120)


def bench(cluster, *args, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], cwd=cwd, env=cluster["env"],
                          capture_output=True, text=True, timeout=timeout)


def start_bench(cluster, *args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.cli", *map(str, args)], cwd=cwd, env=cluster["env"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def slurm(cluster, *args) -> str:
    return subprocess.run(list(args), env=cluster["env"], capture_output=True, text=True, timeout=60,
                          check=True).stdout


def ok_lines(run: Path) -> Counter:
    """How often each (method, instance) was finished, from the shard logs."""
    done: Counter = Counter()
    for log in (run / "logs").glob("shard-*.log"):
        for method, instance in re.findall(r"bench\.run: (\S+) (\S+) ok ", log.read_text()):
            done[(method, instance)] += 1
    return done


def assert_complete(run: Path, n: int, methods=("ours",)) -> None:
    records = {(m, p.stem) for m in methods for p in (run / "records" / m).glob("*.json")}
    assert len(records) == n * len(methods)
    done = ok_lines(run)
    assert set(done) == records and set(done.values()) == {1}, done


def wait_for(predicate, timeout: float, what: str, step: float = 0.5):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def lease_job(run: Path) -> str | None:
    try:
        return json.loads((run / ".slurm-job.json").read_text())["job_id"]
    except (OSError, ValueError, KeyError):
        return None


def test_array_of_two_tasks_completes(cluster, tmp_path):
    run = tmp_path / "two"
    proc = bench(cluster, "run", "--methods", "ours", "--out", run, "--shards", 2,
                 *tiny(4), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted Slurm job" in proc.stderr and "Bypassing" not in proc.stdout + proc.stderr
    assert_complete(run, 4)
    job = json.loads((run / "manifest.json").read_text())["slurm_jobs"][0]
    assert job["parameters"]["name"] == "bench-two" and job["parameters"]["timeout_min"] == \
        job["time_estimate"]["minutes"]
    assert not (run / ".slurm-job.json").exists()  # the lease ends with the job
    shards = {json.loads(p.read_text())["runtime"]["shard"] for p in (run / "records" / "ours").glob("*.json")}
    assert shards == {0, 1}


def test_requeue_mid_instance_resumes(cluster, tmp_path):
    """`scontrol requeue` kills the task while it holds an instance; the requeued task finishes the shard."""
    run = tmp_path / "requeue"
    proc = start_bench(cluster, "run", "--methods", "ours", "--out", run, *tiny(3, "[4,4,4,4]"),
                       cwd=tmp_path)
    try:
        job = wait_for(lambda: lease_job(run), 60, "the submission")
        wait_for(lambda: any((run / "records" / "ours").glob("*.json")) and any((run / "claims").rglob("*.lock")),
                 180, "a first record and an instance in flight", step=0.2)
        slurm(cluster, "scontrol", "requeue", job)  # one shard: submitit submits a plain job, not an array
        _, err = proc.communicate(timeout=400)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert_complete(run, 3)
    logs = " ".join(p.read_text() for p in (run / "logs" / "submitit").glob("*_log.*"))
    assert "DUE TO JOB REQUEUE" in logs  # Slurm's line in the task's log (submitit appends across attempts)


def test_time_limit_requeues_and_completes(cluster, tmp_path):
    """--slurm-time 1 with the time-limit signal 5 s ahead: submitit checkpoints at the signal (typed
    values: no TypeError), Slurm requeues, and the run ends complete.

    slurmctld checks limits every 30 s and signals once the time left is under the delay + 30 s, so
    each attempt gets 25-55 s; 12 instances (~4-5 s each after ~14 s of start-up) need more than one."""
    run = tmp_path / "timelimit"
    proc = bench(cluster, "run", "--methods", "ours", "--out", run, "--slurm-time", "1",
                 "--slurm", "slurm_signal_delay_s=5", *tiny(12, "[4,4,4,4]"), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = " ".join(p.read_text() for p in (run / "logs" / "submitit").glob("*_log.*"))
    assert "TypeError" not in logs
    assert "this job is timed-out" in logs and re.search(r"Requeued job \d+", logs)  # submitit's lines
    assert_complete(run, 12)


def test_scancel_of_one_task_ends_the_wait_in_one_line(cluster, tmp_path):
    run = tmp_path / "cancel"
    args = ["run", "--methods", "ours", "--out", run, "--shards", 2, *tiny(4, "[4,4,4,4]")]
    proc = start_bench(cluster, *args, cwd=tmp_path)
    try:
        job = wait_for(lambda: lease_job(run), 60, "the submission")
        wait_for(lambda: "RUNNING" in slurm(cluster, "squeue", "-h", "-j", f"{job}_1", "-o", "%T"), 60, "task 1 running")
        slurm(cluster, "scancel", f"{job}_1")
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    lines = err.strip().splitlines()
    assert proc.returncode == 2, err[-3000:]
    assert re.match(rf"error: Slurm job {job}: task 1 CANCELLED before finishing its shard;", lines[-1]), lines[-1]
    assert "rerun the same command to resume" in lines[-1]
    # ... and rerunning resumes: shard 1's instances, the ones left
    again = bench(cluster, *args, cwd=tmp_path, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list((run / "records" / "ours").glob("*.json"))) == 4


def test_detach_leases_the_run_and_ctrl_c_cancels(cluster, tmp_path):
    run = tmp_path / "detach"
    args = ["run", "--methods", "ours", "--out", run, *tiny(4, "[4,4,4,4]")]
    detached = bench(cluster, *args, "--detach", cwd=tmp_path)
    assert detached.returncode == 0, detached.stderr
    job = lease_job(run)
    assert f"scancel {job}" in detached.stderr and f"squeue -j {job}" in detached.stderr
    second = bench(cluster, *args, cwd=tmp_path)  # the array still writes the run: refused, whatever it does
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines() == [second.stderr.strip()]
    assert f"is being written by Slurm job {job}" in second.stderr
    slurm(cluster, "scancel", job)
    wait_for(lambda: not slurm(cluster, "squeue", "-h", "-j", job), 60, "the cancelled job to leave the queue")
    # the lease is stale now: a new submission goes ahead; Ctrl-C while it waits cancels it
    proc = start_bench(cluster, *args, cwd=tmp_path)
    try:
        new = wait_for(lambda: (lease_job(run) or job) != job and lease_job(run), 60, "the new submission")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert re.search(rf"^error: interrupted: cancelled Slurm job {new}; \d+/4 instances are done — rerun the same "
                     "command to resume$", err.strip().splitlines()[-1]), err
    wait_for(lambda: not slurm(cluster, "squeue", "-h", "-j", new), 60, "the interrupted job to leave the queue")


def test_srun_splits_the_shards_and_a_batch_step_is_refused(cluster, tmp_path):
    run = tmp_path / "srun"
    cmd = " ".join([sys.executable, "-m", "bench.cli", "run", "--methods", "ours", "--out", str(run),
                    *tiny(4, launcher=False)])
    out = tmp_path / "job-%j.out"
    with_srun = slurm(cluster, "sbatch", "--parsable", "-n", "2", "-o", str(out), "--wrap", f"srun {cmd}").strip()
    without = slurm(cluster, "sbatch", "--parsable", "-n", "2", "-o", str(out), "--wrap",
                    f"{cmd.replace(str(run), str(tmp_path / 'nosrun'))}; echo exit=$?").strip()
    wait_for(lambda: not slurm(cluster, "squeue", "-h", "-j", f"{with_srun},{without}"), 300, "both jobs", step=1)
    assert_complete(run, 4)
    assert {json.loads(p.read_text())["runtime"]["shard"] for p in (run / "records" / "ours").glob("*.json")} == {0, 1}
    text = (tmp_path / f"job-{without}.out").read_text()
    assert "srun bench run" in text and "exit=2" in text, text
    assert not (tmp_path / "nosrun" / "records").exists()


@pytest.mark.parametrize("options, said", [
    (["--slurm-partition", "nosuch"], "Slurm refused the job: Batch job submission failed: Invalid partition name"),
    (["--slurm", "slurm_cpus_per_task=64"], "can never start (PartitionConfig"),
])
def test_a_job_slurm_cannot_run_is_one_line(cluster, tmp_path, options, said):
    proc = bench(cluster, "run", "--methods", "ours", "--out", tmp_path / "bad", *tiny(2), *options, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and said in lines[-1], proc.stderr
    assert all(line.startswith("submitted Slurm job") for line in lines[:-1]), lines
    assert not slurm(cluster, "squeue", "-h", "-o", "%i")  # nothing left queued


def test_controller_down_is_one_line(cluster, tmp_path):
    """Last: stops and restarts this cluster's slurmctld."""
    state = cluster["state"]
    subprocess.run(["bash", str(SCRIPT), "ctld-stop", str(state)], check=True, timeout=60, env=cluster["env"])
    try:
        proc = bench(cluster, "run", "--methods", "ours", "--out", tmp_path / "down", "--launcher", "slurm",
                     *tiny(2), cwd=tmp_path, timeout=300)
    finally:
        subprocess.run(["bash", str(SCRIPT), "ctld-start", str(state)], check=True, timeout=120, env=cluster["env"])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "slurmctld" in lines[0], lines
