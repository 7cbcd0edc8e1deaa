"""``bench eval RUN``: corpus-level metrics of a run directory into ``RUN/metrics/<name>.json``.

Separate from ``bench run`` (OpenCompass style: infer, then eval). Reads every record of the run
(all shards), renders what FID needs once (``RUN/fid/``) and writes one JSON per metric::

    {
      "metric": "fid12",
      "version": 1,
      "created": "2025-01-01T00:00:00+00:00",
      "run": "results/synthetic-fast",
      "protocol": {...every option the numbers depend on...},
      "methods": {"ours": {"fid": 41.2, "kid_mean": 0.012, "kid_std": 0.001, "n_images": 120, ...}},
      "environment": {"python": ..., "packages": {...}, "git": ..., "device": ...}
    }
"""
from __future__ import annotations

from datetime import datetime, timezone

import click

ALL_METRICS = ("iou", "fid1", "fid10", "fid12", "kid", "shape3d", "latency")
METRICS_VERSION = 1


def _parse_metrics(text: str | None, synthetic: bool) -> list[str]:
    from bench import registry
    from bench.errors import UserError

    if text is None:
        return [m for m in ALL_METRICS if m != "shape3d" or synthetic]
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError("--metrics is empty; name at least one of " + ", ".join(ALL_METRICS))
    for name in names:
        registry.get("metrics", name)
    return list(dict.fromkeys(names))


def evaluate(run_dir, metrics: list[str] | None = None, options=None, methods: list[str] | None = None,
             progress: bool = True) -> dict[str, dict]:
    """Compute ``metrics`` of the run at ``run_dir`` and write ``RUN/metrics/<name>.json``.

    Args:
        run_dir: a run directory written by ``bench run``.
        metrics: metric names (default: all; ``shape3d`` only for synthetic runs).
        options: :class:`bench.metrics.base.EvalOptions`.
        methods: methods to evaluate (default: every method with records).
        progress: show rich progress bars.
    Returns:
        ``{name: written JSON dict}``.
    """
    from bench import registry
    from bench.errors import UserError
    from bench.manifest import environment
    from bench.metrics.base import EvalContext, EvalOptions
    from bench.metrics.reference import dataset_name
    from bench.progress import progress_bar
    from bench.store import RunDir

    run = RunDir(run_dir)
    manifest = run.read_manifest()
    options = options or EvalOptions()
    all_methods = run.methods()
    if not all_methods:
        raise UserError(f"{run.root} has no records yet; run `bench run --out {run.root} ...` first")
    if methods:
        unknown = [m for m in methods if m not in all_methods]
        if unknown:
            raise UserError(f"{run.root} has no records of {', '.join(unknown)}; it has {', '.join(all_methods)}")
    names = metrics if metrics is not None else _parse_metrics(None, dataset_name(manifest) == "synthetic")
    classes = {name: registry.load("metrics", name) for name in names}
    ctx_methods = list(methods or all_methods)
    if {"fid1", "fid10", "fid12", "kid"} & set(names):  # fail before any rendering: weights, reference
        from bench.metrics.extractors import resolve_weights
        from bench.metrics.fid import fid10_angles

        resolve_weights(options.fid_extractor, options.fid_weights)
        fid10_angles(options.fid10_views)
    env = environment(options.device)
    written = {}
    with progress_bar(enabled=progress, unit="item") as bar:
        ctx = EvalContext(run=run, methods=ctx_methods, options=options, progress=bar)
        if {"fid10", "fid12", "kid"} & set(names):
            from bench.metrics.fid import FIDEngine

            FIDEngine.of(ctx).check_reference()
        for name, cls in classes.items():
            metric = cls()
            if not hasattr(metric, "corpus"):
                raise UserError(f"metric {name!r} has no corpus-level summary; it is computed by `bench run`")
            result = metric.corpus(ctx)
            doc = {"metric": name, "version": METRICS_VERSION,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run": str(run.root),
                   "summary": getattr(metric, "summary", ""), **result, "environment": env}
            run.write_metrics(name, doc)
            written[name] = doc
    return written


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


HEADLINE = {"iou": ("iou",), "fid1": ("fid", "kid_mean"), "fid10": ("fid", "kid_mean"), "fid12": ("fid", "kid_mean"),
            "shape3d": ("chamfer_l2", "fscore", "latent_error", "psnr", "ssim"),
            "latency": ("total", "optimize", "instances_per_s")}


@click.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--metrics", help=f"Comma-separated metrics (default: all of {','.join(ALL_METRICS)}; "
              "shape3d only on synthetic runs).")
@click.option("--methods", help="Comma-separated methods to evaluate (default: all in the run).")
@click.option("--fid-extractor", default="standard", show_default=True,
              help="standard (TF-Inception FID, torch-fidelity) | torchvision-inception (the paper's FID).")
@click.option("--fid-weights", type=click.Path(dir_okay=False),
              help="Inception weights file (default: the torch hub cache file; never downloaded).")
@click.option("--fid-reference", default="auto", show_default=True,
              help="FID_10/12 reference: an .npz (ConvMesh precomputed_fid_299x299_testval.npz or mu/sigma) | "
                   "dataset | auto (synthetic/standard: dataset; torchvision-inception on real data: ConvMesh npz "
                   "under <data root>/cache/).")
@click.option("--fid10-views", type=click.Choice(["paper", "official-code"]), default="paper", show_default=True,
              help="paper: 10 views (no 90/270); official-code: 11 views (no 270), as the released code computes.")
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda (| cuda:K).")
@click.option("--batch-size", default=40, show_default=True, type=int, help="Images per extractor forward pass.")
@click.option("--kid-subsets", default=100, show_default=True, type=int, help="KID subsets.")
@click.option("--fscore-threshold", default=0.05, show_default=True, type=float,
              help="shape3d F-score threshold, fraction of the normalised GT bounding-box diagonal.")
@click.option("--view-size", default=256, show_default=True, type=int,
              help="Canonical-view resolution (the protocol is 256; smaller only for quick checks; recorded).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(run_dir, metrics, methods, fid_extractor, fid_weights, fid_reference, fid10_views, device, batch_size,
             kid_subsets, fscore_threshold, view_size, quiet):
    """Corpus-level metrics (IoU, FID_1/10/12, KID, 3D, latency) of RUN_DIR into RUN_DIR/metrics/."""
    from bench.errors import UserError
    from bench.metrics.base import EvalOptions
    from bench.metrics.reference import dataset_name
    from bench.store import RunDir

    if batch_size < 1 or kid_subsets < 1 or view_size < 16:
        raise UserError("--batch-size and --kid-subsets must be >= 1, --view-size >= 16")
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    run = RunDir(run_dir)
    manifest = run.read_manifest()
    names = _parse_metrics(metrics, dataset_name(manifest) == "synthetic")
    method_list = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    options = EvalOptions(fid_extractor=fid_extractor, fid_weights=fid_weights,
                          fid_reference=None if fid_reference == "auto" else fid_reference, fid10_views=fid10_views,
                          device=device, batch_size=batch_size, kid_subsets=kid_subsets,
                          fscore_threshold=fscore_threshold, view_size=view_size, progress=not quiet)
    written = evaluate(run.root, names, options, method_list, progress=not quiet)
    for name, doc in written.items():
        keys = HEADLINE.get(name)
        for method, vals in doc["methods"].items():
            if name == "kid":
                parts = [f"{k}={_fmt((v or {}).get('kid_mean'))}" for k, v in vals.items()]
            else:
                parts = []
                for k in keys or [k for k, v in vals.items() if isinstance(v, (int, float))][:4]:
                    v = vals.get(k)
                    if isinstance(v, dict):
                        v = v.get("mean")
                    parts.append(f"{k}={_fmt(v)}")
            click.echo(f"{name:<8} {method:<16} " + " ".join(parts))
        click.echo(f"  -> {run.metrics_path(name)}")
