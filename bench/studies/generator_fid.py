"""``bench eval-generator``: FID of the generator itself, the supplement's Tab. 1 (ConvMesh's protocol).

* **Truncation** (ConvMesh ``run_generation.py``, ``evaluate_fid``): ``z ~ N(0, I)``; every entry with
  ``|z_i| > σ`` is redrawn from N(0, 1) until none is, i.e. each entry follows the standard normal
  truncated to [−σ, σ] (rejection sampling). σ = 0.25 for class-conditional CUB (ConvMesh's
  ``suggest_truncation_sigma``; MeshInversion reports its generator's FID the same way).
* **One generated object per dataset image**, as ConvMesh's evaluation loop: image i's class (so the
  classes come in the dataset's proportions) and image i's camera (the dataset's pose: the SfM pose on
  CUB), with ``z_i`` drawn from its own seeded stream (run seed, i) — batching and resume do not change it
  (ConvMesh draws from one stream seeded 1234, so its draws depend on the batch order).
* **Full FID**: the generated mesh with its generated texture. With ConvMesh's pseudo-ground truth
  (``--pseudogt``, :mod:`bench.datasets.pseudogt`): **Texture FID** = the pseudo-ground-truth mesh with
  the generated texture, **Mesh FID** = the generated mesh with the pseudo-ground-truth texture.
* **Images**: the MeshInversion renderer at the dataset's image size, ``image/2 + 0.5`` on the renderer's
  grey background (ConvMesh's ``image_pred/2 + 0.5``); real images are the dataset's crops times their
  mask on grey 0.5 (``bench eval``'s ``input-masked-grey`` reference). PNGs, ``round(255·x)``. ConvMesh
  renders at 299² against its own 299² crops; here both sides have the dataset's size and the
  extractor resizes them alike.
* **Extractor and weights** as ``bench eval`` (``--fid-extractor``, ``--fid-weights``); KID beside each FID.

The study folder: ``study.json`` (the settings; a rerun with others is refused), ``images/<kind>/<id>.png``
written per instance as it is done (a rerun skips finished instances), then ``generator_fid.json`` (strict
JSON: protocol and values) and ``generator_fid.csv`` (one row per kind).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.errors import UserError

KINDS = ("full", "texture", "mesh")  # FID columns fid_full, fid_texture, fid_mesh (as the paper's Tab. 1)
TRUNCATION = ("ConvMesh run_generation.py evaluate_fid: z = randn(64); while any |z_i| > sigma: redraw those "
              "entries from N(0,1) (per-entry standard normal truncated to [-sigma, sigma])")


def truncated_normal(shape, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """ConvMesh's Gaussian truncation: N(0,1) entries redrawn while ``|z| > sigma`` (float32)."""
    if sigma <= 0:
        raise UserError(f"--truncation must be > 0, got {sigma}")
    z = torch.randn(shape, generator=generator)
    while True:
        bad = z.abs() > sigma
        count = int(bad.sum())
        if count == 0:
            return z
        z[bad] = torch.randn(count, generator=generator)


@dataclass
class GeneratorFIDSettings:
    """What the images depend on (``study.json``); a rerun must match (``--limit`` may change: a larger one
    adds images)."""

    dataset: dict
    generator: str
    generator_sha256: str | None
    truncation: float
    seed: int
    pseudogt: str | None


def kinds(with_pseudogt: bool) -> tuple[str, ...]:
    return KINDS if with_pseudogt else KINDS[:1]


def check_settings(out: Path, settings: GeneratorFIDSettings) -> None:
    """Write ``study.json`` or refuse a folder made with other settings (one line)."""
    from bench.store import atomic_write_json

    path = out / "study.json"
    want = json.loads(json.dumps(asdict(settings), default=str))
    if path.is_file():
        have = json.loads(path.read_text())
        if have != want:
            diff = ", ".join(f"{k}: {have.get(k)!r} → {want[k]!r}" for k in want if have.get(k) != want[k])
            raise UserError(f"{out} holds a generator FID study made with other settings ({diff}); use another --out "
                            "or the same settings to resume")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, want)


def image_path(out: Path, kind: str, instance: str) -> Path:
    return out / "images" / kind / f"{instance}.png"


def _render01(template, texture, mesh_map, camera, size: int) -> torch.Tensor:
    """(H,W,3) float in [0,1]: ``image/2 + 0.5`` on the renderer's grey background."""
    from bench.methods.meshinversion.render import render

    out = render(template, texture, mesh_map, camera[None, :1], camera[None, 1:3], camera[None, 3:], size)
    return (out.image[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0)


def render_instance(generator, template, sample, z: torch.Tensor, pseudogt: dict | None, device) -> dict:
    """``{kind: (H,W,3) uint8}`` of one dataset image: ``real`` and each FID kind."""
    from bench.metrics.images import quantize_round

    size = sample.image.shape[-1]
    camera = sample.camera.float().to(device)
    with torch.no_grad():
        texture, mesh_map = generator(z[None].to(device), torch.tensor([sample.class_id], device=device))
        images = {"full": _render01(template, texture, mesh_map, camera, size)}
        if pseudogt is not None:
            gt_mesh = pseudogt["mesh"][None].to(device)
            gt_tex = pseudogt["texture"][None].to(device)
            images["texture"] = _render01(template, texture, gt_mesh, camera, size)
            images["mesh"] = _render01(template, gt_tex, mesh_map, camera, size)
    mask = sample.mask.float()[None]
    real = (sample.image.float() * mask + 0.5 * (1 - mask)).clamp(0, 1).permute(1, 2, 0)
    images["real"] = real
    return {k: quantize_round(v.cpu()) for k, v in images.items()}


def fid_values(out: Path, ids: list[str], with_pseudogt: bool, extractor, kid_options) -> dict:
    """``{"fid_<kind>", "kid_<kind>", "kid_<kind>_std"}`` of the written PNGs against the real ones."""
    from bench.metrics.distance import fid_from_features, kid_or_none
    from bench.metrics.images import PngDataset

    real = extractor.features(PngDataset([image_path(out, "real", i) for i in ids]))
    values = {}
    for kind in kinds(with_pseudogt):
        fake = extractor.features(PngDataset([image_path(out, kind, i) for i in ids]))
        values[f"fid_{kind}"] = fid_from_features(fake, real)
        kid = kid_or_none(fake, real, kid_options)
        values[f"kid_{kind}"], values[f"kid_{kind}_std"] = kid.get("kid_mean"), kid.get("kid_std")
    return values


def protocol(settings: GeneratorFIDSettings, extractor_desc: dict, size: int) -> dict:
    return {"truncation_sigma": settings.truncation, "truncation": TRUNCATION,
            "samples": "one per dataset image: its class (dataset class proportions) and its camera (dataset pose)",
            "latent_seed": f"per image: bench.seeds.instance_seed({settings.seed}, index)",
            "full": "generated mesh + generated texture", "texture": "pseudo-GT mesh + generated texture",
            "mesh": "generated mesh + pseudo-GT texture",
            "render": f"MeshInversion renderer at {size}x{size}, image/2 + 0.5 on grey 0.5 (ConvMesh image_pred/2+0.5)",
            "real": "dataset crop x mask on grey 0.5 (bench eval's input-masked-grey)",
            "quantisation": "round(255 x) to uint8 PNG", **extractor_desc}
