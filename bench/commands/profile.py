"""``bench profile``: per-stage timing of one optimisation iteration of a method.

    bench profile --method ours --profile fast --batch-size 1 --device cpu

prints one row per stage (generator, render, VGG, each loss term, backward, optimiser step) with
the median / min / max wall-clock milliseconds over ``--repeat`` timed iterations (one untimed
warm-up iteration first; CUDA is synchronised around every stage) and its share of the iteration.
Targets are rendered from the method's own generator, so no data is needed.
"""
from __future__ import annotations

import json
import statistics

import click


@click.command()
@click.option("--method", "method_name", default="ours", show_default=True, help="Registered method name.")
@click.option("--profile", "profile_name", default="fast", show_default=True, help="Config profile (paper | fast).")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1),
              help="Instances optimised together.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda:0.")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(min=1), help="Timed iterations.")
@click.option("--set", "sets", multiple=True, metavar="METHOD.KEY=VALUE",
              help="Override a config field, e.g. --set ours.render_size=256 (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw timings as JSON.")
def profile(method_name, profile_name, batch_size, device, repeat, sets, as_json):
    """Per-stage timing table of one inversion iteration."""
    import torch

    from bench import registry
    from bench.config import build_config, config_to_dict, parse_sets
    from bench.devices import parse_device
    from bench.errors import UserError

    cls = registry.load("methods", method_name)
    overrides = parse_sets(sets)
    unknown = sorted(set(overrides) - {method_name})
    if unknown:
        raise UserError(f"--set names {', '.join(unknown)}, but only --method {method_name} is profiled")
    cfg = build_config(cls.Config, profile_name, getattr(cls, "profiles", {}), overrides.get(method_name, {}),
                       method_name)
    dev = torch.device(parse_device(device))
    method = cls(cfg)
    if not hasattr(method, "profile_stages"):
        raise UserError(f"method {method_name!r} does not support per-stage profiling")
    method.setup(dev)
    times = method.profile_stages(batch_size=batch_size, repeats=repeat)

    if as_json:
        click.echo(json.dumps({"method": method_name, "profile": profile_name, "batch_size": batch_size,
                               "device": str(dev), "config": config_to_dict(cfg), "seconds": times}, indent=1))
        return
    total = statistics.median(times["iteration"])
    click.echo(f"{method_name} ({profile_name}), batch {batch_size}, {dev}, {repeat} timed iteration(s), "
               f"render {getattr(cfg, 'render_size', '?')}px, threads {torch.get_num_threads()}")
    labels = method.labels() if callable(getattr(method, "labels", None)) else []
    for label in labels:
        click.echo(f"  label: {label}")
    header = f"{'stage':<12} {'median ms':>10} {'min ms':>9} {'max ms':>9} {'share':>6}"
    click.echo(header)
    click.echo("-" * len(header))
    for stage, values in times.items():
        med = statistics.median(values)
        if stage == "iteration":
            click.echo("-" * len(header))
        share = f"{100 * med / total:5.1f}%" if total > 0 else "   - "
        click.echo(f"{stage:<12} {1e3 * med:>10.1f} {1e3 * min(values):>9.1f} {1e3 * max(values):>9.1f} {share:>6}")
    click.echo(f"per instance: {1e3 * total / batch_size:.1f} ms/iteration")
