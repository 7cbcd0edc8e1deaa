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
    check_slurm_step()
    for rank_key, world_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_key in os.environ and world_key in os.environ:
            rank, world = _env_int(rank_key), _env_int(world_key)
            if world < 1 or not 0 <= rank < world:
                raise UserError(f"{rank_key}={rank} {world_key}={world} from the environment: the rank must be in "
                                f"0..{world_key}-1; unset them or fix the launcher")
            if world > 1:
                return rank, world
    return None


def check_slurm_step(env=None) -> None:
    """Refuse a Slurm allocation of several tasks entered without ``srun``: the batch script itself is
    one process, so it would run shard 0 of SLURM_NTASKS and leave the rest undone.

    Raises:
        UserError: ``SLURM_NTASKS`` > 1 inside a job (``SLURM_JOB_ID``) but not inside a job step (no
            ``SLURM_STEP_ID``, or the batch step's).
    """
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env or "RANK" in env:
        return
    try:
        ntasks = int(env.get("SLURM_NTASKS", "1"))
    except ValueError:
        return
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID"))
    if ntasks > 1 and (step is None or step in BATCH_STEP_IDS):
        raise UserError(f"this Slurm job has SLURM_NTASKS={ntasks} but bench runs in its batch script, not in a "
                        f"job step: start it with `srun bench run ...` so each of the {ntasks} tasks takes its shard")


#: What SLURM_STEP_ID reads in a batch script (Slurm's SLURM_BATCH_SCRIPT step id, and its name).
BATCH_STEP_IDS = {"4294967294", "batch"}


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


def pinned_device(device: str, env=None, device_count: int | None = None) -> str:
    """The GPU of one rank on a multi-GPU node: ``cuda`` -> ``cuda:K`` with K its local rank
    (``LOCAL_RANK`` from torchrun, else ``SLURM_LOCALID`` from srun) modulo the visible devices; when
    the launcher bound one GPU to the rank (``CUDA_VISIBLE_DEVICES`` lists one, e.g. srun
    ``--gpus-per-task=1``) that is ``cuda:0``. ``cpu`` and an explicit ``cuda:K`` are kept.

    ``env`` defaults to ``os.environ``; ``device_count`` to ``CUDA_VISIBLE_DEVICES``' length, else torch's.
    """
    env = os.environ if env is None else env
    if device != "cuda":
        return device
    local = env.get("LOCAL_RANK", env.get("SLURM_LOCALID"))
    if local is None or not str(local).strip().isdigit():
        return device
    if device_count is None:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            device_count = len([d for d in visible.split(",") if d.strip()])
        else:
            import torch

            device_count = torch.cuda.device_count()
    return f"cuda:{int(local) % device_count}" if device_count > 1 else "cuda:0"


def worker_device(device: str) -> str:
    """The pinned device of this worker, checked here: a submitting launcher may run on a GPU-less
    login node, so CUDA is checked where the work runs.

    Raises:
        UserError: CUDA asked but not visible on this host.
    """
    import socket

    from bench.devices import parse_device

    try:
        return parse_device(pinned_device(device), require_visible=True)
    except UserError as err:
        if "SLURM_JOB_ID" not in os.environ:
            raise
        raise UserError(f"on {socket.gethostname()} (Slurm job {os.environ['SLURM_JOB_ID']}): {err}, or request a GPU "
                        "(--slurm-gpus-per-task 1, a GPU partition)") from None


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
        opts = dataclasses.replace(opts, device=worker_device(opts.device))
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
    """submitit callable for one shard; requeued on preemption/timeout and resumes from records.

    ``timeout_min``: the task's time limit. At a time-limit signal the task is requeued unless
    ``MAX_STALLS`` attempts in a row finished no instance, so an instance longer than the limit ends
    the task with a message instead of requeueing it for ever.
    """

    MAX_STALLS = 3

    def __init__(self, payload: str, num_shards: int, timeout_min: int | None = None, stalls: int = 0):
        self.payload, self.num_shards, self.timeout_min, self.stalls = payload, num_shards, timeout_min, stalls
        self._started: tuple[float, int] | None = None

    def __call__(self, shard: int) -> dict:
        opts = options_from_json(self.payload)
        self._started = (time.time(), count_records(opts))
        return run_shard(opts, shard, self.num_shards, progress=False)

    def checkpoint(self, shard: int):
        import submitit

        stalls = 0
        if self._started is not None and self.timeout_min:
            since, records = self._started
            timed_out = time.time() - since >= 0.8 * self.timeout_min * 60 - 60
            if timed_out and count_records(options_from_json(self.payload)) == records:
                stalls = self.stalls + 1
                if stalls >= self.MAX_STALLS:
                    raise UserError(f"no instance finished in {stalls} attempts at the time limit "
                                    f"({self.timeout_min} min): give a longer --slurm-time")
        return submitit.helpers.DelayedSubmission(ShardJob(self.payload, self.num_shards, self.timeout_min, stalls),
                                                  shard)


def run_submitit_local(opts: RunOptions, num_shards: int) -> int:
    """The shards as a job array of submitit's local executor (no cluster; the tests' stand-in)."""
    import submitit

    folder = RunDir(opts.out).log_dir / "submitit"
    executor = submitit.AutoExecutor(folder=str(folder), cluster="local")
    executor.update_parameters(timeout_min=24 * 60)
    jobs = executor.map_array(ShardJob(options_to_json(opts), num_shards), list(range(num_shards)))
    from bench.slurm import result_outcome

    errors = []
    for job in jobs:
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - report every failed task
            outcome = result_outcome(job.paths.result_pickle)
            errors.append(f"task {job.job_id}: {outcome[1] if outcome else str(exc).strip() or type(exc).__name__}")
    if errors:
        raise UserError(f"{len(errors)} submitit task(s) failed: {errors[0]} — logs in {folder}")
    return 0


def run_slurm(opts: RunOptions, num_shards: int, dataset_size: int, params: dict, *, detach: bool = False,
              progress: bool = True, on_submit=None) -> dict:
    """Submit the shards as a Slurm job array (submitit) and, unless ``detach``, wait for every task.

    ``params``: typed submitit parameters (:mod:`bench.slurm`); ``on_submit(job_id)`` runs once the
    array is accepted. Returns ``{"job_id", "folder"}``.

    Raises:
        UserError: Slurm refused the job, or a task ended without finishing its shard (the message says
            that rerunning the same command resumes).
    """
    import submitit

    from bench import slurm

    slurm.require_sbatch()
    run = RunDir(opts.out)
    folder = run.log_dir / "submitit"
    params = dict(params)
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm",
                                     slurm_max_num_timeout=params.pop("slurm_max_num_timeout", 1000))
    try:
        executor.update_parameters(**params)
    except (ValueError, TypeError, NameError, AssertionError) as err:
        raise UserError(f"--slurm: submitit rejected the parameters: {str(err).strip().splitlines()[0]}") from None
    timeout = params.get("slurm_time", params.get("timeout_min"))
    jobs = slurm.submit(executor, ShardJob(options_to_json(opts), num_shards, timeout), list(range(num_shards)))
    job_id = jobs[0].job_id.split("_")[0]
    lease = slurm.Lease(run.root)
    lease.write(job_id, num_shards, folder)
    if on_submit is not None:
        on_submit(job_id)
    say = _stderr_line
    say(f"submitted Slurm job {job_id} (array tasks 0-{num_shards - 1}); logs in {folder}")
    if detach:
        say(f"detached: follow it with `squeue -j {job_id}` and `tail -f {folder}/{job_id}_*_log.err`; cancel it "
            f"with `scancel {job_id}`; rerun the same command afterwards to finish what is left")
        return {"job_id": job_id, "folder": str(folder)}
    total = expected_records(opts, dataset_size)
    try:
        problems = slurm.wait(job_id, jobs, done_count=lambda: count_records(opts), total=total,
                              progress=progress)
    except KeyboardInterrupt:
        answer = slurm.cancel(job_id)
        lease.clear()
        what = f"cancelled Slurm job {job_id}" if answer.ok else \
            f"could not cancel Slurm job {job_id} ({slurm.slurm_said(answer.err)}); cancel it with `scancel {job_id}`"
        raise Interrupted(f"interrupted: {what}; {count_records(opts)}/{total} instances are done — rerun the same "
                          "command to resume") from None
    lease.clear()
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"Slurm job {job_id}: {problems[0]}{more}; {count_records(opts)}/{total} instances are done "
                        f"— rerun the same command to resume (logs in {folder})")
    return {"job_id": job_id, "folder": str(folder)}


class Interrupted(UserError):
    """Ctrl-C while waiting: exit 130, as a shell reports SIGINT."""

    exit_code = 130


def _stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


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
