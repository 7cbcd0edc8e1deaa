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


@click.command(epilog=EPILOG)
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), is_eager=True,
              expose_value=True, callback=_load_config_file,
              help="YAML/TOML file with these options and a `set:` table; the command line wins.")
@click.option("--methods", help="Comma-separated methods, e.g. ours,cmr-tto (variants: ours@NAME).")
@click.option("--dataset", default="synthetic", show_default=True, help="Dataset name (see `bench ls datasets`).")
@click.option("--data-root", type=click.Path(path_type=Path), help="Dataset root folder (file datasets).")
@click.option("--split", help="Dataset split (default: the dataset's, usually test).")
@click.option("--limit", type=int, help="Use only the first N instances.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:K.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default results/<dataset>-<profile>).")
@click.option("--batch-size", default=1, show_default=True, type=int, help="Instances optimised together.")
@click.option("--profile", type=click.Choice(PROFILES), default="paper", show_default=True,
              help="paper = the released code's settings; fast = CPU-friendly.")
@click.option("--set", "sets", multiple=True, metavar="OWNER.KEY=VALUE",
              help="Override a config field of a method or the dataset, e.g. ours.select_num=50 "
                   "(fields: `bench config NAME`).")
@click.option("--shards", type=int, help="Number of shards (default: visible GPUs on cuda, else 1).")
@click.option("--shard", "shard", help="Run only shard I of N (I/N), in this process.")
@click.option("--launcher", type=click.Choice(["local", "slurm", "submitit-local"]), default="local",
              show_default=True, help="How shards are started.")
@click.option("--slurm", "slurm_opts", multiple=True, metavar="KEY=VALUE",
              help="Extra submitit/slurm parameters, e.g. slurm_partition=gpu.")
@click.option("--retries", default=0, show_default=True, type=int, help="Re-attempts of failed instances.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Run seed: every instance's randomness (candidates, subsamples, synthetic scenes) derives "
                   "from it and the instance's index.")
@click.option("--num-workers", type=int, help="DataLoader workers (default: the dataset's choice).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def run(ctx, config, methods, dataset, data_root, split, limit, device, out, batch_size, profile, sets, shards, shard,
        launcher, slurm_opts, retries, seed, num_workers, quiet):
    """Run METHODS on DATASET; rerun the same command to resume (finished instances are skipped)."""
    from bench import launch, registry
    from bench.config import parse_sets
    from bench.devices import parse_device
    from bench.errors import UserError
    from bench.manifest import merge_manifest, new_manifest
    from bench.methods_spec import parse_methods
    from bench.run_config import merge_sets
    from bench.runner import RunOptions, build_components
    from bench.store import RunDir

    if not methods:
        raise UserError("--methods is required (e.g. --methods ours,cmr-tto), on the command line or in --config")
    specs = parse_methods(methods)
    registry.get("datasets", dataset)
    run_config = ctx.meta.get("run_config")
    overrides = merge_sets((run_config or {}).get("sets", {}), parse_sets(sets))
    dataset_over = overrides.pop(dataset, {})
    if data_root is not None:
        dataset_over["data_root"] = str(data_root)
    if split is not None:
        dataset_over["split"] = split
    if batch_size < 1 or (limit is not None and limit < 1) or retries < 0 or (shards is not None and shards < 1):
        raise UserError("--batch-size, --limit and --shards must be >= 1, --retries >= 0")
    device = parse_device(device, require_visible=launcher == "local")
    out = out or Path("results") / f"{dataset}-{profile}"
    opts = RunOptions(methods=specs, dataset=dataset, out=out, dataset_overrides=dataset_over,
                      method_overrides=overrides, profile=profile, device=device, batch_size=batch_size,
                      limit=limit, seed=seed, retries=retries, num_workers=num_workers)

    # Validate everything before any work starts: dataset root, method options, weight files.
    ds, built = build_components(opts)
    if len(ds) == 0:
        raise UserError(f"dataset {dataset!r} yields no instances (check --data-root and --split)")
    described = {spec: method.describe() for spec, method in built.items()}
    run_dir = RunDir(out)
    previous = run_dir.read_manifest() if run_dir.exists() else None
    manifest = new_manifest(
        dataset={**ds.describe(), "instances": len(ds) if limit is None else min(limit, len(ds))},
        methods=described, metrics=instance_metric_protocols(), device=device, seed=seed, profile=profile,
        limit=limit, command=["bench", *sys.argv[1:]], run_config=run_config)
    manifest = merge_manifest(previous, manifest, out)
    run_dir.write_manifest(manifest)
    _link_latest(out)

    shard_pair = _parse_shard(shard) or launch.env_shard()
    if shard_pair is not None:
        launch.run_shard(opts, *shard_pair, progress=not quiet, components=(ds, built))
    else:
        n = shards or launch.default_num_shards(device)
        if launcher == "local":
            if n == 1:
                launch.run_shard(opts, 0, 1, progress=not quiet, components=(ds, built))
            else:
                launch.run_local(opts, n, len(ds), progress=not quiet)
        else:
            params = dict(kv.split("=", 1) for kv in slurm_opts)
            launch.run_submitit(opts, n, "slurm" if launcher == "slurm" else "local", params)
    _print_summary(run_dir, specs)


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


def _print_summary(run_dir, specs) -> None:
    from rich.console import Console

    console = Console(stderr=True)
    for spec in specs:
        recs = run_dir.records(spec)
        ok = sum(r["status"] == "ok" for r in recs)
        failed = len(recs) - ok
        console.print(f"{spec}: {ok} ok, {failed} failed" + (" (see records for errors)" if failed else ""))
    console.print(f"run directory: {run_dir.root}   next: bench report {run_dir.root}")
