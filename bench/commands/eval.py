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
import sys
import typing
from datetime import datetime, timezone

import click

from bench.metrics.base import EvalOptions

METRICS_VERSION = 1


def default_metrics(synthetic: bool) -> list[str]:
    """Every registered metric with a corpus-level summary, less the synthetic-only ones (shape3d) on
    real data (a plugin's instance metric without ``corpus`` is `bench run`'s alone)."""
    from bench import registry

    return [e.name for e in registry.metrics() if (synthetic or not e.synthetic_only) and has_corpus(e.load())]


def has_corpus(cls) -> bool:
    """Whether metric class ``cls`` defines a corpus-level summary (its own ``corpus``)."""
    from bench.metrics.base import Metric

    corpus = getattr(cls, "corpus", None)
    return callable(corpus) and corpus is not getattr(Metric, "corpus", None)


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
             progress: bool = True, warn=None) -> dict[str, dict]:
    """Compute ``metrics`` of the run at ``run_dir`` and write ``RUN/metrics/<name>.json``.

    Args:
        run_dir: a run directory written by ``bench run``.
        metrics: metric names (default: every registered metric; synthetic-only ones only for synthetic runs).
        options: :class:`bench.metrics.base.EvalOptions`.
        methods: methods to evaluate (default: every method with records).
        progress: show rich progress bars.
        warn: called with each warning line (default: printed to stderr).
    Returns:
        ``{"written": {name: written JSON dict}, "skipped": {name: why}}``: a metric whose ``check``
        fails (weights or reference file missing) is skipped and the others are computed.
    Raises:
        UserError: no metric could be computed, or the run has no records.
    """
    warn = warn or _warn
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
        if not has_corpus(type(metric)):
            raise UserError(f"metric {name!r} has no corpus-level summary; it is computed by `bench run`")
    ctx = EvalContext(run=run, methods=list(methods or all_methods), options=options)
    skipped = {}
    for name, metric in instances.items():  # before any rendering: weights, reference files
        if hasattr(metric, "check"):
            try:
                metric.check(ctx)
            except UserError as err:
                skipped[name] = str(err)
    instances = {name: metric for name, metric in instances.items() if name not in skipped}
    if not instances:  # nothing to compute: the (first) reason is the one line
        raise UserError(next(iter(skipped.values())))
    for name, why in skipped.items():
        warn(f"{name} skipped: {why}")
    if any(getattr(metric, "needs_artifacts", True) for metric in instances.values()):
        check_artifacts(ctx, warn)
    env = environment(options.device)
    written = {}
    with progress_bar(enabled=progress, unit="item") as bar:
        ctx.progress = bar
        for name, metric in instances.items():
            result = metric.corpus(ctx)
            doc = {"metric": name, "version": METRICS_VERSION,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run": str(run.root),
                   "summary": entries[name].summary, **result, "environment": env}
            bad = ctx.cache.get("artifact_failures", {})
            if any(bad.values()):
                doc["artifact_failures"] = {m: dict(v) for m, v in bad.items() if v}
            run.write_metrics(name, doc)
            written[name] = doc
    return {"written": written, "skipped": skipped}


def check_artifacts(ctx, warn) -> None:
    """Load every ok record's artifact once; one that is missing or damaged turns that record into a
    failed one for this evaluation (counted in each metric's ``n_failed``, listed in the files'
    ``artifact_failures``), so the other instances are still evaluated."""
    from bench.store import ArtifactError

    failures = ctx.cache.setdefault("artifact_failures", {})
    for method in ctx.methods:
        records, bad = [], {}
        for rec in ctx.records(method):
            if rec["status"] == "ok":
                try:
                    ctx.run.load_artifact(method, rec["instance"])
                except ArtifactError as err:
                    bad[rec["instance"]] = str(err)
                    rec = {**rec, "status": "failed", "error": str(err)}
            records.append(rec)
        ctx.cache["records"][method] = records
        failures[method] = bad
        for message in list(bad.values())[:3]:
            warn(f"{method}: {message}; this instance is counted as failed")
        if len(bad) > 3:
            warn(f"{method}: {len(bad) - 3} more instances with a missing or damaged artifact")


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


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


def eval_options(names: tuple[str, ...] | None = None):
    """A decorator adding one click option per `EvalOptions` field (or the fields ``names``), default
    and help from the field (``bench eval-generator`` takes the extractor and KID ones)."""
    return lambda fn: _eval_options(fn, names)


def _eval_options(fn, names: tuple[str, ...] | None = None):
    hints = typing.get_type_hints(EvalOptions)
    for f in reversed([f for f in dataclasses.fields(EvalOptions) if names is None or f.name in names]):
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


def parse_eval_options(options: dict) -> EvalOptions:
    """`EvalOptions` of the command's options; a bad value is one line naming its flag."""
    from bench.config import ConfigError
    from bench.devices import parse_device
    from bench.errors import UserError

    options = {**options, "device": parse_device(options.get("device", "cpu"))}
    try:
        return EvalOptions(**options)
    except ConfigError as err:  # "batch_size must be ..." -> "--batch-size must be ..."
        field_name, _, rest = str(err).partition(" ")
        raise UserError(f"{_option_flag(field_name)} {rest}") from None


@click.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--metrics", help="Comma-separated metrics (default: every registered metric, see `bench ls`; "
              "synthetic-only ones such as shape3d only on synthetic runs).")
@click.option("--methods", help="Comma-separated methods to evaluate (default: all in the run).")
@eval_options()
def eval_cmd(run_dir, metrics, methods, **options):
    """Corpus-level metrics (IoU, FID_1/10/12, KID, 3D, latency) of RUN_DIR into RUN_DIR/metrics/."""
    from bench import registry
    from bench.metrics.reference import dataset_name
    from bench.store import RunDir

    opts = parse_eval_options(options)
    run = RunDir(run_dir)
    manifest = run.read_manifest()
    names = _parse_metrics(metrics, dataset_name(manifest) == "synthetic")
    method_list = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    result = evaluate(run.root, names, opts, method_list, progress=opts.progress)
    for name, doc in result["written"].items():
        entry = registry.get("metrics", name)
        for method, vals in doc["methods"].items():
            click.echo(f"{name:<8} {method:<16} " + " ".join(headline(entry, vals)))
        click.echo(f"  -> {run.metrics_path(name)}")
    if result["skipped"]:
        click.echo(f"error: not computed: {', '.join(result['skipped'])} (see the warnings above); the other "
                   "metrics were written", err=True)
        sys.exit(1)
