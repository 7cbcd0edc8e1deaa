"""FID_1, FID_10, FID_12 and KID of a run directory, through torch-fidelity.

Protocols (MeshInversion ``run_evaluation.py``, spec §e; every option is recorded in the output):

* **FID_1** — real: the input crop times its mask, fake: the input-view render times its hard
  mask, both on a **black** background at the render size (one image each per instance, no
  reference statistics). The official code feeds these floats straight to Inception; here they
  reach the extractor as uint8 quantised by rounding (``round(255·x)``, the closest uint8 to the
  official float input) and are kept as PNGs.
* **FID_12** — 12 canonical views of each reconstruction (canonical orientation 30°, scale 0.7,
  vertices centred by their mean, no translation, azimuth 0, 30, …, 330°, DIB-R at 256×256, hard
  mask, composited on **white** as ``img/2 + 0.5 + (1 - mask)``, ×255, clamped, **truncated** to
  uint8 — exactly the PNGs the official code writes) against reference statistics
  (:mod:`bench.metrics.reference`).
* **FID_10** — a subset of the same 12 renders: ``paper`` (default) drops 90° and 270° (10 views,
  the protocol the paper describes); ``official-code`` drops only 270° (11 views, what the released
  code computes because its file-name filter never matches ``_090``).
* **KID** next to each FID (torch-fidelity's polynomial-kernel unbiased MMD, ``kid_subsets``
  subsets of size ``min(n_fake, n_real, 1000)``). Not available against an ``.npz`` reference
  (statistics only, no features).

Renders are written once per run under ``RUN/fid/<method>/<kind>/`` (``fid1-input``,
``fid1-render``, ``views12``) and reused (re-rendered only when the artifact is newer); extracted
features are cached next to them, keyed by the extractor's name, layer and weights sha256. The FID
is computed over **all** ok records of a method in the run directory (every shard), never averaged
across shards.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from bench.errors import UserError
from bench.metrics.base import EvalContext, EvalOptions, Metric
from bench.store import RunDir, atomic_write_bytes

#: Azimuths of the 12 canonical views (degrees).
FID12_ANGLES: tuple[int, ...] = tuple(range(0, 360, 30))
#: ``--fid10-views`` choices.
FID10_OPTIONS = ("paper", "official-code")
#: Canonical-view protocol constants (``--default_orientation``, ``--default_scale``, renderer size).
ORIENTATION_DEG = 30.0
VIEW_SCALE = 0.7
VIEW_SIZE = 256
#: Pseudo-method folder under ``RUN/fid`` holding the reference images and their features.
REFERENCE = "_reference"


# ---------------------------------------------------------------------------------------------
# quantisation and small helpers


def quantize_truncate(img01: torch.Tensor) -> torch.Tensor:
    """``clamp(255·x, 0, 255)`` cast to uint8 (truncation), as the official FID_12 PNGs are written."""
    return (img01.float() * 255).clamp(0, 255).to(torch.uint8)


def quantize_round(img01: torch.Tensor) -> torch.Tensor:
    """``round(255·x)`` clamped to uint8 (FID_1 images; nearest to the official float input)."""
    return (img01.float() * 255).round().clamp(0, 255).to(torch.uint8)


def fid10_angles(option: str = "paper") -> tuple[int, ...]:
    """Azimuths of FID_10: ``paper`` -> without 90 and 270 (10); ``official-code`` -> without 270 (11)."""
    try:
        from bench.render.camera import fid10_angles as render_fid10

        return tuple(int(a) for a in render_fid10(option))
    except ValueError:
        raise UserError(f"unknown --fid10-views {option!r}; use one of {', '.join(FID10_OPTIONS)}") from None


def write_png(path: Path, hwc_uint8) -> None:
    """Atomically write an (H,W,3) uint8 array/tensor as PNG."""
    from PIL import Image

    arr = hwc_uint8.cpu().numpy() if torch.is_tensor(hwc_uint8) else np.asarray(hwc_uint8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def read_png(path: Path) -> torch.Tensor:
    """(3,H,W) uint8 tensor of an RGB PNG."""
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


class PngDataset(torch.utils.data.Dataset):
    """uint8 (3,H,W) tensors of PNG files (what torch-fidelity's extraction loop consumes)."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return read_png(self.paths[i])


def fid_from_statistics(stats1: dict, stats2: dict) -> float:
    """Fréchet distance of two ``{"mu", "sigma"}`` statistics (torch-fidelity's ``fid_statistics_to_metric``)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    from bench.metrics.reference import as_float64

    a, b = as_float64(stats1), as_float64(stats2)
    if a["mu"].shape != b["mu"].shape:
        raise UserError(f"feature dimensions differ: {a['mu'].shape[0]} vs reference {b['mu'].shape[0]} "
                        "(reference statistics made with another extractor?)")
    return float(fid_statistics_to_metric(a, b, verbose=False)[KEY_METRIC_FID])


def fid_from_features(fake, real) -> float:
    """FID of two (N,D) feature sets (torch-fidelity statistics and distance)."""
    from bench.metrics.reference import statistics_from_features

    return fid_from_statistics(statistics_from_features(fake), statistics_from_features(real))


def kid_from_features(fake, real, subsets: int = 100, max_subset_size: int = 1000, seed: int = 2020) -> dict:
    """KID (torch-fidelity ``kid_features_to_metric``) with subset size ``min(n_fake, n_real, max)``.

    Returns:
        ``{"kid_mean", "kid_std", "kid_subset_size", "kid_subsets"}``.
    """
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = int(min(len(fake), len(real), max_subset_size))
    if size < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    out = kid_features_to_metric(torch.as_tensor(fake).float(), torch.as_tensor(real).float(), kid_subsets=subsets,
                                 kid_subset_size=size, rng_seed=seed, verbose=False)
    return {"kid_mean": out[KEY_METRIC_KID_MEAN], "kid_std": out[KEY_METRIC_KID_STD], "kid_subset_size": size,
            "kid_subsets": subsets}


# ---------------------------------------------------------------------------------------------
# rendering


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


# ---------------------------------------------------------------------------------------------
# the corpus engine


class FIDEngine:
    """Renders, features and FID/KID values of one run, shared by the FID and KID metrics.

    Everything heavy is computed once per process (and renders/features cached on disk).
    """

    def __init__(self, ctx: EvalContext):
        self.ctx = ctx
        self.run: RunDir = ctx.run
        self.opts: EvalOptions = ctx.options
        self._extractor = None
        self._features: dict[tuple, dict] = {}
        self._reference_npz = None
        self.reference_desc: dict = {}
        self.manifest = self.run.read_manifest()

    @classmethod
    def of(cls, ctx: EvalContext) -> "FIDEngine":
        if "fid_engine" not in ctx.cache:
            ctx.cache["fid_engine"] = cls(ctx)
        return ctx.cache["fid_engine"]

    # -- components ------------------------------------------------------------------------------
    @property
    def extractor(self):
        if self._extractor is None:
            from bench.metrics.extractors import FeatureExtractor

            self._extractor = FeatureExtractor(self.opts.fid_extractor, self.opts.fid_weights, self.opts.device,
                                               self.opts.batch_size)
        return self._extractor

    def _bar(self, description: str, total: int):
        bar = self.ctx.progress
        if bar is None:
            return lambda n=1: None
        task = bar.add_task(description, total=total)
        return lambda n=1: bar.advance(task, n)

    def reference_choice(self) -> tuple[str, Path | None, str]:
        from bench.metrics.reference import resolve_reference

        return resolve_reference(self.opts.fid_reference, self.manifest, self.opts.fid_extractor)

    def check_reference(self) -> None:
        """Fail early (before any rendering) when an ``.npz`` reference is missing or mismatched."""
        kind, _, _ = self.reference_choice()
        if kind == "npz":
            self.reference_npz()

    def reference_npz(self) -> dict:
        if self._reference_npz is None:
            from bench.metrics.reference import load_reference_npz

            kind, path, where = self.reference_choice()
            ref = load_reference_npz(path, where)
            if ref["format"] == "convmesh-tril" and self.opts.fid_extractor != "torchvision-inception":
                raise UserError(f"{path} holds ConvMesh statistics, computed with torchvision's Inception; use "
                                "--fid-extractor torchvision-inception with it, or --fid-reference dataset")
            self._reference_npz = ref
        return self._reference_npz

    @property
    def views_kind(self) -> str:
        """Folder name of the canonical views (``views12``; ``views12-<size>`` at a non-protocol size)."""
        return "views12" if self.opts.view_size == VIEW_SIZE else f"views12-{self.opts.view_size}"

    # -- images ------------------------------------------------------------------------------------
    def _stale(self, png: Path, artifact: Path) -> bool:
        return not png.is_file() or png.stat().st_mtime_ns < artifact.stat().st_mtime_ns

    def fid1_images(self, method: str) -> tuple[list[Path], list[Path]]:
        """PNG paths (real, fake) of FID_1 for every ok record of ``method`` (written when missing)."""
        import torch.nn.functional as F

        recs = self.ctx.ok_records(method)
        real_dir, fake_dir = self.run.fid_dir(method, "fid1-input"), self.run.fid_dir(method, "fid1-render")
        real, fake = [], []
        tick = self._bar(f"{method}: FID_1 images", len(recs))
        for rec in recs:
            inst = rec["instance"]
            rp, fp = real_dir / f"{inst}.png", fake_dir / f"{inst}.png"
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
        return real, fake

    def _write_views(self, paths: list[Path], mesh) -> None:
        """Render the 12 canonical views of ``mesh`` (artifact dict) into ``paths`` (one per angle)."""
        views = render_canonical_views(mesh, FID12_ANGLES, size=self.opts.view_size, device=self.opts.device)
        for p, v in zip(paths, views):
            write_png(p, v)

    def view_images(self, method: str, angles=FID12_ANGLES) -> list[Path]:
        """PNG paths of the canonical views (instance-major, then angle) of every ok record."""
        recs = self.ctx.ok_records(method)
        folder = self.run.fid_dir(method, self.views_kind)
        out = []
        tick = self._bar(f"{method}: canonical views", len(recs))
        for rec in recs:
            inst = rec["instance"]
            paths = [folder / f"{inst}_{a:03d}.png" for a in FID12_ANGLES]
            art_path = self.run.artifact_path(method, inst)
            if any(self._stale(p, art_path) for p in paths):
                self._write_views(paths, self.run.load_artifact(method, inst)["mesh"])
            out += [folder / f"{inst}_{a:03d}.png" for a in angles]
            tick()
        return out

    def gt_view_images(self, angles=FID12_ANGLES) -> list[Path]:
        """Canonical views of the ground-truth meshes of every instance that has one (synthetic
        data), over all methods' ok records (deduplicated by instance)."""
        folder = self.run.fid_dir(REFERENCE, "gt-" + self.views_kind)
        out = []
        seen = {}
        for method in self.run.methods():
            for rec in self.ctx.ok_records(method):
                seen.setdefault(rec["instance"], method)
        tick = self._bar("reference: ground-truth views", len(seen))
        for inst, method in sorted(seen.items()):
            paths = [folder / f"{inst}_{a:03d}.png" for a in FID12_ANGLES]
            if not all(p.is_file() for p in paths):
                art = self.run.load_artifact(method, inst)
                gt = art.get("gt")
                if not gt or gt.get("vertices") is None:
                    tick()
                    continue
                self._write_views(paths, gt_mesh(gt))
            out += [folder / f"{inst}_{a:03d}.png" for a in angles]
            tick()
        return out

    def dataset_reference_images(self) -> list[Path]:
        """Input crops times mask on grey (ConvMesh's test-val recipe), one per instance of the run."""
        folder = self.run.fid_dir(REFERENCE, "input-masked-grey")
        seen = {}
        for method in self.run.methods():
            for rec in self.ctx.ok_records(method):
                seen.setdefault(rec["instance"], method)
        out = []
        tick = self._bar("reference: dataset images", len(seen))
        for inst, method in sorted(seen.items()):
            p = folder / f"{inst}.png"
            if not p.is_file():
                art = self.run.load_artifact(method, inst)
                inp, m = art["input_image"].float(), art["input_mask"].float()
                write_png(p, quantize_round(inp * m + 0.5 * (1 - m)).permute(1, 2, 0))
            out.append(p)
            tick()
        return out

    def synthetic(self) -> bool:
        """Whether the run has ground-truth meshes (then the dataset reference = GT renders)."""
        from bench.metrics.reference import dataset_name

        if dataset_name(self.manifest) == "synthetic":
            return True
        for method in self.run.methods():
            for rec in self.ctx.ok_records(method)[:1]:
                art = self.run.load_artifact(method, rec["instance"])
                return bool(art.get("gt")) and art["gt"].get("vertices") is not None
        return False

    # -- features ----------------------------------------------------------------------------------
    def features(self, paths: list[Path], cache_dir: Path, label: str) -> torch.Tensor:
        """Features (N,D) of the PNGs ``paths`` (same order).

        Cached in memory and on disk (``cache_dir/features-<extractor fingerprint>.pt``: per file
        name, its size/mtime stamp and feature); only new or changed files go through the extractor.
        """
        if not paths:
            return torch.zeros(0, 0)
        fp = self.extractor.fingerprint()
        stamps = {}
        for p in paths:
            st = os.stat(p)
            stamps[p.name] = f"{st.st_size}|{st.st_mtime_ns}"
        cache = cache_dir / f"features-{fp}.pt"
        mem = self._features.setdefault((str(cache_dir), fp), {})
        if not mem and cache.is_file():
            try:
                blob = torch.load(cache, map_location="cpu", weights_only=False)
                mem.update({n: (s, f) for n, s, f in zip(blob["names"], blob["stamps"], blob["features"])})
            except Exception:  # noqa: BLE001 - a damaged cache is recomputed
                mem.clear()
        todo = [p for p in paths if mem.get(p.name, (None,))[0] != stamps[p.name]]
        todo = list({p.name: p for p in todo}.values())
        if todo:
            tick = self._bar(f"{label}: features", len(todo))
            feats = self.extractor.features(PngDataset(todo), progress=tick)
            for p, f in zip(todo, feats):
                mem[p.name] = (stamps[p.name], f.clone())
            names = sorted(mem)
            buf = io.BytesIO()
            torch.save({"names": names, "stamps": [mem[n][0] for n in names],
                        "features": torch.stack([mem[n][1] for n in names]),
                        "extractor": self.extractor.describe()}, buf)
            atomic_write_bytes(cache, buf.getvalue())
        return torch.stack([mem[p.name][1] for p in paths])

    # -- metrics ----------------------------------------------------------------------------------
    def _counts(self, method: str) -> dict:
        return {"n_instances": len(self.ctx.ok_records(method)), "n_failed": len(self.ctx.failed_records(method))}

    def fid1(self, method: str) -> dict:
        real, fake = self.fid1_images(method)
        out = {**self._counts(method), "n_images": len(fake)}
        if len(fake) < 2:
            return {**out, "fid": None, "note": "FID needs at least 2 ok instances"}
        fr = self.features(real, self.run.fid_dir(method, "fid1-input"), f"{method}: FID_1 inputs")
        ff = self.features(fake, self.run.fid_dir(method, "fid1-render"), f"{method}: FID_1 renders")
        return {**out, "fid": fid_from_features(ff, fr), **self._kid(ff, fr)}

    def _kid(self, fake, real) -> dict:
        if min(len(fake), len(real)) < 2:
            return {"kid_mean": None, "kid_std": None}
        return kid_from_features(fake, real, self.opts.kid_subsets, self.opts.kid_subset_size, self.opts.seed)

    def reference_for(self, angles) -> tuple[dict | None, torch.Tensor | None, dict]:
        """(statistics, features or None, description) of the FID_10/12 reference for ``angles``."""
        kind, path, _ = self.reference_choice()
        if kind == "npz":
            ref = self.reference_npz()
            desc = {"reference": "npz", "reference_path": ref["path"], "reference_format": ref["format"],
                    "reference_num_images": ref["num_images"]}
            return {"mu": ref["mu"], "sigma": ref["sigma"]}, None, desc
        if self.synthetic():
            paths = self.gt_view_images(angles)
            desc = {"reference": "dataset", "reference_images": "ground-truth meshes' canonical views "
                    "(same views, renderer, background and quantisation as the reconstructions)"}
            label, folder = "reference GT views", self.run.fid_dir(REFERENCE, "gt-" + self.views_kind)
        else:
            paths = self.dataset_reference_images()
            desc = {"reference": "dataset", "reference_images": "input crops x mask on grey 0.5 background "
                    "(ConvMesh test-val recipe), one per instance of the run"}
            label, folder = "reference images", self.run.fid_dir(REFERENCE, "input-masked-grey")
        desc["reference_num_images"] = len(paths)
        if len(paths) < 2:
            return None, None, {**desc, "note": "fewer than 2 reference images"}
        from bench.metrics.reference import statistics_from_features

        feats = self.features(paths, folder, label)
        return statistics_from_features(feats), feats, desc

    def views_fid(self, method: str, angles) -> dict:
        paths = self.view_images(method, angles)
        out = {**self._counts(method), "n_images": len(paths), "views": list(angles)}
        stats, ref_feats, desc = self.reference_for(angles)
        self.reference_desc = {k: v for k, v in desc.items() if k != "note"}
        out.update({k: v for k, v in desc.items() if k == "note"})
        if len(paths) < 2 or stats is None:
            return {**out, "fid": None, "kid_mean": None, "kid_std": None,
                    "note": out.get("note", "FID needs at least 2 images")}
        from bench.metrics.reference import statistics_from_features

        feats = self.features(paths, self.run.fid_dir(method, self.views_kind), f"{method}: views")
        out["fid"] = fid_from_statistics(statistics_from_features(feats), stats)
        if ref_feats is not None:
            out.update(self._kid(feats, ref_feats))
        else:
            out.update({"kid_mean": None, "kid_std": None,
                        "kid_note": "reference .npz holds statistics only: no KID"})
        return out

    def protocol(self, kind: str) -> dict:
        """The protocol fields recorded with each FID result."""
        base = {**self.extractor.describe(), "device": self.opts.device, "batch_size": self.opts.batch_size,
                "kid": {"subsets": self.opts.kid_subsets, "max_subset_size": self.opts.kid_subset_size,
                        "seed": self.opts.seed, "kernel": "poly(degree 3, gamma 1/D, coef0 1)"}}
        if kind == "fid1":
            return {**base, "images": "input x mask vs input-view render x render mask, black background, "
                    "render size", "quantisation": "round(255 x) to uint8"}
        angles = FID12_ANGLES if kind == "fid12" else fid10_angles(self.opts.fid10_views)
        ref_kind, path, _ = self.reference_choice()
        proto = {**base, "views": list(angles), "num_views": len(angles), "orientation_deg": ORIENTATION_DEG,
                 "scale": VIEW_SCALE, "size": self.opts.view_size, "background": "white",
                 "quantisation": "trunc(clamp(255 x)) to uint8 (official PNGs)",
                 "reference": "npz" if ref_kind == "npz" else "dataset",
                 "reference_path": str(path) if path else None}
        if kind == "fid10":
            proto["fid10_views"] = self.opts.fid10_views
        proto.update(self.reference_desc)
        return proto


def gt_mesh(gt: dict) -> dict:
    """TexturedMesh fields of a synthetic ground truth (``vertices``, ``faces``, ``texture``, optional
    ``face_uvs``/``face_textures``); UVs default to the UV-sphere template's."""
    return {k: gt.get(k) for k in ("vertices", "faces", "face_uvs", "texture", "face_textures")}


# ---------------------------------------------------------------------------------------------
# metric classes


class _FIDBase(Metric):
    level = "corpus"
    kind = ""

    def values(self, engine: FIDEngine, method: str) -> dict:  # pragma: no cover - per subclass
        raise NotImplementedError

    def corpus(self, ctx: EvalContext) -> dict:
        engine = FIDEngine.of(ctx)
        if self.kind != "fid1":
            engine.check_reference()
        _ = engine.extractor  # fail early on a missing weights file
        methods = {m: self.values(engine, m) for m in ctx.methods}
        result = {"protocol": engine.protocol(self.kind), "methods": methods}
        ctx.cache.setdefault("fid_results", {})[self.kind] = result
        return result


class FID1Metric(_FIDBase):
    """FID of masked input vs masked input-view render (black background), one pair per instance."""

    name = "fid1"
    kind = "fid1"
    summary = "FID of masked input vs input-view render (black bg)"

    def values(self, engine, method):
        return engine.fid1(method)


class FID12Metric(_FIDBase):
    """FID of the 12 canonical views (white background) vs reference statistics."""

    name = "fid12"
    kind = "fid12"
    summary = "FID of 12 canonical views (white bg) vs reference stats"

    def values(self, engine, method):
        return engine.views_fid(method, FID12_ANGLES)


class FID10Metric(_FIDBase):
    """FID of 10 (``paper``) or 11 (``official-code``) canonical views vs reference statistics."""

    name = "fid10"
    kind = "fid10"
    summary = "FID of 10 canonical views (white bg) vs reference stats"

    def values(self, engine, method):
        return engine.views_fid(method, fid10_angles(engine.opts.fid10_views))


class KIDMetric(Metric):
    """KID next to each FID: ``{method: {"fid1": {...}, "fid10": {...}, "fid12": {...}}}``.

    Uses the FID results already computed in the same `bench eval` call (``ctx.cache``) and computes
    the missing ones otherwise.
    """

    name = "kid"
    level = "corpus"
    summary = "KID next to each FID"
    KINDS = (("fid1", FID1Metric), ("fid10", FID10Metric), ("fid12", FID12Metric))

    def corpus(self, ctx: EvalContext) -> dict:
        done = ctx.cache.setdefault("fid_results", {})
        protocol, methods = {}, {m: {} for m in ctx.methods}
        for kind, cls in self.KINDS:
            if kind not in done:
                done[kind] = cls().corpus(ctx)
            res = done[kind]
            protocol[kind] = res["protocol"]
            for m in ctx.methods:
                v = res["methods"].get(m, {})
                methods[m][kind] = {k: v.get(k) for k in ("kid_mean", "kid_std", "kid_subset_size", "n_images")}
        return {"protocol": protocol, "methods": methods}
