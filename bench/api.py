"""The Python API: the components and commands of the CLI, from a script or a notebook.

Re-exported by :mod:`bench` (``bench.load_method``, ``bench.load_dataset``, ``bench.run``,
``bench.report``). Each goes through the code the CLI runs, so options are validated identically
and a bad value raises :class:`bench.errors.UserError` with the CLI's one-line message:

* :func:`load_method` / :func:`load_dataset` build components as `bench run` does
  (:func:`bench.runner.build_method` / :func:`bench.runner.build_dataset`: registry, profile, config
  table and validation of ``--set``);
* :func:`run` / :func:`report` invoke the click commands `bench run` / `bench report` themselves.

Importing this module imports no torch.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.config import plain_value
from bench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from bench.datasets.base import Dataset
    from bench.methods.base import Method

__all__ = ["load_dataset", "load_method", "report", "run"]


def load_method(name: str, profile: str = "paper", device: str = "cpu", **overrides: Any) -> Method:
    """A method, configured and set up on ``device``, ready for ``method.reconstruct([sample, ...])``.

    Built by :func:`bench.runner.build_method`, as `bench run` builds it: ``NAME`` or
    ``NAME@VARIANT``, the profile, then the overrides (each a config field of the method: `bench config
    NAME` lists them), validated by the same config table as ``--set``. Values may be typed
    (``select_num=4``, ``iterations=[2, 2, 2, 2]``, ``stale_outputs=False``) or strings as on the
    command line (``select_num="4"``). Weight files are checked before `setup` loads them.

    Args:
        name: registered method (``ours``, ``cmr-tto``, ``umr-tto`` ... see `bench ls methods`),
            optionally ``NAME@VARIANT``.
        profile: ``paper`` (the released code's settings) or ``fast`` (CPU-friendly).
        device: ``cpu``, ``cuda`` or ``cuda:K``.
        overrides: config fields of the method.

    Raises:
        bench.errors.UserError: an unknown method, profile or field (with suggestions), a bad value
            (``ours.select_num must be >= 1, got 0``), a missing or unreadable weight file, an invisible device.
    """
    from bench.devices import parse_device
    from bench.methods_spec import parse_methods
    from bench.runner import RunOptions, build_method

    if not isinstance(name, str) or "," in name:
        raise UserError(f"load_method takes one method name (e.g. 'ours' or 'ours@tight'), got {name!r}")
    (spec,) = parse_methods(name)
    device = parse_device(device, option="device")
    opts = RunOptions(methods=[spec], profile=profile,
                      method_overrides={spec: dict(overrides)})
    method = build_method(spec, opts)
    method.check_weights()
    method.setup(device)
    return method


def load_dataset(name: str = "synthetic", profile: str = "paper", seed: int = 0, **overrides: Any) -> Dataset:
    """A dataset, built by :func:`bench.runner.build_dataset` as `bench run` builds it.

    ``dataset[i]`` is a :class:`bench.datasets.base.Sample` (or a ``FailedSample`` when instance ``i``
    cannot be loaded); ``len(dataset)`` the number of instances.

    Args:
        name: registered dataset (``synthetic``, ``cub``, ``p3d`` ... see `bench ls datasets`).
        profile: ``paper`` or ``fast``.
        seed: the run seed (`bench run --seed`): every sample's ``meta["seed"]`` derives from it and its
            index, and so do the synthetic scenes unless the dataset's own ``seed`` field is set (that
            field cannot be given here: use ``bench.run(..., sets={"synthetic": {"seed": S}})``).
        overrides: config fields of the dataset (`bench config NAME`), e.g. ``n=4``, ``image_size=64``,
            ``data_root="datasets/cub"``, ``split="test"``; typed values or strings.

    Raises:
        bench.errors.UserError: an unknown dataset or field, a bad value, an unusable data root.
    """
    from bench import registry
    from bench.runner import RunOptions, build_dataset

    registry.get("datasets", name)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"seed must be an integer, got {seed!r}")
    opts = RunOptions(methods=[], dataset=name, profile=profile, seed=seed,
                      dataset_overrides=dict(overrides))
    return build_dataset(opts)


def _set_value(value: Any) -> str:
    """A typed config value as the text of ``--set OWNER.KEY=VALUE`` (JSON for non-strings)."""
    import json

    value = plain_value(value)
    return value if isinstance(value, str) else json.dumps(value)


def _sets_args(sets) -> list[str]:
    """``sets`` -> ``["--set", "ours.select_num=2", ...]``.

    Accepts ``{"ours": {"select_num": 2}}``, ``{"ours.select_num": 2}`` or ``["ours.select_num=2"]``.
    """
    if sets is None:
        return []
    items: list[str] = []
    if isinstance(sets, Mapping):
        for key, value in sets.items():
            if isinstance(value, Mapping):
                items += [f"{key}.{field}={_set_value(v)}" for field, v in value.items()]
            else:
                items.append(f"{key}={_set_value(value)}")
    elif isinstance(sets, Sequence) and not isinstance(sets, str):
        items = [str(item) for item in sets]
    else:
        raise UserError(f"sets must be a dict ({{'ours': {{'select_num': 2}}}}) or a list of 'OWNER.KEY=VALUE' "
                        f"strings, got {sets!r}")
    return [arg for item in items for arg in ("--set", item)]


def _option_args(command, options: Mapping[str, Any], what: str, taken: tuple[str, ...] = ()) -> list[str]:
    """Keyword options -> the command line of click ``command``: ``batch_size=2`` -> ``--batch-size 2``,
    ``quiet=True`` -> ``--quiet``, a repeatable option from a list (or a dict: ``KEY=VALUE`` items).

    An option's Python name is its flag's (``--batch-size`` -> ``batch_size``, ``--slurm`` -> ``slurm``);
    ``taken`` are those the API function takes as its own arguments.
    """
    from bench.errors import did_you_mean

    params = {p.opts[0][2:].replace("-", "_"): p for p in command.params
              if getattr(p, "opts", None) and p.opts[0].startswith("--")}
    params = {name: p for name, p in params.items() if name not in taken}
    args: list[str] = []
    for name, value in options.items():
        param = params.get(name)
        if param is None:
            raise UserError(f"{what}: unknown option {name!r}{did_you_mean(name, params)}")
        flag = param.opts[0]
        if value is None:
            continue
        if getattr(param, "is_flag", False):
            if not isinstance(value, bool):
                raise UserError(f"{what}: {name} is a flag, give True or False, got {value!r}")
            if value:
                args.append(flag)
            continue
        if param.multiple:
            if isinstance(value, Mapping):
                value = [f"{k}={plain_value(v)}" for k, v in value.items()]
            elif isinstance(value, str) or not isinstance(value, Sequence):
                value = [value]
            for item in value:
                args += [flag, str(plain_value(item))]
            continue
        args += [flag, str(plain_value(value))]
    return args


def _invoke(command, args: list[str], name: str, failed: str = "") -> None:
    """Run click ``command`` on ``args`` as the CLI would, but raising instead of exiting: a click usage
    error or a `UserError` propagates as `UserError`, a non-zero exit as `UserError` (``failed`` says
    why). ``sys.argv`` reads ``bench NAME ARGS`` meanwhile, so the run manifest records the equivalent
    command line."""
    import click

    saved = sys.argv
    sys.argv = ["bench", name, *args]
    try:
        command.main(args=args, prog_name=f"bench {name}", standalone_mode=False)
    except click.UsageError as err:
        raise UserError(f"{err.format_message()} (see `bench {name} --help`)") from None
    except click.ClickException as err:
        raise UserError(err.format_message()) from None
    except SystemExit as err:
        if err.code not in (0, None):
            raise UserError(failed or f"bench {name} exited with status {err.code}; its last message says why") from None
    finally:
        sys.argv = saved


def run(methods: str | Sequence[str], dataset: str = "synthetic", out: str | Path | None = None,
        profile: str = "paper", sets: Mapping | Sequence[str] | None = None, **options: Any) -> Path:
    """`bench run`: run ``methods`` on ``dataset`` into a run directory and return its path.

    The click command itself runs, so every option is validated as on the command line, and a rerun
    into the same ``out`` resumes.

    Args:
        methods: ``"ours,cmr-tto"`` or ``["ours", "cmr-tto"]`` (variants: ``ours@NAME``).
        dataset: registered dataset.
        out: the run directory (default ``results/<dataset>-<profile>``, as the CLI's).
        profile: ``paper`` or ``fast``.
        sets: config overrides, ``{"ours": {"select_num": 2}, "synthetic": {"n": 3}}`` (typed values or
            strings), ``{"ours.select_num": 2}`` or ``["ours.select_num=2", ...]`` (``--set``).
        options: the other options of `bench run` by their Python names: ``limit``, ``device``,
            ``batch_size``, ``seed``, ``retries``, ``shards``, ``shard``, ``launcher``, ``num_workers``,
            ``data_root``, ``split``, ``config``, ``quiet=True``, ``slurm={"slurm_partition": "gpu"}``.

    Returns:
        the run directory.

    Raises:
        bench.errors.UserError: a bad option or value (the CLI's message), or every instance failed.
    """
    from bench.commands.run import run as command

    if isinstance(methods, str):
        spec = methods
    elif isinstance(methods, Sequence) and methods and all(isinstance(m, str) for m in methods):
        spec = ",".join(methods)
    else:
        raise UserError(f"methods must be 'ours,cmr-tto' or a list of method names, got {methods!r}")
    if out is not None and not str(out).strip():
        raise UserError("out is empty; pass a folder for the run (default: results/<dataset>-<profile>)")
    args = ["--methods", spec, "--dataset", str(dataset), "--profile", str(profile)]
    if out is not None:
        args += ["--out", str(out)]
    args += _sets_args(sets) + _option_args(command, options, "bench.run",
                                            taken=("methods", "dataset", "out", "profile", "set"))
    run_dir = Path(out) if out is not None else Path("results") / f"{dataset}-{profile}"  # the CLI's default
    _invoke(command, args, "run", failed=f"bench run: every instance failed (the most common error is printed "
                                        f"above; each record under {run_dir / 'records'} says why)")
    return run_dir


def report(runs: str | Path | Sequence[str | Path], out: str | Path | None = None, **options: Any) -> Path:
    """`bench report`: tables, statistics and figures of one or more run directories; returns the folder.

    Args:
        runs: a run directory or several (one row per (run, method), never merged).
        out: output folder (default ``<first run>/report``).
        options: the other options of `bench report` by their flags' names: ``label={"results/a": "A"}``
            (``--label``, repeatable; also as ``labels=``, or a list ``["results/a=A"]``), ``baseline="ours"``,
            ``resamples=0``, ``seed=...``, ``zoom=True``, ``reference="paper"``.

    Returns:
        the report folder (``table.csv``, ``report.json``, figures ...).

    Raises:
        bench.errors.UserError: a missing run directory, a bad option.
    """
    from bench.commands.report import report as command
    from bench.store import RunDir

    paths = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if not paths:
        raise UserError("report needs at least one run directory")
    if "labels" in options and "label" not in options:  # the option is --label (repeatable)
        options = {("label" if k == "labels" else k): v for k, v in options.items()}
    args = [str(p) for p in paths] + (["--out", str(out)] if out is not None else [])
    args += _option_args(command, options, "bench.report", taken=("out",))
    _invoke(command, args, "report")
    return Path(out) if out is not None else RunDir(Path(paths[0])).report_dir
