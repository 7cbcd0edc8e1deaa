"""``bench sensitivity``: 3D shape change against 2D mask losses under latent jitter (supplement Fig. 1).

    bench sensitivity --shapes 100 --out results/sensitivity
    bench sensitivity --checkpoint checkpoint_latest.pth --camera random --etas 1e-5,1e-3,1e-1

For every shape (seeded latent, class id drawn from the generator's classes) and jitter size η the
mesh O = G(z) and O' = G(z + η·d) (random unit d) are rendered at the same camera; the 3D Chamfer
distance of their vertices is set against three 2D mask losses (1 − IoU, L1, the inverter's Chamfer
mask loss L_CM, and the change of L_CM). Data first (CSV, JSON), then the log-log figure; a killed
study resumes where it stopped (see :mod:`bench.studies.sensitivity` and ``docs/sensitivity.md``).
"""
from __future__ import annotations

from pathlib import Path

import click

DEFAULT_OUT = Path("results") / "sensitivity"


@click.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="Generator checkpoint (official checkpoint_latest.pth or a state dict); "
                   "default: the untrained demo generator.")
@click.option("--shapes", default=100, show_default=True, type=int, help="Shapes per η point.")
@click.option("--etas", default=None,
              help="Comma-separated latent jitter sizes η > 0; default 10**linspace(-6, -1, 11).")
@click.option("--camera", default="canonical", show_default=True, type=click.Choice(["canonical", "random"]),
              help="canonical: the CUB-like canonical pose for every shape; random: a CUB-like random pose "
                   "per shape (the synthetic dataset's).")
@click.option("--resolution", default=256, show_default=True, type=int,
              help="Mask size in pixels (a multiple of 4, >= 16).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the shapes, classes, cameras and directions.")
@click.option("--dtype", default="float64", show_default=True, type=click.Choice(["float64", "float32"]),
              help="Arithmetic of generator and render: float64 resolves the smallest η; float32 is the "
                   "inverter's (its rounding dominates the 3D distance below η ≈ 1e-4).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:K.")
@click.option("--batch-size", default=25, show_default=True, type=click.IntRange(min=1),
              help="Shapes per generator/render batch (memory only; not part of the settings).")
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=click.Path(path_type=Path),
              help="Study folder (rerun the same command to resume).")
@click.option("--quiet", is_flag=True, help="No progress bars or progress lines.")
def sensitivity(checkpoint, shapes, etas, camera, resolution, seed, dtype, device, batch_size, out, quiet):
    """3D shape change vs 2D mask losses under latent jitter (the supplement's Fig. 1)."""
    import dataclasses

    from bench.devices import parse_device
    from bench.studies import sensitivity as study

    settings = study.validate(study.Settings(
        shapes=shapes, etas=study.DEFAULT_ETAS if etas is None else study.parse_etas(etas), camera=camera,
        resolution=resolution, seed=seed, dtype=dtype))
    device = parse_device(device)

    from bench.errors import UserError
    from bench.manifest import sha256_file

    if checkpoint is not None:
        checkpoint = checkpoint.expanduser()
        if not checkpoint.is_file():
            raise UserError(f"generator checkpoint not found: {checkpoint} (pass a checkpoint file, or leave "
                            "--checkpoint out for the demo generator)")
    settings = dataclasses.replace(settings, checkpoint="demo" if checkpoint is None else sha256_file(checkpoint))
    study.check_folder(out, settings)  # a folder of another study is refused before anything is loaded or written

    from bench.methods.meshinversion.generator import DEMO_LABEL, load_generator

    if checkpoint is None:
        if not quiet:
            click.echo(f"No --checkpoint given: using the {DEMO_LABEL} (random weights, not birds). "
                       "Pass --checkpoint checkpoint_latest.pth for the released model.", err=True)
        generator = load_generator("demo", device="cpu")
        info = {"label": DEMO_LABEL, "path": None, "sha256": None}
    else:
        generator = load_generator(checkpoint, device="cpu")  # an unreadable file is a UserError here
        info = {"label": generator.label, "path": str(checkpoint.resolve()), "sha256": generator.sha256}

    from bench.progress import progress_bar

    log = None if quiet else (lambda line: click.echo(line, err=True))
    with progress_bar(enabled=not quiet, unit="shape") as bar:
        runner = study.SensitivityStudy(settings, generator, out, device=device, batch_size=batch_size,
                                        generator_info=info, progress=None if quiet else bar, log=log)
        summary = runner.run()
    if not quiet:
        click.echo(f"{'loss':<22} {'slope':>7} {'R²':>6} {'small η':>8} {'large η':>8}  zero points")
        for loss, fits in summary["slopes"].items():
            def f(v, spec=".2f"):
                return "n/a" if v is None else format(v, spec)
            click.echo(f"{loss:<22} {f(fits['all']['slope']):>7} {f(fits['all']['r2'], '.3f'):>6} "
                       f"{f(fits['small']['slope']):>8} {f(fits['large']['slope']):>8}  "
                       f"{fits['all']['n_zero_points']}/{fits['all']['n_points']}")
        click.echo(f"one point ({settings.shapes} shapes): {summary['timing']['mean_seconds_per_point']:.1f} s")
    click.echo(f"Wrote {out}: {', '.join(study.OUTPUTS)}")
