"""Launchers: run the shards of a run in this process, in local worker processes, or through submitit.

Shard = instance index mod N. Every launcher ends in :func:`run_shard`; merging is nothing more than
all shards writing their records into the same run directory.

* ``local``: one worker process per visible GPU (``CUDA_VISIBLE_DEVICES`` set per worker) or, on CPU,
  ``--shards`` processes sharing the cores.
* ``slurm``: a submitit job array on a Slurm cluster (requeued on preemption; a requeued task resumes
  from the records already written). ``submitit-local`` runs the same job array with submitit's local
  executor (no cluster needed; used by the tests).
* A process started by ``torchrun`` or ``srun`` takes its shard from ``RANK``/``WORLD_SIZE``
  (or ``SLURM_PROCID``/``SLURM_NTASKS``) when no ``--shard`` is given.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.errors import UserError
from bench.runner import RunOptions, Worker, shard_indices
from bench.store import RunDir


def options_to_json(opts: RunOptions) -> str:
    return json.dumps({**dataclasses.asdict(opts), "out": str(opts.out)})


def options_from_json(text: str) -> RunOptions:
    data = json.loads(text)
    data["out"] = Path(data["out"])
    return RunOptions(**data)


def env_shard() -> tuple[int, int] | None:
    """(rank, world size) from torchrun (RANK/WORLD_SIZE) or srun (SLURM_PROCID/SLURM_NTASKS), if > 1.

    Raises:
        UserError: a value is not an integer, or the rank is outside 0..world-1.
    """
    for rank_key, world_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_key in os.environ and world_key in os.environ:
            rank, world = _env_int(rank_key), _env_int(world_key)
            if world < 1 or not 0 <= rank < world:
                raise UserError(f"{rank_key}={rank} {world_key}={world} from the environment: the rank must be in "
                                f"0..{world_key}-1; unset them or fix the launcher")
            if world > 1:
                return rank, world
    return None


def _env_int(key: str) -> int:
    text = os.environ[key].strip()
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{key}={os.environ[key]!r} in the environment is not an integer; unset it or fix "
                        "the launcher") from None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the worker gets SIGKILL when the process that started it dies (PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def local_device(opts: RunOptions) -> str:
    """On a torchrun/srun multi-GPU node, pin each rank to its local GPU."""
    if opts.device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return opts.device


def run_shard(opts: RunOptions, shard: int, num_shards: int, progress: bool = True, components=None) -> dict:
    """Run one shard in this process (the unit every launcher schedules).

    ``components``: ``(dataset, {spec: method})`` already built in this process (else built here).
    """
    import logging

    run = RunDir(opts.out)
    run.log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run.log_dir / f"shard-{shard:03d}-of-{num_shards:03d}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("bench")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        opts = dataclasses.replace(opts, device=local_device(opts))
        dataset, methods = components if components is not None else (None, None)
        return Worker(opts, shard, num_shards, progress=progress, dataset=dataset, methods=methods).run_all()
    finally:
        logger.removeHandler(handler)
        handler.close()


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover
        return []


def default_num_shards(device: str) -> int:
    return max(1, len(visible_gpus())) if device.startswith("cuda") else 1


def run_local(opts: RunOptions, num_shards: int, dataset_size: int, progress: bool = True) -> int:
    """Spawn ``num_shards`` worker processes and show one aggregated progress bar; returns the exit code."""
    gpus = visible_gpus() if opts.device.startswith("cuda") else []
    if gpus and num_shards > len(gpus):
        raise UserError(f"--shards {num_shards} but only {len(gpus)} GPU(s) are visible; use --shards {len(gpus)}")
    run = RunDir(opts.out)
    run.log_dir.mkdir(parents=True, exist_ok=True)
    payload = options_to_json(opts)
    threads = max(1, (os.cpu_count() or 1) // num_shards)
    procs = []
    for shard in range(num_shards):
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(threads))
        env["BENCH_PARENT_PID"] = str(os.getpid())
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[shard]
        out = open(run.log_dir / f"worker-{shard:03d}.out", "ab")
        procs.append((subprocess.Popen([sys.executable, "-m", "bench.launch", payload, str(shard), str(num_shards)],
                                       env=env, stdout=out, stderr=subprocess.STDOUT,
                                       preexec_fn=_die_with_parent if sys.platform == "linux" else None), out))
    total = expected_records(opts, dataset_size)
    from bench.progress import progress_bar

    with progress_bar(enabled=progress) as bar:
        task = bar.add_task(f"{num_shards} workers", total=total)
        while any(p.poll() is None for p, _ in procs):
            bar.update(task, completed=count_records(opts))
            time.sleep(0.5)
        bar.update(task, completed=count_records(opts))
    codes = [p.wait() for p, fh in procs]
    for _, fh in procs:
        fh.close()
    bad = [i for i, c in enumerate(codes) if c != 0]
    if bad:
        log = (run.log_dir / f"worker-{bad[0]:03d}.out").read_text(errors="replace").strip().splitlines()
        tail = [line for line in log if line.startswith("error: ")][-1:] or log[-1:] or ["(no output)"]
        reason = tail[0].removeprefix("error: ")
        raise UserError(f"worker(s) {bad} failed (exit {codes[bad[0]]}): {reason} — see {run.log_dir}; "
                        "rerun the same command to resume")
    return 0


def expected_records(opts: RunOptions, dataset_size: int) -> int:
    """Records a complete run writes, for a dataset of ``dataset_size`` instances."""
    return len(shard_indices(dataset_size, opts.limit, 0, 1)) * len(opts.methods)


def count_records(opts: RunOptions) -> int:
    run = RunDir(opts.out)
    return sum(len(list((run.root / "records" / m).glob("*.json"))) for m in opts.methods
               if (run.root / "records" / m).is_dir())


class ShardJob:
    """submitit callable for one shard; requeued on preemption/timeout and resumes from records."""

    def __init__(self, payload: str, num_shards: int):
        self.payload, self.num_shards = payload, num_shards

    def __call__(self, shard: int) -> dict:
        return run_shard(options_from_json(self.payload), shard, self.num_shards, progress=False)

    def checkpoint(self, shard: int):
        import submitit

        return submitit.helpers.DelayedSubmission(ShardJob(self.payload, self.num_shards), shard)


def run_submitit(opts: RunOptions, num_shards: int, cluster: str, slurm_params: dict | None = None) -> int:
    """Submit the shards as a job array (``cluster`` = "slurm" or "local") and wait for them."""
    import submitit

    run = RunDir(opts.out)
    folder = run.log_dir / "submitit"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params = {"timeout_min": 24 * 60, "slurm_array_parallelism": num_shards}
    if opts.device.startswith("cuda"):
        params["gpus_per_node"] = 1
    if cluster == "local":
        params = {"timeout_min": params["timeout_min"]}
    params.update(slurm_params or {})
    executor.update_parameters(**params)
    jobs = executor.map_array(ShardJob(options_to_json(opts), num_shards), list(range(num_shards)))
    errors = []
    for job in jobs:
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - report every failed task
            errors.append(f"task {job.job_id}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}")
    if errors:
        raise UserError(f"{len(errors)} submitit task(s) failed: {errors[0]} — logs in {folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: ``python -m bench.launch OPTIONS_JSON SHARD NUM_SHARDS``."""
    from bench.errors import os_error_message

    argv = sys.argv[1:] if argv is None else argv
    parent = os.environ.get("BENCH_PARENT_PID")
    if parent is not None and os.getppid() != int(parent):
        return 1  # the parent died before this worker could arm PR_SET_PDEATHSIG
    opts = options_from_json(argv[0])
    try:
        summary = run_shard(opts, int(argv[1]), int(argv[2]), progress=False)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(f"error: {os_error_message(err)}", file=sys.stderr)
        return UserError.exit_code
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
