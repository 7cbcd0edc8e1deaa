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

import dataclasses
import typing
from datetime import datetime, timezone

import click

from bench.metrics.base import EvalOptions

METRICS_VERSION = 1


def default_metrics(synthetic: bool) -> list[str]:
    """Every registered metric, less the synthetic-only ones (shape3d) on real data."""
    from bench import registry

    return [e.name for e in registry.metrics() if synthetic or not e.synthetic_only]


def _parse_metrics(text: str | None, synthetic: bool) -> list[str]:
    from bench import registry
    from bench.errors import UserError

    if text is None:
        return default_metrics(synthetic)
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError("--metrics is empty; name at least one of " + ", ".join(e.name for e in registry.metrics()))
    for name in names:
        registry.get("metrics", name)
    return list(dict.fromkeys(names))


def evaluate(run_dir, metrics: list[str] | None = None, options=None, methods: list[str] | None = None,
             progress: bool = True) -> dict[str, dict]:
    """Compute ``metrics`` of the run at ``run_dir`` and write ``RUN/metrics/<name>.json``.

    Args:
        run_dir: a run directory written by ``bench run``.
        metrics: metric names (default: every registered metric; synthetic-only ones only for synthetic runs).
        options: :class:`bench.metrics.base.EvalOptions`.
        methods: methods to evaluate (default: every method with records).
        progress: show rich progress bars.
    Returns:
        ``{name: written JSON dict}``.
    """
    from bench import registry
    from bench.errors import UserError
    from bench.manifest import environment
    from bench.metrics.base import EvalContext
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
    names = metrics if metrics is not None else default_metrics(dataset_name(manifest) == "synthetic")
    entries = {name: registry.get("metrics", name) for name in names}
    instances = {name: entry.load()() for name, entry in entries.items()}
    for name, metric in instances.items():
        if not hasattr(metric, "corpus"):
            raise UserError(f"metric {name!r} has no corpus-level summary; it is computed by `bench run`")
    ctx = EvalContext(run=run, methods=list(methods or all_methods), options=options)
    for metric in instances.values():  # fail before any rendering: weights, reference files
        if hasattr(metric, "check"):
            metric.check(ctx)
    env = environment(options.device)
    written = {}
    with progress_bar(enabled=progress, unit="item") as bar:
        ctx.progress = bar
        for name, metric in instances.items():
            result = metric.corpus(ctx)
            doc = {"metric": name, "version": METRICS_VERSION,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run": str(run.root),
                   "summary": entries[name].summary, **result, "environment": env}
            run.write_metrics(name, doc)
            written[name] = doc
    return written


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def headline(entry, values: dict) -> list[str]:
    """``name=value`` parts printed for one method: the metric's registry columns, then the mean of
    each summary it holds (``total``, ``optimize`` ... of latency); a metric without columns (kid):
    its numeric values, a nested dict by its first numeric value."""
    if entry.columns:
        parts = [f"{c.name}={_fmt(c.read(values))}" for c in entry.columns]
        parts += [f"{k}={_fmt(v['mean'])}" for k, v in values.items()
                  if isinstance(v, dict) and "mean" in v and "median" in v]
        return parts
    parts = []
    for k, v in values.items():
        if isinstance(v, dict):
            v = next((x for x in v.values() if isinstance(x, (int, float)) or x is None), None)
        if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None:
            parts.append(f"{k}={_fmt(v)}")
    return parts


def _option_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _eval_options(fn):
    """One click option per `EvalOptions` field, default and help from the field."""
    hints = typing.get_type_hints(EvalOptions)
    for f in reversed(dataclasses.fields(EvalOptions)):
        hint = hints[f.name]
        kind = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        help_text = f.metadata.get("help", "")
        if kind is bool:
            decl = f"{_option_flag(f.name)}/--{'quiet' if f.name == 'progress' else 'no-' + f.name.replace('_', '-')}"
            fn = click.option(decl, f.name, default=f.default, show_default=True, help=help_text)(fn)
        else:
            ctype = click.Path(dir_okay=False) if f.name == "fid_weights" else kind
            fn = click.option(_option_flag(f.name), f.name, default=f.default, type=ctype,
                              show_default=f.default is not None, help=help_text)(fn)
    return fn


@click.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--metrics", help="Comma-separated metrics (default: every registered metric, see `bench ls`; "
              "synthetic-only ones such as shape3d only on synthetic runs).")
@click.option("--methods", help="Comma-separated methods to evaluate (default: all in the run).")
@_eval_options
def eval_cmd(run_dir, metrics, methods, **options):
    """Corpus-level metrics (IoU, FID_1/10/12, KID, 3D, latency) of RUN_DIR into RUN_DIR/metrics/."""
    from bench import registry
    from bench.config import ConfigError
    from bench.devices import parse_device
    from bench.errors import UserError
    from bench.metrics.reference import dataset_name
    from bench.store import RunDir

    options["device"] = parse_device(options["device"])
    try:
        opts = EvalOptions(**options)
    except ConfigError as err:  # "batch_size must be ..." -> "--batch-size must be ..."
        field_name, _, rest = str(err).partition(" ")
        raise UserError(f"{_option_flag(field_name)} {rest}") from None
    run = RunDir(run_dir)
    manifest = run.read_manifest()
    names = _parse_metrics(metrics, dataset_name(manifest) == "synthetic")
    method_list = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    written = evaluate(run.root, names, opts, method_list, progress=opts.progress)
    for name, doc in written.items():
        entry = registry.get("metrics", name)
        for method, vals in doc["methods"].items():
            click.echo(f"{name:<8} {method:<16} " + " ".join(headline(entry, vals)))
        click.echo(f"  -> {run.metrics_path(name)}")
