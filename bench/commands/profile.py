"""``bench profile``: timing table of a method, for any registered method (plugins included).

    bench profile --method ours --profile fast --batch-size 1 --device cpu
    bench profile --method cmr-tto --profile fast --repeat 3

Two modes, chosen by what the method offers:

* per stage (methods with ``profile_stages``, e.g. ``ours``): one row per stage of one optimisation
  iteration (generator, render, VGG, each loss term, backward, optimiser step) and the ``iteration``
  row; targets are rendered from the method's own generator, so no data is needed.
* through the method interface (every other method: ``cmr``, ``cmr-tto``, ``umr``, ``umr-tto``,
  third-party methods): ``--batch-size`` samples of the built-in ``synthetic`` dataset (its image size
  under ``--profile``; ``--set synthetic.FIELD=VALUE`` changes it) are built once, one untimed
  warm-up ``method.reconstruct(samples)`` runs, then ``--repeat`` timed calls. The ``reconstruct`` row
  is the wall time of one call; the stages the method reports in ``Reconstruction.timings`` (e.g.
  ``encode``, ``optimize``, ``render``; the batch's seconds) are shown above it.

Every row gives the median / min / max wall-clock milliseconds over the ``--repeat`` timed repeats
(CUDA synchronised around every timed span, :mod:`bench.timing`) and its share of the total row.
``--json`` prints the raw seconds instead. A reconstruction that fails while profiling is one error
line (exit status 2), not a traceback.
"""
from __future__ import annotations

import json
import statistics

import click

#: The total row of each mode.
ITERATION, RECONSTRUCT = "iteration", "reconstruct"


@click.command()
@click.option("--method", "method_name", default="ours", show_default=True, help="Registered method name.")
@click.option("--profile", "profile_name", default="fast", show_default=True, help="Config profile (paper | fast).")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1),
              help="Instances optimised (or reconstructed) together.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda:0.")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1),
              help="Timed iterations (or timed reconstruct calls).")
@click.option("--set", "sets", multiple=True, metavar="OWNER.KEY=VALUE",
              help="Override a config field of the method, e.g. --set ours.render_size=256, or (methods "
                   "profiled through reconstruct) of the synthetic samples, e.g. --set synthetic.image_size=64 "
                   "(repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw timings as JSON.")
def profile(method_name, profile_name, batch_size, device, repeat, sets, as_json):
    """Timing table of a method: per stage of one iteration, or of whole reconstruct calls."""
    import torch

    from bench import registry
    from bench.config import build_config, config_to_dict, parse_sets
    from bench.devices import parse_device
    from bench.errors import UserError

    cls = registry.load("methods", method_name)
    overrides = parse_sets(sets)
    staged = hasattr(cls, "profile_stages")
    allowed = {method_name} if staged else {method_name, "synthetic"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise UserError(f"--set names {', '.join(unknown)}, but only --method {method_name}"
                        f"{'' if staged else ' and its synthetic samples'} can be set here")
    cfg = build_config(cls.Config, profile_name, getattr(cls, "profiles", {}), overrides.get(method_name, {}),
                       method_name)
    dev = torch.device(parse_device(device))
    method = cls(cfg)
    extra: dict = {}
    if staged:
        method.setup(dev)
        times = method.profile_stages(batch_size=batch_size, repeats=repeat)
        total_row, unit = ITERATION, "iteration"
        size_text = f"render {getattr(cfg, 'render_size', '?')}px"
    else:
        samples = synthetic_samples(batch_size, profile_name, overrides.get("synthetic", {}))
        method.setup(dev)
        times = time_reconstruct(method, method_name, samples, repeat, dev)
        total_row, unit = RECONSTRUCT, "reconstruct call"
        size = int(samples[0].image.shape[-1])
        extra = {"mode": "reconstruct", "image_size": size}
        size_text = f"synthetic images {size}px"

    if as_json:
        click.echo(json.dumps({"method": method_name, "profile": profile_name, "batch_size": batch_size,
                               "device": str(dev), **(extra or {"mode": "stages"}), "config": config_to_dict(cfg),
                               "seconds": times}, indent=1))
        return
    total = statistics.median(times[total_row])
    click.echo(f"{method_name} ({profile_name}), batch {batch_size}, {dev}, {repeat} timed {unit}(s), "
               f"{size_text}, threads {torch.get_num_threads()}")
    labels = method.labels() if callable(getattr(method, "labels", None)) else []
    for label in labels:
        click.echo(f"  label: {label}")
    width = max(12, *(len(stage) for stage in times))
    header = f"{'stage':<{width}} {'median ms':>10} {'min ms':>9} {'max ms':>9} {'share':>6}"
    click.echo(header)
    click.echo("-" * len(header))
    for stage, values in times.items():
        med = statistics.median(values)
        if stage == total_row:
            click.echo("-" * len(header))
        share = f"{100 * med / total:5.1f}%" if total > 0 else "   - "
        click.echo(f"{stage:<{width}} {1e3 * med:>10.1f} {1e3 * min(values):>9.1f} {1e3 * max(values):>9.1f} "
                   f"{share:>6}")
    click.echo(f"per instance: {1e3 * total / batch_size:.1f} ms/{'iteration' if staged else 'reconstruction'}")


def synthetic_samples(n: int, profile_name: str, overrides: dict) -> list:
    """``n`` samples of the built-in ``synthetic`` dataset under ``profile_name`` (plus ``--set synthetic.*``)."""
    from bench.config import build_config
    from bench.datasets.base import FailedSample
    from bench.datasets.synthetic import SyntheticDataset
    from bench.errors import UserError

    cfg = build_config(SyntheticDataset.Config, profile_name, SyntheticDataset.profiles, {**overrides, "n": n},
                       "synthetic")
    dataset = SyntheticDataset(cfg, run_seed=0)
    samples = [dataset[i] for i in range(n)]
    for sample in samples:
        if isinstance(sample, FailedSample):
            raise UserError(f"synthetic sample {sample.id} for profiling could not be made: {sample.error}")
    return samples


def time_reconstruct(method, method_name: str, samples: list, repeat: int, device) -> dict[str, list[float]]:
    """Seconds of ``repeat`` timed ``method.reconstruct(samples)`` calls after one untimed warm-up call.

    Returns:
        ``{stage: [seconds per repeat]}``: the stages the reconstructions report in ``timings`` (the
        batch's seconds: ``info["batch_timings"]`` when given, else the sum over the batch; ``total`` is
        left out), then ``reconstruct``, the CUDA-synchronised wall time of the whole call.
    Raises:
        UserError: a reconstruction failed (or ``reconstruct`` raised), in one line.
    """
    from bench.errors import UserError
    from bench.failures import describe_exception
    from bench.timing import Stopwatch

    def call(stopwatch=None) -> list:
        try:
            if stopwatch is None:
                recons = method.reconstruct(samples)
            else:
                with stopwatch(RECONSTRUCT):
                    recons = method.reconstruct(samples)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - one line for the user, not a traceback
            raise UserError(f"{method_name}.reconstruct raised while profiling: {describe_exception(exc)}") from None
        recons = list(recons or [])
        if len(recons) != len(samples):
            raise UserError(f"{method_name}.reconstruct returned {len(recons)} reconstruction(s) for "
                            f"{len(samples)} sample(s) while profiling; it must return one per sample")
        for sample, recon in zip(samples, recons):
            if getattr(recon, "status", "ok") != "ok":
                raise UserError(f"{method_name} failed on synthetic sample {sample.id} while profiling: "
                                f"{getattr(recon, 'error', None) or 'no reason given'}")
        return recons

    call()  # untimed warm-up
    stages: dict[str, list[float]] = {}
    totals: list[float] = []
    for _ in range(repeat):
        stopwatch = Stopwatch(device)
        recons = call(stopwatch)
        totals.append(stopwatch.seconds[RECONSTRUCT])
        for stage, seconds in batch_stage_seconds(recons).items():
            stages.setdefault(stage, []).append(seconds)
    stages = {stage: values for stage, values in stages.items() if len(values) == repeat}
    return {**stages, RECONSTRUCT: totals}


def batch_stage_seconds(recons: list) -> dict[str, float]:
    """The batch's seconds per reported stage (without ``total``): the first reconstruction's
    ``info["batch_timings"]`` when it has one, else each stage summed over the reconstructions
    (``Reconstruction.timings`` are per instance: the batch's time divided by its size)."""
    first = recons[0] if recons else None
    batch = (getattr(first, "info", None) or {}).get("batch_timings")
    if isinstance(batch, dict) and batch:
        source = {k: float(v) for k, v in batch.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    else:
        source = {}
        for recon in recons:
            for stage, seconds in (recon.timings or {}).items():
                if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
                    source[stage] = source.get(stage, 0.0) + float(seconds)
    return {stage: seconds for stage, seconds in source.items() if stage not in ("total", RECONSTRUCT)}
