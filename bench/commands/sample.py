"""``bench sample``: draw meshes from the generator and write them as textured .obj files.

Per sample ``sample_000.obj`` (+ ``sample_000.mtl``), its UV texture ``sample_000_texture.png`` and
``sample_000_views.png`` (the mesh rendered from the canonical FID pose at a few azimuths, side by
side, white background). ``samples.json`` records the generator, seed, class ids and latents.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

DEFAULT_VIEWS = "0,90,180"


def _parse_views(text: str) -> list[float]:
    """``"0,90,180"`` -> ``[0.0, 90.0, 180.0]``: finite azimuths in degrees, at least one."""
    import math

    from bench.errors import UserError

    expected = f"comma-separated finite azimuths in degrees (e.g. {DEFAULT_VIEWS})"
    try:
        views = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--views expects {expected}, got {text!r}") from None
    if not views:
        raise UserError(f"--views needs at least one azimuth: {expected}, got {text!r}")
    if not all(math.isfinite(v) for v in views):
        raise UserError(f"--views expects {expected}; NaN and infinity are refused, got {text!r}")
    return views


def _check_seed(seed: int) -> int:
    """The ``--seed`` of the latents: torch's generator takes a 64-bit seed."""
    from bench.errors import UserError

    if not 0 <= seed < 2 ** 63:
        raise UserError(f"--seed must be an integer in [0, 2^63), got {seed}")
    return seed


@click.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="Generator checkpoint (official checkpoint_latest.pth or a state dict); "
                   "default: the untrained demo generator.")
@click.option("--n", "num", default=4, show_default=True, type=click.IntRange(min=1), help="Number of samples.")
@click.option("--class-id", type=click.IntRange(0, 199),
              help="CUB class index (0-199) for every sample; default: a random class per sample.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the latents (and random classes).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:K.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--views", default=DEFAULT_VIEWS, show_default=True,
              help="Azimuths (degrees) of the rendered views, around the canonical pose.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=16),
              help="Pixel size of each rendered view.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1),
              help="Samples per generator forward.")
def sample(checkpoint, num, class_id, seed, device, out, views, size, batch_size):
    """Sample N meshes: per sample an .obj (+ .mtl), its texture PNG and a PNG of rendered views."""
    import torch
    from PIL import Image

    from bench.methods.base import TexturedMesh
    from bench.methods.meshinversion.generator import DEMO_LABEL, load_generator
    from bench.render.camera import view_quaternions
    from bench.render.export import texture_to_uint8
    from bench.render.obj import write_obj
    from bench.render.renderer import render_views
    from bench.render.uvsphere import uvsphere_template

    azimuths = _parse_views(views)
    seed = _check_seed(seed)
    from bench.devices import parse_device

    device = parse_device(device)
    if checkpoint is None:
        click.echo(f"No --checkpoint given: using the {DEMO_LABEL} (random weights; the samples "
                   "are not birds). Pass --checkpoint checkpoint_latest.pth for the released model.")
        generator = load_generator("demo", device=device)
    else:
        generator = load_generator(checkpoint, device=device)
        click.echo(f"Generator: {generator.label} (sha256 {generator.sha256[:12]}, "
                   f"texture {generator.texture_resolution})")
    template = uvsphere_template(device)

    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(num, generator.latent_dim, generator=rng)
    if class_id is None:
        classes = torch.randint(0, generator.n_classes, (num,), generator=rng)
    else:
        classes = torch.full((num,), class_id, dtype=torch.int64)
    quats = view_quaternions(azimuths)

    out.mkdir(parents=True, exist_ok=True)
    faces = template.faces.cpu().numpy()
    uvs = template.uvs.cpu().numpy()
    face_uv_index = template.face_uv_index.cpu().numpy()
    records = []
    for start in range(0, num, batch_size):
        stop = min(start + batch_size, num)
        with torch.no_grad():
            texture, mesh_map = generator(z[start:stop].to(device), classes[start:stop].to(device))
            vertices = template.vertex_positions(mesh_map)
            mesh = TexturedMesh(vertices=vertices, faces=template.faces, face_uvs=template.face_uvs,
                                texture=texture)
            rendered = render_views(mesh, quats.to(device), size=size).cpu().numpy()  # (b,K,S,S,3)
        for j in range(stop - start):
            i = start + j
            stem = f"sample_{i:03d}"
            tex_name, view_name = f"{stem}_texture.png", f"{stem}_views.png"
            Image.fromarray(texture_to_uint8(texture[j])).save(out / tex_name)
            Image.fromarray(rendered[j].transpose(1, 0, 2, 3).reshape(size, -1, 3)).save(out / view_name)
            write_obj(out / f"{stem}.obj", vertices[j].cpu().numpy(), faces, uvs, face_uv_index,
                      mtl_name=stem, texture_file=tex_name)
            records.append({"index": i, "class_id": int(classes[i]), "obj": f"{stem}.obj",
                            "mtl": f"{stem}.mtl", "texture": tex_name, "views": view_name,
                            "z": [round(float(x), 7) for x in z[i]]})
            click.echo(f"  {stem}: class {int(classes[i])} -> {out / (stem + '.obj')}")

    meta = {
        "generator": generator.label,
        "generator_sha256": generator.sha256,
        "texture_resolution": generator.texture_resolution,
        "seed": seed,
        "latent": "z ~ N(0,1) from torch.Generator().manual_seed(seed), shape (n,64); then classes if random",
        "views_azimuth_deg": azimuths,
        "view_size": size,
        "samples": records,
    }
    (out / "samples.json").write_text(json.dumps(meta, indent=1) + "\n")
    click.echo(f"Wrote {num} sample(s) to {out} ({generator.label}).")
