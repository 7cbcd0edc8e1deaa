"""The images of the FID protocols, rendered from a run's artifacts into PNGs (written once, reused).

* FID_1: the input crop times its mask and the input-view render times its hard mask, black
  background, at the render size, ``round(255·x)`` (``fid1-input``, ``fid1-render``).
* canonical views (FID_10/12, shape3d): 12 views of each reconstruction (orientation 30°, scale
  0.7, vertices centred, no translation, azimuth 0, 30, …, 330°, DIB-R at ``view_size``, hard mask,
  white background, truncated to uint8 as the official PNGs) (``views12``; ``views12-<size>`` at a
  non-protocol size), and the same views of the synthetic ground truth (``_reference/gt-views12``).
* the real-data reference images: input crop times mask on grey 0.5 (``_reference/input-masked-grey``).

A render is redone when its artifact is newer. Every path comes from :class:`bench.store.RunDir`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench.errors import UserError
from bench.metrics.base import EvalContext
from bench.metrics.images import ImageSet, quantize_round, write_png
from bench.render.camera import FID10_OPTIONS, FID12_ANGLES
from bench.render.camera import fid10_angles as _render_fid10

#: Canonical-view protocol constants (``--default_orientation``, ``--default_scale``, renderer size).
ORIENTATION_DEG = 30.0
VIEW_SCALE = 0.7
VIEW_SIZE = 256
#: Pseudo-method folder under ``RUN/fid`` holding the reference images and their features.
REFERENCE = "_reference"
FID1_INPUT, FID1_RENDER, DATASET_REFERENCE = "fid1-input", "fid1-render", "input-masked-grey"

__all__ = ["FID10_OPTIONS", "FID12_ANGLES", "ViewRenderer", "fid10_angles", "render_canonical_views"]


def fid10_angles(option: str = "paper") -> tuple[int, ...]:
    """Azimuths of FID_10: ``paper`` -> without 90 and 270 (10); ``official-code`` -> without 270 (11)."""
    try:
        return tuple(int(a) for a in _render_fid10(option))
    except ValueError:
        raise UserError(f"unknown --fid10-views {option!r}; use one of {', '.join(FID10_OPTIONS)}") from None


def views_protocol(angles, size: int) -> dict:
    """The protocol fields of a set of canonical views (recorded with FID_10/12)."""
    return {"views": list(angles), "num_views": len(angles), "orientation_deg": ORIENTATION_DEG, "scale": VIEW_SCALE,
            "size": size, "background": "white", "quantisation": "trunc(clamp(255 x)) to uint8 (official PNGs)"}


def mesh_for_rendering(mesh: dict, device="cpu") -> dict:
    """A mesh dict (TexturedMesh fields) ready for the renderer; UV meshes without ``face_uvs``
    (the ground truth of the synthetic data) get the UV-sphere template's."""
    out = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in mesh.items() if v is not None}
    if out.get("face_textures") is None and out.get("face_uvs") is None:
        from bench.render.uvsphere import uvsphere_template

        tpl = uvsphere_template("cpu")
        if out["faces"].shape[0] != tpl.num_faces or out["vertices"].shape[0] != tpl.num_vertices:
            raise ValueError("UV-textured mesh without face_uvs that is not the UV-sphere template")
        out["face_uvs"] = tpl.face_uvs.to(device)
    return out


def gt_mesh(gt: dict) -> dict:
    """TexturedMesh fields of a synthetic ground truth (UVs default to the UV-sphere template's)."""
    return {k: gt.get(k) for k in ("vertices", "faces", "face_uvs", "texture", "face_textures")}


def render_canonical_views(mesh: dict, angles=FID12_ANGLES, *, orientation: float = ORIENTATION_DEG,
                           scale: float = VIEW_SCALE, size: int = VIEW_SIZE, device="cpu") -> torch.Tensor:
    """The FID canonical views of one textured mesh.

    Args:
        mesh: TexturedMesh fields (``vertices`` (V,3), ``faces`` (F,3), and ``face_uvs`` (F,3,2) +
            ``texture`` (3,R,R) in [-1,1], or ``face_textures`` (F,T,T,3) in [-1,1]).
        angles: K azimuths in degrees.
    Returns:
        (K,size,size,3) uint8, white background (official FID_12 PNG contents).
    """
    from bench.methods.base import TexturedMesh
    from bench.render.camera import view_quaternions
    from bench.render.renderer import render_views

    m = mesh_for_rendering(mesh, device)
    fields = {k: m.get(k) for k in ("vertices", "faces", "face_uvs", "texture", "face_textures")}
    if fields["texture"] is not None:
        fields["face_textures"] = None
    quats = view_quaternions(list(angles), orientation_deg=orientation)
    with torch.no_grad():
        views = render_views(TexturedMesh(**fields), quats.to(device), size=size, scale=scale)
    return views.reshape(len(angles), size, size, 3).cpu()


def has_ground_truth(art: dict) -> bool:
    """Whether an artifact carries a ground-truth mesh (synthetic data)."""
    gt = art.get("gt")
    return bool(gt) and gt.get("vertices") is not None


class ViewRenderer:
    """Writes (when missing or stale) and lists the FID images of the run of ``ctx``."""

    def __init__(self, ctx: EvalContext):
        self.ctx, self.run = ctx, ctx.run
        self.size, self.device = ctx.options.view_size, ctx.options.device

    @property
    def views_kind(self) -> str:
        """Folder of the canonical views (``views12``; ``views12-<size>`` at a non-protocol size)."""
        return "views12" if self.size == VIEW_SIZE else f"views12-{self.size}"

    @property
    def gt_views_kind(self) -> str:
        return "gt-" + self.views_kind

    def _stale(self, png: Path, artifact: Path) -> bool:
        return not png.is_file() or png.stat().st_mtime_ns < artifact.stat().st_mtime_ns

    def _write_views(self, paths: list[Path], mesh: dict) -> None:
        views = render_canonical_views(mesh, FID12_ANGLES, size=self.size, device=self.device)
        for p, v in zip(paths, views):
            write_png(p, v)

    def _run_instances(self) -> dict[str, str]:
        """Every instance with an ok record in the run, with the first method (sorted) that has it."""
        seen: dict[str, str] = {}
        for method in self.run.methods():
            for rec in self.ctx.ok_records(method):
                seen.setdefault(rec["instance"], method)
        return dict(sorted(seen.items()))

    def fid1_images(self, method: str) -> tuple[ImageSet, ImageSet]:
        """(real, fake) FID_1 images of every ok record of ``method``."""
        import torch.nn.functional as F

        recs = self.ctx.ok_records(method)
        real, fake = [], []
        tick = self.ctx.ticker(f"{method}: FID_1 images", len(recs))
        for rec in recs:
            inst = rec["instance"]
            rp, fp = self.run.fid_image_path(method, FID1_INPUT, inst), self.run.fid_image_path(method, FID1_RENDER, inst)
            art_path = self.run.artifact_path(method, inst)
            if self._stale(rp, art_path) or self._stale(fp, art_path):
                art = self.run.load_artifact(method, inst)
                img, msk = art["image"].float(), art["mask"].float()
                inp, imask = art["input_image"].float(), art["input_mask"].float()
                h, w = img.shape[-2:]
                if inp.shape[-2:] != (h, w):  # FID_1 is taken at the render size
                    inp = F.interpolate(inp[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                    imask = F.interpolate(imask[None, None], size=(h, w), mode="nearest")[0, 0]
                write_png(rp, quantize_round(inp * imask).permute(1, 2, 0))
                write_png(fp, quantize_round(img * msk).permute(1, 2, 0))
            real.append(rp)
            fake.append(fp)
            tick()
        return ImageSet(method, FID1_INPUT, tuple(real)), ImageSet(method, FID1_RENDER, tuple(fake))

    def view_paths(self, method: str, instance: str, angles=FID12_ANGLES) -> list[Path]:
        """Canonical-view PNG paths of one reconstruction (``method`` = REFERENCE: of the ground truth)."""
        kind = self.gt_views_kind if method == REFERENCE else self.views_kind
        return [self.run.fid_view_path(method, kind, instance, a) for a in angles]

    def view_images(self, method: str, angles=FID12_ANGLES) -> ImageSet:
        """Canonical views (instance-major, then angle) of every ok record of ``method``."""
        recs = self.ctx.ok_records(method)
        out = []
        tick = self.ctx.ticker(f"{method}: canonical views", len(recs))
        for rec in recs:
            inst = rec["instance"]
            paths = self.view_paths(method, inst)
            art_path = self.run.artifact_path(method, inst)
            if any(self._stale(p, art_path) for p in paths):
                self._write_views(paths, self.run.load_artifact(method, inst)["mesh"])
            out += self.view_paths(method, inst, angles)
            tick()
        return ImageSet(method, self.views_kind, tuple(out))

    def gt_view_images(self, angles=FID12_ANGLES) -> ImageSet:
        """Canonical views of the ground-truth mesh of every instance of the run that has one."""
        seen = self._run_instances()
        out = []
        tick = self.ctx.ticker("reference: ground-truth views", len(seen))
        for inst, method in seen.items():
            paths = self.view_paths(REFERENCE, inst)
            if not all(p.is_file() for p in paths):
                art = self.run.load_artifact(method, inst)
                if not has_ground_truth(art):
                    tick()
                    continue
                self._write_views(paths, gt_mesh(art["gt"]))
            out += self.view_paths(REFERENCE, inst, angles)
            tick()
        return ImageSet(REFERENCE, self.gt_views_kind, tuple(out))

    def dataset_reference_images(self) -> ImageSet:
        """Input crops times mask on grey (ConvMesh's test-val recipe), one per instance of the run."""
        seen = self._run_instances()
        out = []
        tick = self.ctx.ticker("reference: dataset images", len(seen))
        for inst, method in seen.items():
            p = self.run.fid_image_path(REFERENCE, DATASET_REFERENCE, inst)
            if not p.is_file():
                art = self.run.load_artifact(method, inst)
                inp, m = art["input_image"].float(), art["input_mask"].float()
                write_png(p, quantize_round(inp * m + 0.5 * (1 - m)).permute(1, 2, 0))
            out.append(p)
            tick()
        return ImageSet(REFERENCE, DATASET_REFERENCE, tuple(out))
