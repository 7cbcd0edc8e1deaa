"""Slurm through submitit: typed parameters, defaults, submission, waiting, and the run's lease.

* :func:`parameter_types` reads the parameters submitit accepts (its AutoExecutor's generic ones and
  ``slurm_`` + every argument of its sbatch-script builder) with their declared types;
  :func:`parse_parameters` turns ``--slurm KEY=VALUE`` texts into typed values.
* :func:`default_parameters` fills what a user would otherwise have to know: job name ``bench-<run>``,
  one GPU per task on ``--device cuda``, CPUs per task, and a time limit estimated from the work
  (:func:`estimate_minutes`).
* :func:`submit` submits the array (an sbatch failure is one line), :func:`wait` shows the array's
  tasks and the run's instances until every task has ended and says in one line what did not finish.
* :class:`Lease` (``RUN/.slurm-job.json``) names the live array writing a run directory, so a second
  submission into it is refused; it is stale once Slurm no longer knows the job.

Slurm is asked through its own commands (``squeue``, ``sacct``, ``scancel``), never through
submitit's watcher, so a cluster without accounting polls quietly.
"""
from __future__ import annotations

import collections.abc
import contextlib
import inspect
import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import typing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import UserError

#: Slurm job states after which a task never runs again (a requeued task is PENDING, not here).
FINAL_STATES = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}
#: Arguments of submitit's sbatch builder that are not parameters.
_NOT_PARAMETERS = {"command", "folder", "map_count"}
#: Seconds per instance and method when the run has no record to measure yet, by (profile, device
#: kind); deliberately generous (the MeshInversion paper profile does 2 x 200 Adam steps per instance).
SECONDS_PER_INSTANCE = {("paper", "cuda"): 120, ("paper", "cpu"): 1800, ("fast", "cuda"): 20, ("fast", "cpu"): 120}
#: Minutes added to every task for Python start-up, weight loading and the first batch.
SETUP_MINUTES = 5
#: The estimate's safety factor, and its floor in minutes.
MARGIN, MIN_MINUTES = 1.5, 10
#: How often :func:`wait` asks Slurm (seconds); ``BENCH_SLURM_POLL_S`` overrides it.
POLL_S = 10.0


# ---------------------------------------------------------------------------------------------
# typed parameters


def parameter_types() -> dict[str, Any]:
    """Every parameter ``--slurm`` accepts -> its type as submitit declares it."""
    from submitit.auto.auto import AutoExecutor
    from submitit.slurm import slurm as submitit_slurm

    types: dict[str, Any] = dict(AutoExecutor._typed_parameters())
    builder = submitit_slurm._make_sbatch_string
    hints = typing.get_type_hints(builder)
    for name in inspect.signature(builder).parameters:
        if name not in _NOT_PARAMETERS:
            types[f"slurm_{name}"] = hints.get(name, str)
    types["slurm_max_num_timeout"] = int  # an executor argument: how many time-limit requeues
    return types


def parse_parameters(pairs, types: dict[str, Any] | None = None) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> ``{key: typed value}``.

    Raises:
        UserError: a pair without ``=``, an unknown key (the message lists the accepted ones) or a value
            that is not of the key's type.
    """
    types = parameter_types() if types is None else types
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = str(pair).partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--slurm expects KEY=VALUE (e.g. slurm_partition=gpu), got {pair!r}")
        if key not in types:
            from bench.errors import did_you_mean

            raise UserError(f"--slurm {key}: not a submitit Slurm parameter{did_you_mean(key, types)}")
        out[key] = coerce(key, text.strip(), types[key])
    return out


def coerce(key: str, text: str, hint: Any) -> Any:
    """``text`` as a value of type ``hint`` (int, float, bool, str, Optional/Union of them, a list of
    strings as ``[a, b]`` or one string, a mapping as ``{k: v}``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        options = [a for a in args if a is not type(None)]
        if type(None) in args and text.lower() in ("none", "null", ""):
            return None
        errors = []
        for option in sorted(options, key=lambda a: a is str):  # str accepts anything: try it last
            try:
                return coerce(key, text, option)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[-1] if errors else f"--slurm {key}={text!r}: not a valid value")
    if hint is bool:
        value = _BOOLS.get(text.lower())
        if value is None:
            raise UserError(f"--slurm {key}={text!r}: expected true or false")
        return value
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            raise UserError(f"--slurm {key}={text!r}: expected {'an integer' if hint is int else 'a number'}") from None
    if hint is str or hint is Any:
        return text
    if origin in (list, tuple, collections.abc.Iterable):
        value = _yaml(key, text)
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise UserError(f"--slurm {key}={text!r}: expected a list of strings, e.g. {key}='[a, b]'")
        return [str(v) for v in value]
    if origin is dict:
        value = _yaml(key, text)
        if not isinstance(value, dict):
            raise UserError(f"--slurm {key}={text!r}: expected a mapping, e.g. {key}='{{constraint: a100}}'")
        return value
    return text


_BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _yaml(key: str, text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"--slurm {key}={text!r}: not a valid value ({str(err).splitlines()[0]})") from None


def parse_time(text: str) -> int:
    """``--slurm-time``: minutes (``90``), ``MM:SS``, ``HH:MM:SS`` or ``D-HH[:MM[:SS]]`` -> whole minutes
    (seconds round up)."""
    value = str(text).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
    if not match:
        raise UserError(f"--slurm-time {text!r}: give minutes (90) or HH:MM:SS (01:30:00)")
    days, a, b, c = (int(g) if g is not None else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:
        seconds = a * 60
    if seconds <= 0:
        raise UserError(f"--slurm-time {text!r}: the time limit must be positive")
    return math.ceil(seconds / 60)


def parse_extra(lines) -> dict[str, Any]:
    """``--slurm-extra`` sbatch options (``--constraint=a100``, ``--exclusive``, ``#SBATCH --mail-type=END``)
    -> submitit's ``additional_parameters``."""
    out: dict[str, Any] = {}
    for line in lines:
        text = str(line).strip().removeprefix("#SBATCH").strip()
        match = re.fullmatch(r"--([A-Za-z][\w-]*)(?:[= ](.+))?", text)
        if not match:
            raise UserError(f"--slurm-extra {line!r}: give one sbatch option, e.g. --constraint=a100 or --exclusive")
        out[match.group(1).replace("-", "_")] = match.group(2).strip() if match.group(2) else True
    return out


# ---------------------------------------------------------------------------------------------
# defaults


def estimate_minutes(methods: list[str], profile: str, device: str, per_shard: int,
                     measured_s: dict[str, float] | None = None) -> dict:
    """The time limit of one task: ``SETUP_MINUTES + MARGIN x per_shard x sum of each method's seconds
    per instance``, at least ``MIN_MINUTES``. A method's seconds per instance are its measured median in
    this run directory (``measured_s``, from finished records) when there is one, else
    ``SECONDS_PER_INSTANCE[profile, device]``. Returns ``{"minutes", "per_instance_s", "source"}``."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    table = SECONDS_PER_INSTANCE.get((profile, kind), SECONDS_PER_INSTANCE[("paper", kind)])
    per_instance = {m: float((measured_s or {}).get(m) or table) for m in methods}
    minutes = SETUP_MINUTES + MARGIN * per_shard * sum(per_instance.values()) / 60
    return {"minutes": max(MIN_MINUTES, math.ceil(minutes)), "per_instance_s": per_instance,
            "source": {m: "measured" if (measured_s or {}).get(m) else f"table ({profile}, {kind})"
                       for m in methods}}


def measured_seconds(run_root: Path, methods: list[str]) -> dict[str, float]:
    """Median ``timings.total`` of each method's ok records already in the run directory."""
    import statistics

    from bench.store import RunDir

    run = RunDir(run_root)
    out = {}
    for method in methods:
        totals = [r["timings"]["total"] for r in run.records(method)
                  if r.get("status") == "ok" and isinstance((r.get("timings") or {}).get("total"), (int, float))]
        if totals:
            out[method] = float(statistics.median(totals))
    return out


def default_parameters(*, run_name: str, device: str, loader_workers: int, num_shards: int) -> dict[str, Any]:
    """Defaults a Slurm user expects (the command line and ``--slurm`` win): job name ``bench-<run>``,
    one GPU per task on CUDA, CPUs per task = the data loader's workers + 2 on CUDA (+ 4 on CPU, where
    the methods themselves compute), every shard running at once."""
    params: dict[str, Any] = {"name": f"bench-{run_name}", "slurm_array_parallelism": num_shards,
                              "cpus_per_task": loader_workers + (2 if device.startswith("cuda") else 4)}
    if device.startswith("cuda"):
        params["slurm_gpus_per_task"] = 1
    return params


# ---------------------------------------------------------------------------------------------
# Slurm's commands


@dataclass
class Answer:
    ok: bool
    out: str
    err: str


def slurm_command(*args: str, timeout: float = 30) -> Answer:
    """Run a Slurm client command quietly (its stderr is kept for messages, never printed)."""
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return Answer(False, "", f"{args[0]} is not installed here")
    except subprocess.TimeoutExpired:
        return Answer(False, "", f"{args[0]} did not answer within {timeout:.0f} s")
    return Answer(proc.returncode == 0, proc.stdout, proc.stderr)


def slurm_said(text: str) -> str:
    """The informative line of a Slurm client's stderr (``sbatch: error: ...`` without the prefix)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^\w+: (error|fatal):", line)]
    line = (errors or lines or ["no message"])[-1]
    return re.sub(r"^\w+: (error|fatal): ", "", line)


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise UserError("--launcher slurm: Slurm's sbatch is not on PATH; run on a Slurm login node, or use "
                        "--launcher local")


#: Reasons for which a pending task never starts (Slurm's squeue %r).
NEVER_STARTS = {"PartitionTimeLimit", "PartitionNodeLimit", "PartitionConfig", "BadConstraints", "InvalidAccount",
                "InvalidQOS", "QOSMaxWallDurationPerJobLimit", "AssocMaxWallDurationPerJobLimit",
                "QOSMaxGRESPerJob", "AssocMaxGRESPerJob", "PartitionDown", "DependencyNeverSatisfied"}


def task_states(job_id: str) -> dict[int, tuple[str, str]] | None:
    """``{array task: (state, reason)}`` of job ``job_id`` from ``squeue`` (finished tasks stay listed
    for Slurm's MinJobAge); ``{}`` when Slurm no longer knows the job, None when squeue could not answer."""
    answer = slurm_command("squeue", "-h", "-j", job_id, "--states=all", "-o", "%i|%T|%r")
    if not answer.ok:
        if "Invalid job id" in answer.err:
            return {}  # Slurm has forgotten the job (every task ended longer than MinJobAge ago)
        return None
    states: dict[int, tuple[str, str]] = {}
    pending_range = re.compile(rf"^{job_id}_\[(.+)\]$")
    for line in answer.out.splitlines():
        ident, state, reason = (line.strip().split("|") + ["", ""])[:3]
        if (task := _task_of(ident, job_id)) is not None:
            states[task] = (state, reason)
        elif (match := pending_range.match(ident)):
            for task in _expand_range(match.group(1)):
                states[task] = (state, reason)
    return states


def sacct_states(job_id: str) -> dict[int, str]:
    """``{array task: state}`` from accounting (empty when accounting is off or unreachable)."""
    answer = slurm_command("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State")
    out: dict[int, str] = {}
    if answer.ok:
        for line in answer.out.splitlines():
            ident, _, state = line.partition("|")
            if (task := _task_of(ident, job_id)) is not None:
                out[task] = state.split()[0] if state else "UNKNOWN"
    return out


def _task_of(ident: str, job_id: str) -> int | None:
    """The array task of a squeue/sacct job id (``123_4`` -> 4); submitit submits a single shard as a
    plain job (``123`` -> 0)."""
    if ident == job_id:
        return 0
    head, _, task = ident.partition("_")
    return int(task) if head == job_id and task.isdigit() else None


def _expand_range(text: str) -> list[int]:
    """``0-3,5%2`` -> [0, 1, 2, 3, 5]."""
    out = []
    for part in text.split("%")[0].split(","):
        a, _, b = part.partition("-")
        if a.isdigit():
            out += list(range(int(a), int(b or a) + 1)) if (not b or b.isdigit()) else [int(a)]
    return out


def job_alive(job_id: str) -> bool | None:
    """Whether any task of ``job_id`` can still run (None: Slurm could not be asked)."""
    states = task_states(job_id)
    if states is None:
        return None
    return any(state not in FINAL_STATES for state, _ in states.values())


def cancel(job_id: str) -> Answer:
    return slurm_command("scancel", job_id)


# ---------------------------------------------------------------------------------------------
# the lease


class Lease:
    """``RUN/.slurm-job.json``: the Slurm job writing this run directory (written at submission, removed
    when the submitting command has seen every task end; stale once Slurm no longer runs the job)."""

    def __init__(self, root: str | Path):
        self.path = Path(root) / ".slurm-job.json"

    def read(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("job_id"), str) else None

    def check(self) -> None:
        """Refuse a second writer while the leased job can still run; drop a stale lease.

        Raises:
            UserError: a live Slurm job holds the run directory.
        """
        data = self.read()
        if data is None:
            return
        alive = job_alive(data["job_id"]) if shutil.which("squeue") else None
        if alive:
            raise UserError(f"{self.path.parent} is being written by Slurm job {data['job_id']} (submitted "
                            f"{data.get('submitted', '?')} from {data.get('host', '?')}); follow it with `squeue -j "
                            f"{data['job_id']}`, cancel it with `scancel {data['job_id']}`, or use another --out")
        if alive is False:
            self.clear()

    def write(self, job_id: str, tasks: int, folder: Path) -> None:
        from bench.store import atomic_write_json

        atomic_write_json(self.path, {"job_id": job_id, "tasks": tasks, "logs": str(folder),
                                      "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
                                      "command": " ".join(["bench", *sys.argv[1:]])[:300]})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# submission and waiting


def submit(executor, function, args: list) -> list:
    """``executor.map_array(function, args)``; an sbatch failure becomes one line (what Slurm said)."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    quiet = io.StringIO()
    try:
        with contextlib.redirect_stderr(quiet):  # submitit prints sbatch's stderr before raising
            return executor.map_array(function, args)
    except (FailedJobError, FailedSubmissionError, subprocess.SubprocessError, OSError) as err:
        said = slurm_said(str(err) or quiet.getvalue())
        hint = ("is slurmctld running? check `sinfo`" if "contact slurm controller" in said.lower()
                else "check the --slurm-* options against `sinfo` and `scontrol show partition`")
        raise UserError(f"Slurm refused the job: {said} — {hint}") from None


def result_outcome(path: Path) -> tuple[str, str] | None:
    """``("success"|"error", message)`` from a task's submitit result file, None while there is none."""
    from submitit.core.utils import pickle_load

    if not path.exists():
        return None
    try:
        outcome, value = pickle_load(path)
    except Exception:  # noqa: BLE001 - a half-written file: read it on the next poll
        return None
    if outcome == "success":
        return "success", ""
    lines = [line for line in str(value).strip().splitlines() if line.strip()]
    last = re.sub(r"^(?:[A-Za-z_]\w*\.)+(\w+: )", r"\1", lines[-1] if lines else "failed")  # a.b.KeyError -> KeyError
    return "error", last.removeprefix("UserError: ")


def wait(job_id: str, jobs: list, *, done_count, total: int, progress: bool = True,
         poll_s: float | None = None) -> list[str]:
    """Wait until every task of the array has ended; returns one problem per task that did not finish.

    A task has ended when its result file exists, or when Slurm reports it in a final state (or no
    longer knows it) on two polls in a row with no result file (cancelled, killed, node failure).
    ``done_count()`` counts the run's finished instances for the progress line.
    """
    from bench.progress import progress_bar

    poll_s = float(os.environ.get("BENCH_SLURM_POLL_S", POLL_S if poll_s is None else poll_s))
    ended: dict[int, str] = {}  # task -> "" (finished) or its problem
    suspect: Counter = Counter()
    with progress_bar(enabled=progress) as bar:
        line = bar.add_task(f"job {job_id}", total=total)
        while len(ended) < len(jobs):
            states = task_states(job_id)
            for task, job in enumerate(jobs):
                if task in ended:
                    continue
                outcome = result_outcome(job.paths.result_pickle)
                if outcome is not None:
                    ended[task] = "" if outcome[0] == "success" else f"task {task} failed: {outcome[1]}"
                    continue
                state, reason = (None, "") if states is None else states.get(task, ("GONE", ""))
                if state == "PENDING" and reason in NEVER_STARTS:
                    cancel(job_id)
                    raise UserError(f"Slurm job {job_id}: task {task} can never start ({reason}: more CPUs, GPUs, "
                                    "memory or time than the partition allows, or a bad account/QOS); cancelled the "
                                    "array — change the --slurm-* options (see `scontrol show partition`)")
                elif state in FINAL_STATES or state == "GONE":
                    suspect[task] += 1
                    if suspect[task] >= 2:
                        final = state if state != "GONE" else sacct_states(job_id).get(task, "ended")
                        ended[task] = f"task {task} {final} before finishing its shard"
                else:
                    suspect.pop(task, None)
            counts = Counter(state for state, _ in states.values()) if states else Counter()
            where = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if states is not None else \
                "squeue did not answer"
            bar.update(line, completed=done_count(), description=f"job {job_id} [{where}]")
            if len(ended) < len(jobs):
                time.sleep(poll_s)
        bar.update(line, completed=done_count())
    return [problem for _, problem in sorted(ended.items()) if problem]
