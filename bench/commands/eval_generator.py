"""``bench eval-generator``: Full / Texture / Mesh FID of the generator itself (supplement Tab. 1).

Protocol and outputs: :mod:`bench.studies.generator_fid`."""
from __future__ import annotations

from pathlib import Path

import click

from bench.commands.eval import eval_options

EVAL_FIELDS = ("fid_extractor", "fid_weights", "device", "batch_size", "kid_subsets", "kid_subset_size")


@click.command("eval-generator")
@click.option("--checkpoint", help="Generator checkpoint (official checkpoint_latest.pth or a state dict); "
                                   "default: the untrained demo generator.")
@click.option("--dataset", default="synthetic", show_default=True, help="Dataset whose classes, poses and images "
                                                                         "are used (see `bench ls datasets`).")
@click.option("--data-root", type=click.Path(path_type=Path), help="Dataset root folder (file datasets).")
@click.option("--split", help="Dataset split (ConvMesh computes CUB's statistics on train).")
@click.option("--limit", type=click.IntRange(min=2), help="Use only the first N images.")
@click.option("--set", "sets", multiple=True, metavar="DATASET.KEY=VALUE", help="A dataset config field.")
@click.option("--truncation", "sigma", type=float, default=0.25, show_default=True,
              help="Truncation sigma: latent entries redrawn while |z_i| > sigma (ConvMesh; 0.25 for CUB).")
@click.option("--pseudogt", type=click.Path(path_type=Path),
              help="ConvMesh pseudo-ground-truth folder (pseudogt_<R>x<R>/, one <index>.npz per image): adds "
                   "Texture and Mesh FID.")
@click.option("--seed", type=int, default=0, show_default=True, help="Latent seed (per image: seed and index; also the synthetic scenes, as `bench run --seed`).")
@click.option("--out", type=click.Path(path_type=Path), help="Study folder (default results/generator-fid-<dataset>).")
@click.option("--reference", metavar="paper|FILE", help="Show the paper's Tab. 1 rows beside the measured one.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@eval_options(EVAL_FIELDS)
def eval_generator(checkpoint, dataset, data_root, split, limit, sets, sigma, pseudogt, seed, out, reference, quiet,
                   **eval_opts):
    """Render one truncated generator sample per dataset image (its class, its pose), then FID/KID against
    the dataset's images; rerun the same command to resume."""
    import dataclasses

    import torch

    from bench import registry
    from bench.commands.eval import parse_eval_options
    from bench.commands.run import prepare_out_dir
    from bench.config import parse_sets
    from bench.datasets.pseudogt import check_folder, load_pseudogt
    from bench.errors import UserError
    from bench.metrics.extractors import FeatureExtractor
    from bench.metrics.images import read_png, write_png
    from bench.methods.meshinversion.generator import LATENT_DIM, load_generator
    from bench.progress import progress_bar
    from bench.render.uvsphere import uvsphere_template
    from bench.reporting.reference import load_reference
    from bench.runner import RunOptions, build_dataset
    from bench.seeds import instance_seed
    from bench.store import atomic_write_bytes, atomic_write_json
    from bench.studies import generator_fid as study

    if not sigma > 0:
        raise UserError(f"--truncation must be > 0, got {sigma}")
    opts = parse_eval_options(eval_opts)
    registry.get("datasets", dataset)
    over = parse_sets(sets)
    unknown = set(over) - {dataset}
    if unknown:
        raise UserError(f"--set {sorted(unknown)[0]}.…: only the dataset's fields ({dataset}.KEY=VALUE) can be set here")
    ds_over = dict(over.get(dataset, {}))
    if data_root is not None:
        ds_over["data_root"] = str(data_root)
    if split is not None:
        ds_over["split"] = split
    ds = build_dataset(RunOptions(methods=[], dataset=dataset, dataset_overrides=ds_over, seed=seed))
    n = len(ds) if limit is None else min(limit, len(ds))
    if n < 2:
        raise UserError(f"dataset {dataset!r} yields {n} image(s); FID needs at least 2 (check --data-root/--split)")
    doc = load_reference(reference) if reference else None
    if pseudogt is not None:
        check_folder(pseudogt, len(ds))
    generator = load_generator(checkpoint or "demo", device=opts.device)
    extractor = FeatureExtractor(opts.fid_extractor, opts.fid_weights, device=opts.device, batch_size=opts.batch_size)
    settings = study.GeneratorFIDSettings(
        dataset=ds.describe(), generator=generator.label, generator_sha256=generator.sha256, truncation=sigma,
        seed=seed, pseudogt=str(Path(pseudogt).resolve()) if pseudogt else None)
    out = Path(out) if out is not None else Path("results") / f"generator-fid-{dataset}"
    prepare_out_dir(out)
    study.check_settings(out, settings)

    template = uvsphere_template(opts.device)
    kinds = ("real", *study.kinds(pseudogt is not None))
    ids = [ds.instance_id(i) for i in range(n)]
    with progress_bar(not quiet, unit="img") as bar:
        task = bar.add_task("generator samples", total=n)
        for i, instance in enumerate(ids):
            paths = {k: study.image_path(out, k, instance) for k in kinds}
            if all(p.is_file() for p in paths.values()):
                bar.advance(task)
                continue  # done before (resume): the sample is not even loaded
            z = study.truncated_normal((LATENT_DIM,), sigma, torch.Generator().manual_seed(instance_seed(seed, i)))
            pgt = load_pseudogt(pseudogt, i) if pseudogt is not None else None
            images = study.render_instance(generator, template, ds.load(i), z, pgt, opts.device)
            for k in kinds:
                paths[k].parent.mkdir(parents=True, exist_ok=True)
                write_png(paths[k], images[k])
            bar.advance(task)

    values = study.fid_values(out, ids, pseudogt is not None, extractor, opts)
    size = read_png(study.image_path(out, "real", ids[0])).shape[-1]  # the dataset's image size
    result = {"settings": dataclasses.asdict(settings), "n": n,
              "protocol": study.protocol(settings, extractor.describe(), size), "values": values}
    atomic_write_json(out / "generator_fid.json", result, sort_keys=False)
    rows = [{"kind": k, "n": n, "fid": values[f"fid_{k}"], "kid": values[f"kid_{k}"],
             "kid_std": values[f"kid_{k}_std"]} for k in study.kinds(pseudogt is not None)]
    import pandas as pd

    atomic_write_bytes(out / "generator_fid.csv", pd.DataFrame(rows).to_csv(index=False).encode())
    _print(rows, doc, generator.label, sigma, out)


def _print(rows: list[dict], doc: dict | None, label: str, sigma: float, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from bench.reporting import reference as ref
    from bench.reporting.tables import fmt

    table = Table(title=Text(f"generator FID ({label}, truncation sigma {sigma:g}, n = {rows[0]['n']} images)"))
    for col in ("", "Full FID", "Texture FID", "Mesh FID", "KID (full)"):
        table.add_column(col, justify="left" if not col else "right")
    by = {r["kind"]: r for r in rows}
    table.add_row("measured", *[fmt(by[k]["fid"]) if k in by else "–" for k in ("full", "texture", "mesh")],
                  fmt(by["full"]["kid"]))
    for r in (doc or {}).get("rows", []):
        if any(k in r["values"] for k in ("fid_full", "fid_texture", "fid_mesh")):
            table.add_row(Text(f"[{doc['name']}] {r['method']}"),
                          *[ref.shown(r["values"].get(f"fid_{k}")) for k in ("full", "texture", "mesh")], "")
    Console(width=160).print(table)
    print(f"written: {out}/generator_fid.json, generator_fid.csv, images/")
