"""Slurm without a cluster: typed --slurm values, --slurm-* options, the pinning rule, the batch-step check,
the time estimate, and the modes of a run directory's files."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import typing

import pytest
from harness_utils import TINY

from bench import slurm
from bench.errors import UserError
from bench.launch import check_slurm_step, env_shard, pinned_device


@pytest.fixture(scope="module")
def types():
    return slurm.parameter_types()


def test_types_are_submitits_declared_ones(types):
    from submitit.auto.auto import AutoExecutor
    from submitit.slurm.slurm import SlurmExecutor

    generic = AutoExecutor._typed_parameters()
    assert {k: types[k] for k in generic} == generic
    # every parameter submitit's Slurm executor accepts, under its AutoExecutor name
    assert {f"slurm_{k}" for k in SlurmExecutor._valid_parameters()} <= set(types)


@pytest.mark.parametrize("pair, key, value", [
    ("timeout_min=10", "timeout_min", 10),                       # int
    ("slurm_time=3", "slurm_time", 3),                           # int (the string made submitit's timeout handler raise)
    ("mem_gb=2.5", "mem_gb", 2.5),                               # float
    ("slurm_use_srun=false", "slurm_use_srun", False),           # bool
    ("slurm_use_srun=Yes", "slurm_use_srun", True),
    ("slurm_partition=gpu", "slurm_partition", "gpu"),           # Optional[str]
    ("slurm_gpus_per_task=none", "slurm_gpus_per_task", None),   # Optional[int]: none
    ("slurm_gpus_per_task=2", "slurm_gpus_per_task", 2),
    ("slurm_exclusive=true", "slurm_exclusive", True),           # Union[bool, str]
    ("slurm_exclusive=user", "slurm_exclusive", "user"),
    ("slurm_setup=[module load cuda, source env.sh]", "slurm_setup", ["module load cuda", "source env.sh"]),
    ("slurm_setup=module load cuda", "slurm_setup", ["module load cuda"]),  # Optional[List[str]]: one line
    ("slurm_srun_args=[--cpu-bind=none]", "slurm_srun_args", ["--cpu-bind=none"]),  # Iterable[str]
    ("slurm_additional_parameters={constraint: a100, mail-type: END}", "slurm_additional_parameters",
     {"constraint": "a100", "mail-type": "END"}),              # Dict[str, Any]
])
def test_values_are_typed_as_declared(types, pair, key, value):
    parsed = slurm.parse_parameters([pair], types)
    assert parsed == {key: value}
    assert type(parsed[key]) is type(value)


def test_every_declared_type_is_handled(types):
    """No declared type falls through to 'keep the text' except str-like ones."""
    for key, hint in types.items():
        plain = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        assert all(a in (int, float, bool, str) or typing.get_origin(a) in (list, dict, typing.Iterable)
                   or str(typing.get_origin(a)) == "<class 'collections.abc.Iterable'>" or a is typing.Any
                   for a in plain), (key, hint)


@pytest.mark.parametrize("pair, message", [
    ("slurm_time=3m", "slurm_time='3m': expected an integer"),
    ("mem_gb=lots", "expected a number"),
    ("slurm_use_srun=maybe", "expected true or false"),
    ("slurm_setup={a: 1}", "expected a list of strings"),
    ("slurm_additional_parameters=[a]", "expected a mapping"),
    ("slurm_partiton=gpu", "did you mean 'slurm_partition'"),
    ("no_equals_sign", "expects KEY=VALUE"),
    ("=gpu", "expects KEY=VALUE"),
])
def test_bad_pairs_are_one_line(types, pair, message):
    with pytest.raises(UserError) as err:
        slurm.parse_parameters([pair], types)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_names_the_accepted_ones(types):
    with pytest.raises(UserError) as err:
        slurm.parse_parameters(["foo=1"], types)
    assert "slurm_partition" in str(err.value) and "timeout_min" in str(err.value)


@pytest.mark.parametrize("text, minutes", [("90", 90), ("01:30:00", 90), ("1:30", 2), ("0:59", 1), ("2-00", 2880),
                                           ("1-02:03:04", 1564)])
def test_slurm_time(text, minutes):
    assert slurm.parse_time(text) == minutes


@pytest.mark.parametrize("text", ["", "1h", "0", "00:00:00", "-5"])
def test_slurm_time_bad(text):
    with pytest.raises(UserError, match="--slurm-time"):
        slurm.parse_time(text)


def test_slurm_extra_lines():
    assert slurm.parse_extra(["--constraint=a100", "--exclusive", "#SBATCH --mail-type=END", "--begin now"]) == \
        {"constraint": "a100", "exclusive": True, "mail_type": "END", "begin": "now"}
    with pytest.raises(UserError, match="one sbatch option"):
        slurm.parse_extra(["constraint=a100"])


def test_time_estimate_formula():
    est = slurm.estimate_minutes(["ours", "cmr-tto"], "paper", "cuda", per_shard=10)
    per = slurm.SECONDS_PER_INSTANCE[("paper", "cuda")]
    assert est["minutes"] == max(slurm.MIN_MINUTES, -(-int(slurm.SETUP_MINUTES * 60 + slurm.MARGIN * 10 * 2 * per)
                                                         // 60))
    measured = slurm.estimate_minutes(["ours"], "paper", "cuda", per_shard=100, measured_s={"ours": 6.0})
    assert measured["per_instance_s"] == {"ours": 6.0} and measured["source"] == {"ours": "measured"}
    assert measured["minutes"] == slurm.SETUP_MINUTES + 15  # 1.5 x 100 x 6 s = 15 min
    assert slurm.estimate_minutes(["ours"], "fast", "cpu", per_shard=1)["minutes"] == slurm.MIN_MINUTES


def test_default_parameters():
    gpu = slurm.default_parameters(run_name="cub-paper", device="cuda", loader_workers=2, num_shards=8)
    assert gpu == {"name": "bench-cub-paper", "slurm_array_parallelism": 8, "cpus_per_task": 4,
                   "slurm_gpus_per_task": 1}
    cpu = slurm.default_parameters(run_name="r", device="cpu", loader_workers=0, num_shards=2)
    assert "slurm_gpus_per_task" not in cpu and cpu["cpus_per_task"] == 4


@pytest.mark.parametrize("env, count, device", [
    ({"SLURM_LOCALID": "3"}, 4, "cuda:3"),                         # srun, all node GPUs visible
    ({"SLURM_LOCALID": "5"}, 4, "cuda:1"),                         # more ranks than GPUs: wrap
    ({"LOCAL_RANK": "1", "SLURM_LOCALID": "0"}, 2, "cuda:1"),      # torchrun's LOCAL_RANK wins
    ({"SLURM_LOCALID": "2", "CUDA_VISIBLE_DEVICES": "5"}, None, "cuda:0"),  # srun --gpus-per-task=1 bound one
    ({"SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": "4,5"}, None, "cuda:1"),
    ({}, 4, "cuda"),                                               # no launcher: torch's current device
])
def test_gpu_pinning(env, count, device):
    assert pinned_device("cuda", env, count) == device


def test_pinning_keeps_cpu_and_explicit_devices():
    assert pinned_device("cpu", {"SLURM_LOCALID": "1"}, 4) == "cpu"
    assert pinned_device("cuda:2", {"SLURM_LOCALID": "1"}, 4) == "cuda:2"


@pytest.mark.parametrize("env, refused", [
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"}, True),  # batch script of `sbatch -n 2`
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "4294967294"}, True),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1"}, False),  # srun task
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False),
    ({"SLURM_NTASKS": "2"}, False),                                 # not inside a job
])
def test_batch_step_with_several_tasks_is_refused(env, refused):
    if refused:
        with pytest.raises(UserError, match="srun bench run"):
            check_slurm_step(env)
    else:
        check_slurm_step(env)


def test_srun_task_takes_its_shard(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SLURM_STEP_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert env_shard() == (1, 2)


def test_run_directory_files_follow_the_umask(tmp_path):
    """With umask 022 every file of a run is 0644 (group and others read), folders 0755."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--methods", "ours", "--out", str(out), *TINY,
                           "--limit", "1"], capture_output=True, text=True, preexec_fn=lambda: os.umask(0o022),
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = [p for p in out.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(files) >= 4  # manifest, record, artifact, view
    modes = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in out.rglob("*") if p.is_dir()} == {"0o755"}


def test_slurm_options_need_the_slurm_launcher(tmp_path):
    for args in (["--slurm-time", "10"], ["--detach"], ["--slurm", "slurm_partition=gpu"]):
        proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--methods", "ours", "--out",
                               str(tmp_path / "x"), *TINY, *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "needs --launcher slurm" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()
