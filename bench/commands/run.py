"""``bench run``: run methods on a dataset into a resumable, shardable run directory.

Everything is validated before the first file is written: the dataset, every method's config
(profile + ``--config`` file + ``--set``), weight files and the device.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from bench.config import PROFILES


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    from bench.errors import UserError

    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard expects I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise UserError(f"--shard {text}: I must be in 0..N-1")
    return i, n


def _load_config_file(ctx, param, value):
    """Eager ``--config``: its options become this command's defaults (the command line wins)."""
    if value is None:
        return None
    from bench.manifest import sha256_file
    from bench.run_config import read_run_config, split_run_config

    data = read_run_config(value)
    names = {p.name for p in ctx.command.params if p.name not in ("config", "sets")}
    options, sets = split_run_config(data, names, str(value))
    ctx.default_map = {**(ctx.default_map or {}), **options}
    ctx.meta["run_config"] = {"path": str(Path(value).resolve()), "sha256": sha256_file(value), "values": data,
                              "sets": sets}
    return value


EPILOG = ("Every config field of a method or dataset, with its default, profile value and help: "
          "`bench config NAME [--profile P]`.")


def run_options(command):
    """The options of ``bench run`` (everything but ``--methods``), which ``bench sweep`` shares."""
    options = [
        click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), is_eager=True,
                     expose_value=True, callback=_load_config_file,
                     help="YAML/TOML file with these options and a `set:` table; the command line wins."),
        click.option("--dataset", default="synthetic", show_default=True, help="Dataset name (see `bench ls datasets`)."),
        click.option("--data-root", type=click.Path(path_type=Path), help="Dataset root folder (file datasets)."),
        click.option("--split", help="Dataset split (default: the dataset's, usually test)."),
        click.option("--limit", type=int, help="Use only the first N instances."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:K."),
        click.option("--out", type=click.Path(), help="Run directory (default results/<dataset>-<profile>)."),
        click.option("--batch-size", default=1, show_default=True, type=int, help="Instances optimised together."),
        click.option("--profile", type=click.Choice(PROFILES), default="paper", show_default=True,
                     help="paper = the released code's settings; fast = CPU-friendly."),
        click.option("--set", "sets", multiple=True, metavar="OWNER.KEY=VALUE",
                     help="Override a config field of a method or the dataset, e.g. ours.select_num=50 "
                          "(fields: `bench config NAME`)."),
        click.option("--shards", type=int, help="Number of shards (default: visible GPUs on cuda, else 1)."),
        click.option("--shard", "shard", help="Run only shard I of N (I/N), in this process."),
        click.option("--launcher", type=click.Choice(["local", "slurm", "submitit-local"]), default="local",
                     show_default=True, help="How shards are started."),
        click.option("--slurm", "slurm_opts", multiple=True, metavar="KEY=VALUE",
                     help="Any submitit parameter, typed as submitit declares it (e.g. slurm_constraint=a100, "
                          "slurm_signal_delay_s=120); wins over the --slurm-* options."),
        click.option("--slurm-partition", help="Slurm partition (default: the cluster's)."),
        click.option("--slurm-time", help="Time limit per task: minutes or HH:MM:SS (default: estimated from the "
                                          "profile and the shard size; a task at its limit is requeued and resumes)."),
        click.option("--slurm-gpus-per-task", type=int, help="GPUs per task (default: 1 with --device cuda)."),
        click.option("--slurm-cpus-per-task", type=int,
                     help="CPUs per task (default: the data loader's workers + 2 on cuda, + 4 on cpu)."),
        click.option("--slurm-mem", help="Memory per node, sbatch's syntax (e.g. 32G)."),
        click.option("--slurm-account", help="Slurm account to charge."),
        click.option("--slurm-qos", help="Slurm quality of service."),
        click.option("--slurm-array-parallelism", type=int, help="Tasks running at once (default: all shards)."),
        click.option("--slurm-extra", multiple=True, metavar="SBATCH_OPTION",
                     help="A raw sbatch option, e.g. --slurm-extra=--constraint=a100 (repeatable)."),
        click.option("--detach", is_flag=True,
                     help="--launcher slurm: submit and return; prints how to follow and cancel the job."),
        click.option("--retries", default=0, show_default=True, type=int, help="Re-attempts of failed instances."),
        click.option("--seed", default=0, show_default=True, type=int,
                     help="Run seed: every instance's randomness (candidates, subsamples, synthetic scenes) derives "
                          "from it and the instance's index."),
        click.option("--num-workers", type=int, help="DataLoader workers (default: the dataset's choice)."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command(epilog=EPILOG)
@click.option("--methods", help="Comma-separated methods, e.g. ours,cmr-tto (variants: ours@NAME).")
@run_options
@click.pass_context
def run(ctx, methods, **options):
    """Run METHODS on DATASET; rerun the same command to resume (finished instances are skipped)."""
    from bench.errors import UserError
    from bench.methods_spec import parse_methods

    if not methods:
        raise UserError("--methods is required (e.g. --methods ours,cmr-tto), on the command line or in --config")
    execute(ctx, parse_methods(methods), **options)


def execute(ctx, specs: list[str], *, config, dataset, data_root, split, limit, device, out, batch_size, profile, sets,
            shards, shard, launcher, slurm_opts, retries, seed, num_workers, quiet, detach=False,
            variant_overrides: dict[str, dict] | None = None, sweep: dict | None = None, **slurm_flags) -> Path:
    """``bench run`` of methods ``specs`` with the run options; ``variant_overrides`` (``{spec: {field:
    value}}``, typed) apply on top of ``--set``, ``sweep`` is recorded in the manifest; ``detach`` and
    ``slurm_flags`` (the ``--slurm-*`` options by their Python names) are for ``--launcher slurm``.
    Returns the run directory."""
    from bench import launch, registry
    from bench.config import parse_sets
    from bench.devices import parse_device
    from bench.errors import UserError
    from bench.locks import RunLock, exclusive
    from bench.manifest import merge_manifest, new_manifest
    from bench.run_config import merge_sets
    from bench.runner import RunOptions, build_components
    from bench.store import RunDir

    registry.get("datasets", dataset)
    run_config = ctx.meta.get("run_config")
    overrides = merge_sets(merge_sets((run_config or {}).get("sets", {}), parse_sets(sets)), variant_overrides or {})
    dataset_over = overrides.pop(dataset, {})
    if data_root is not None:
        dataset_over["data_root"] = str(data_root)
    if split is not None:
        dataset_over["split"] = split
    _check_counts(batch_size=batch_size, limit=limit, retries=retries, shards=shards, num_workers=num_workers)
    shard_pair = _parse_shard(shard) or launch.env_shard()
    slurm_given = _slurm_options(slurm_opts, {k.removeprefix("slurm_"): v for k, v in slurm_flags.items()},
                                 launcher, detach)
    device = parse_device(device, require_visible=launcher == "local")
    if out is not None and not str(out).strip():
        raise UserError("--out is empty; pass a folder for the run (default: results/<dataset>-<profile>)")
    default_out = out is None
    out = Path(out) if out is not None else Path("results") / f"{dataset}-{profile}"
    opts = RunOptions(methods=specs, dataset=dataset, out=out, dataset_overrides=dataset_over,
                      method_overrides=overrides, profile=profile, device=device, batch_size=batch_size,
                      limit=limit, seed=seed, retries=retries, num_workers=num_workers)

    # Validate everything before any work starts: dataset root, method options, weight files.
    ds, built = build_components(opts)
    if len(ds) == 0:
        raise UserError(f"dataset {dataset!r} yields no instances (check --data-root and --split)")
    for method in built.values():
        method.check_weights()
    n = shards or launch.default_num_shards(device)
    if launcher == "slurm" and shard_pair is None:
        from bench import slurm as slurm_mod

        slurm_mod.require_sbatch()
        slurm_params, estimate = _slurm_parameters(slurm_given, out, specs, profile, device, ds, limit, n,
                                                   num_workers)
    described = {spec: method.describe() for spec, method in built.items()}
    check_out_path(out)
    run_dir = RunDir(out)
    manifest = new_manifest(
        dataset={**ds.describe(), "instances": len(ds) if limit is None else min(limit, len(ds))},
        methods=described, metrics=instance_metric_protocols(), device=device, seed=seed, profile=profile,
        limit=limit, command=["bench", *sys.argv[1:]], run_config=run_config, sweep=sweep)
    previous = run_dir.read_manifest() if run_dir.exists() else None
    if previous is None:
        _check_orphan_records(run_dir, ds, described, seed, profile)
    merge_manifest(previous, manifest, out, has_records=lambda m: bool(run_dir.records(m)))  # refuse early
    if shard_pair is None:
        from bench.slurm import Lease

        Lease(out).check()  # a live Slurm array still writing this run directory: refuse a second writer
    prepare_out_dir(out)

    # One `bench run` per run directory; shard processes share it and coordinate per instance instead.
    lock = RunLock(out).acquire() if shard_pair is None else None
    try:
        with exclusive(out / ".manifest.lock"):  # the read-merge-write of processes sharing the run
            previous = run_dir.read_manifest() if run_dir.exists() else None
            run_dir.write_manifest(merge_manifest(previous, manifest, out,
                                                  has_records=lambda m: bool(run_dir.records(m))))
        if default_out:
            _link_latest(out)
        if shard_pair is not None:
            launch.run_shard(opts, *shard_pair, progress=not quiet, components=(ds, built))
        elif launcher == "local":
            if n == 1:
                launch.run_shard(opts, 0, 1, progress=not quiet, components=(ds, built))
            else:
                launch.run_local(opts, n, len(ds), progress=not quiet)
        elif launcher == "submitit-local":
            launch.run_submitit_local(opts, n)
        else:
            launch.run_slurm(opts, n, len(ds), slurm_params, detach=detach, progress=not quiet,
                             on_submit=lambda job_id: _record_slurm_job(run_dir, job_id, slurm_params, estimate, n))
            if detach:
                return out
    finally:
        if lock is not None:
            lock.release()
    _print_summary(run_dir, specs, len(ds), limit)
    return out


def _check_counts(**values) -> None:
    """--batch-size, --limit, --shards >= 1; --retries, --num-workers >= 0 (None = not given)."""
    from bench.errors import UserError

    least = {"batch_size": 1, "limit": 1, "shards": 1, "retries": 0, "num_workers": 0}
    for name, value in values.items():
        if value is not None and value < least[name]:
            raise UserError(f"--{name.replace('_', '-')} must be >= {least[name]}, got {value}")


#: ``--slurm-*`` option -> the submitit parameter it sets.
SLURM_OPTIONS = {"partition": "slurm_partition", "time": "timeout_min", "gpus_per_task": "slurm_gpus_per_task",
                 "cpus_per_task": "cpus_per_task", "mem": "slurm_mem", "account": "slurm_account",
                 "qos": "slurm_qos", "array_parallelism": "slurm_array_parallelism",
                 "extra": "slurm_additional_parameters"}


def _slurm_options(pairs, options: dict, launcher: str, detach: bool) -> dict:
    """The Slurm parameters the user gave (``--slurm-*`` then ``--slurm``), typed; refused without
    ``--launcher slurm``."""
    from bench import slurm
    from bench.errors import UserError

    given = {k: v for k, v in options.items() if v not in (None, ())}
    if (given or pairs or detach) and launcher != "slurm":
        flag = "--detach" if detach else f"--slurm-{next(iter(given)).replace('_', '-')}" if given else "--slurm"
        raise UserError(f"{flag} needs --launcher slurm (got --launcher {launcher})")
    unknown = set(given) - set(SLURM_OPTIONS)
    if unknown:
        raise TypeError(f"execute() got unexpected options {sorted(unknown)}")
    out = {}
    for name, value in given.items():
        if name == "time":
            value = slurm.parse_time(value)
        elif name == "extra":
            value = slurm.parse_extra(value)
        elif isinstance(value, int) and value < 1:
            raise UserError(f"--slurm-{name.replace('_', '-')} must be >= 1, got {value}")
        out[SLURM_OPTIONS[name]] = value
    return {**out, **slurm.parse_parameters(pairs)}


def _slurm_parameters(given: dict, out, specs, profile, device, ds, limit, num_shards, num_workers):
    """(submitit parameters, time estimate): :func:`bench.slurm.default_parameters` and the estimated
    time limit, overridden by what the user gave."""
    import math

    from bench import slurm

    total = len(ds) if limit is None else min(limit, len(ds))
    per_shard = math.ceil(total / num_shards)
    measured = slurm.measured_seconds(Path(out), specs) if Path(out).is_dir() else {}
    estimate = slurm.estimate_minutes(specs, profile, device, per_shard, measured)
    workers = num_workers if num_workers is not None else getattr(ds, "default_num_workers", 0)
    params = {**slurm.default_parameters(run_name=Path(out).name, device=device, loader_workers=workers,
                                         num_shards=num_shards), "timeout_min": estimate["minutes"]}
    if "slurm_time" in given:
        params.pop("timeout_min")
    return {**params, **given}, estimate


def _record_slurm_job(run_dir, job_id: str, params: dict, estimate: dict, tasks: int) -> None:
    """Append the submitted job (id, parameters, time estimate) to the manifest's ``slurm_jobs``."""
    import time

    from bench.locks import exclusive

    with exclusive(run_dir.root / ".manifest.lock"):
        manifest = run_dir.read_manifest()
        manifest.setdefault("slurm_jobs", []).append(
            {"job_id": job_id, "tasks": tasks, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "parameters": params, "time_estimate": estimate})
        run_dir.write_manifest(manifest)


def prepare_out_dir(out: Path) -> None:
    """Create the run directory, or say in one line why it cannot be (a file in the way, read-only,
    no permission, a name too long) before anything is written."""
    import os

    from bench.errors import UserError, user_error_from_os

    check_out_path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise user_error_from_os(err, f"--out {out}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: cannot write there (read-only or no permission); choose another --out")


def check_out_path(out: Path) -> None:
    """Refuse, without writing, an --out with a file in the way or a name longer than the file system's."""
    import os

    from bench.errors import UserError

    for part in out.parts:
        if len(part.encode()) > 255:
            raise UserError(f"--out {str(out)[:80]}…: the name {part[:20]}… has {len(part.encode())} bytes, more "
                            "than file systems allow (255); choose a shorter --out")
    for part in [out, *out.parents]:
        try:
            if part.exists() and not part.is_dir():
                raise UserError(f"--out {out}: {part} is a file, not a folder; choose another --out")
        except OSError as err:
            raise UserError(f"--out {out}: {os.strerror(err.errno or 0)}; choose another --out") from None


def _check_orphan_records(run_dir, ds, described: dict, seed: int, profile: str) -> None:
    """A run directory that lost its manifest but holds records: they must have been made under
    this command's protocol (the hash each record carries), else nothing is mixed into them."""
    from bench.errors import UserError
    from bench.manifest import protocol_hash

    for spec, desc in described.items():
        want = protocol_hash(ds.describe(), desc, seed, profile)
        for rec in run_dir.records(spec)[:50]:
            got = (rec.get("runtime") or {}).get("protocol")
            if got is not None and got != want:
                raise UserError(f"{run_dir.root} has no manifest, and its records of {spec!r} were made under "
                                "another protocol; `bench repair` may restore the manifest, or use another --out")


def instance_metric_protocols() -> dict:
    """The manifest's ``metrics``: each per-instance metric's protocol, plus the clock."""
    from bench import registry

    out = {entry.name: dict(entry.load().protocol) for entry in registry.metrics("instance")}
    out["timing"] = {"clock": "wall, CUDA-synchronised (bench.timing.Stopwatch)",
                     "warmup": "each method's warmup_passes untimed passes in setup"}
    return out


def _link_latest(out: Path) -> None:
    """Point results/latest at the newest run directory (best effort)."""
    link = out.parent / "latest"
    try:
        if link.is_symlink() or not link.exists():
            tmp = out.parent / ".latest.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(out.name)
            tmp.replace(link)
    except OSError:
        pass


def _print_summary(run_dir, specs, dataset_size: int, limit: int | None) -> None:
    """Per method: ok / failed within this command's range, records beyond it kept; exit 1 when
    every instance failed (with the most common error)."""
    from collections import Counter

    from rich.console import Console

    console = Console(stderr=True)
    total = dataset_size if limit is None else min(limit, dataset_size)
    errors: Counter = Counter()
    ok_all = 0
    for spec in specs:
        recs = run_dir.records(spec)
        inside = [r for r in recs if r["index"] < total]
        ok = sum(r["status"] == "ok" for r in inside)
        failed = len(inside) - ok
        ok_all += ok
        errors.update(r.get("error") or "failed" for r in inside if r["status"] != "ok")
        beyond = len(recs) - len(inside)
        console.print(f"{spec}: {ok} ok, {failed} failed" + (" (see records for errors)" if failed else "")
                      + (f"; {beyond} record(s) beyond --limit {limit} kept" if beyond else ""), highlight=False)
    console.print(f"run directory: {run_dir.root}   next: bench report {run_dir.root}", highlight=False)
    if ok_all == 0 and errors:
        error, count = errors.most_common(1)[0]
        click.echo(f"error: every instance failed ({sum(errors.values())}); most common error ({count}x): "
                   f"{error[:300]}", err=True)
        sys.exit(1)
