"""``bench run``: run methods on a dataset into a resumable, shardable run directory."""
from __future__ import annotations

import sys
from pathlib import Path

import click


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


@click.command()
@click.option("--methods", required=True, help="Comma-separated methods, e.g. ours,cmr-tto (variants: ours@NAME).")
@click.option("--dataset", default="synthetic", show_default=True, help="Dataset name (see `bench ls datasets`).")
@click.option("--data-root", type=click.Path(path_type=Path), help="Dataset root folder (file datasets).")
@click.option("--split", help="Dataset split (default: the dataset's, usually test).")
@click.option("--limit", type=int, help="Use only the first N instances.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:K.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default results/<dataset>-<profile>).")
@click.option("--batch-size", default=1, show_default=True, type=int, help="Instances optimised together.")
@click.option("--profile", type=click.Choice(["paper", "fast"]), default="paper", show_default=True,
              help="paper = the released code's settings; fast = CPU-friendly.")
@click.option("--set", "sets", multiple=True, metavar="OWNER.KEY=VALUE",
              help="Override a config field of a method or the dataset, e.g. ours.select_num=50.")
@click.option("--shards", type=int, help="Number of shards (default: visible GPUs on cuda, else 1).")
@click.option("--shard", "shard", help="Run only shard I of N (I/N), in this process.")
@click.option("--launcher", type=click.Choice(["local", "slurm", "submitit-local"]), default="local",
              show_default=True, help="How shards are started.")
@click.option("--slurm", "slurm_opts", multiple=True, metavar="KEY=VALUE",
              help="Extra submitit/slurm parameters, e.g. slurm_partition=gpu.")
@click.option("--retries", default=0, show_default=True, type=int, help="Re-attempts of failed instances.")
@click.option("--seed", default=0, show_default=True, type=int, help="Run seed (per-instance seeds derive from it).")
@click.option("--num-workers", type=int, help="DataLoader workers (default: the dataset's choice).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run(methods, dataset, data_root, split, limit, device, out, batch_size, profile, sets, shards, shard, launcher,
        slurm_opts, retries, seed, num_workers, quiet):
    """Run METHODS on DATASET; rerun the same command to resume (finished instances are skipped)."""
    from bench import launch, registry
    from bench.config import parse_sets
    from bench.errors import UserError
    from bench.manifest import merge_manifest, new_manifest
    from bench.methods_spec import parse_methods
    from bench.runner import RunOptions, build_dataset, build_method, check_overrides
    from bench.store import RunDir

    specs = parse_methods(methods)
    registry.get("datasets", dataset)
    overrides = parse_sets(sets)
    dataset_over = overrides.pop(dataset, {})
    if data_root is not None:
        dataset_over["data_root"] = str(data_root)
    if split is not None:
        dataset_over["split"] = split
    if batch_size < 1 or (limit is not None and limit < 1) or retries < 0:
        raise UserError("--batch-size and --limit must be >= 1, --retries >= 0")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA device is visible; use --device cpu")
    elif device != "cpu":
        raise UserError(f"--device must be cpu, cuda or cuda:K, got {device!r}")
    out = out or Path("results") / f"{dataset}-{profile}"
    opts = RunOptions(methods=specs, dataset=dataset, out=out, dataset_overrides=dataset_over,
                      method_overrides=overrides, profile=profile, device=device, batch_size=batch_size,
                      limit=limit, seed=seed, retries=retries, num_workers=num_workers)
    check_overrides(opts)

    # Validate everything before any work starts: dataset root, method options, weight files.
    ds = build_dataset(opts)
    if len(ds) == 0:
        raise UserError(f"dataset {dataset!r} yields no instances (check --data-root and --split)")
    described = {spec: build_method(spec, opts).describe() for spec in specs}
    ds_info = ds.describe()
    run_dir = RunDir(out)
    manifest = new_manifest(
        dataset={**ds_info, "instances": len(ds) if limit is None else min(limit, len(ds))},
        methods=described,
        metrics={"iou": {"formula": "sum(Mt*Mp)/sum(Mt+Mp-Mt*Mp), masks not thresholded",
                         "against": ds_info.get("mask", ds_info.get("mask_source", "sample mask"))},
                 "latency": {"clock": "wall, CUDA-synchronised", "warmup": "one untimed warm-up per worker"}},
        device=device, seed=seed, profile=profile, limit=limit, command=["bench", *sys.argv[1:]])
    run_dir.write_manifest(merge_manifest(run_dir.read_manifest() if run_dir.exists() else None, manifest, out))
    _link_latest(out)

    shard_pair = _parse_shard(shard) or launch.env_shard()
    if shard_pair is not None:
        launch.run_shard(opts, *shard_pair, progress=not quiet)
    else:
        n = shards or launch.default_num_shards(device)
        if launcher == "local":
            if n == 1:
                launch.run_shard(opts, 0, 1, progress=not quiet)
            else:
                launch.run_local(opts, n, progress=not quiet)
        else:
            params = dict(kv.split("=", 1) for kv in slurm_opts)
            launch.run_submitit(opts, n, "slurm" if launcher == "slurm" else "local", params)
    _print_summary(run_dir, specs)


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
