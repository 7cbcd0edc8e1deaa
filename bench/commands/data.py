"""``bench data``: dataset utilities. ``bench data check`` lists what a data root holds.

Imports no torch at ``--help`` time: the dataset modules load inside the command.
"""
from __future__ import annotations

import click

from bench.errors import UserError


@click.group()
def data():
    """Dataset utilities (check a CUB / PASCAL3D+ data root)."""


@data.command("check")
@click.option("--dataset", "dataset_name", required=True,
              help="Dataset whose layout to check (a file dataset of `bench ls datasets`, e.g. cub, p3d).")
@click.option("--data-root", required=True, type=click.Path(file_okay=False, path_type=str),
              help="cub: the official datasets/cub folder (or its parent); "
                   "p3d: the folder holding PASCAL3D+_release1.1/, data/, sfm/.")
@click.option("--split", default=None,
              help="Split to check (default: the dataset's default, cub=test, p3d=val).")
def check(dataset_name: str, data_root: str, split: str | None):
    """Print every expected file/folder as ok / MISSING / optional, and the instance count.

    Every index, list and label file a run reads (annotation / SfM .mat files, CUB's images.txt and
    image_class_labels.txt, cmr_pred_cam.pth) is read with the run's own reader, so an undecodable,
    malformed or unsafe file is reported here rather than in the middle of a run.

    Exit status: 0 when everything the default configuration needs is there and readable, 1 when
    something required is missing, 2 when a file is unreadable (one line naming it and the reason)
    or DATA_ROOT does not exist or holds none of the layout.
    """
    import os

    from bench import registry

    cls = registry.load("datasets", dataset_name)
    if not hasattr(cls, "check_layout"):
        checkable = [n for n, e in registry.entries("datasets").items() if hasattr(e.load(), "check_layout")]
        raise UserError(f"dataset {dataset_name!r} has no file layout to check; checkable: {', '.join(checkable)}")
    if not os.path.isdir(data_root):
        raise UserError(f"data root {data_root} does not exist or is not a folder")
    rows, count = cls.check_layout(data_root, split)
    for row in rows:
        status = ("UNREADABLE" if row.problem else "ok") if row.present else (
            "MISSING" if row.required else "absent (optional)")
        click.echo(f"{status:<18} {row.path}  {row.detail}")
    missing = [r for r in rows if r.required and not r.present]
    bad = [r for r in rows if r.present and r.problem]
    click.echo(f"instances: {count if count is not None else 'unknown (index files missing or unreadable)'}")
    if bad:  # files a run would read but cannot use: one line, exit 2
        more = f" (+{len(bad) - 1} more unreadable: {', '.join(r.path for r in bad[1:])})" if len(bad) > 1 else ""
        also = f"; {len(missing)} required entr{'y' if len(missing) == 1 else 'ies'} missing" if missing else ""
        raise UserError(f"{bad[0].problem}{more}{also}")
    if missing:
        click.echo(f"{len(missing)} required entr{'y' if len(missing) == 1 else 'ies'} missing", err=True)
        raise SystemExit(1)
