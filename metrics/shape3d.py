"""3D and appearance metrics against synthetic ground truth (``Sample.gt`` present).

Per instance (then averaged per method):

* **Chamfer-L2** and **F-score** between points sampled on the reconstructed and the GT surfaces.
  The orthographic camera cannot tell object scale from camera scale, nor object translation from
  camera translation, so both meshes are first brought to a common normalisation **in the shared
  canonical object frame** (no rotation alignment: every method predicts in that frame):
  each mesh is centred at its area-weighted surface centroid and divided by its RMS surface radius
  ``sqrt(mean over the surface of |x - c|^2)`` (exact per-triangle integrals), so both have unit
  RMS radius. ``num_points`` points are then sampled uniformly on each normalised surface (area
  weighted, fixed seed).
  - Chamfer-L2 = ``mean_a min_b |a-b|^2 + mean_b min_a |a-b|^2`` (sum of both directions, squared
    distances, in normalised units).
  - F-score at ``τ = fscore_threshold × diagonal of the normalised GT's bounding box`` (default
    0.05): precision = share of predicted points within τ of the GT points, recall = share of GT
    points within τ of the predicted points, ``F = 2PR/(P+R)``.
* **Latent error** ``|z - z_gt| / sqrt(D)`` (methods with a latent of the GT's dimension).
* **PSNR** and **SSIM** of the 12 canonical views (the FID_12 renders, white background, uint8)
  against the GT mesh's same views: per view in [0,1], averaged over the 12 views. PSNR =
  ``10 log10(1 / MSE)``, capped at 100 dB (MSE floored at 1e-10); SSIM with an 11×11 Gaussian
  window (σ = 1.5, separable), ``C1 = 0.01²``, ``C2 = 0.03²``, per channel, valid region, mean.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bench.metrics.base import EvalContext, Metric

PSNR_CAP_DB = 100.0


# ---------------------------------------------------------------------------------------------
# geometry


def _triangles(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    return vertices.double()[faces.long()]  # (F,3,3)


def surface_moments(vertices: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Area-weighted surface centroid (3,) and RMS surface radius () of a triangle mesh (float64).

    RMS radius = ``sqrt(∫ |x - c|² dA / A)`` with the exact per-triangle second moment
    ``A/6 · (|a|² + |b|² + |c|² + a·b + b·c + c·a)`` (corners relative to c).
    """
    tri = _triangles(vertices, faces)
    area = 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1)
    total = area.sum()
    if total <= 0:
        raise ValueError("mesh has zero surface area")
    centre = (area[:, None] * tri.mean(1)).sum(0) / total
    t = tri - centre
    a, b, c = t[:, 0], t[:, 1], t[:, 2]
    second = ((a * a).sum(-1) + (b * b).sum(-1) + (c * c).sum(-1) + (a * b).sum(-1) + (b * c).sum(-1)
              + (c * a).sum(-1)) / 6
    radius = torch.sqrt((area * second).sum() / total)
    return centre, radius


def normalize_mesh(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Vertices (V,3) centred at the area-weighted centroid and scaled to unit RMS surface radius (float64)."""
    centre, radius = surface_moments(vertices, faces)
    return (vertices.double() - centre) / radius


def sample_surface(vertices: torch.Tensor, faces: torch.Tensor, num_points: int, seed: int = 0) -> torch.Tensor:
    """(num_points,3) float64 points uniform on the surface (area-weighted faces, uniform barycentrics)."""
    gen = torch.Generator().manual_seed(seed)
    tri = _triangles(vertices, faces)
    area = 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1)
    idx = torch.multinomial(area.float(), num_points, replacement=True, generator=gen)
    r1 = torch.rand(num_points, generator=gen, dtype=torch.float64).sqrt()
    r2 = torch.rand(num_points, generator=gen, dtype=torch.float64)
    t = tri[idx]
    return (1 - r1)[:, None] * t[:, 0] + (r1 * (1 - r2))[:, None] * t[:, 1] + (r1 * r2)[:, None] * t[:, 2]


def nearest_sq_dist(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """For each point of ``a`` (N,3), the squared distance to its nearest point of ``b`` (M,3)."""
    out = []
    for start in range(0, a.shape[0], chunk):
        d = torch.cdist(a[start:start + chunk], b, compute_mode="donot_use_mm_for_euclid_dist")
        out.append(d.min(dim=1).values ** 2)
    return torch.cat(out)


def chamfer_fscore(pred_pts: torch.Tensor, gt_pts: torch.Tensor, threshold: float) -> dict:
    """Chamfer-L2 (sum of both mean squared nearest distances) and F-score at ``threshold``."""
    d_pg = nearest_sq_dist(pred_pts, gt_pts)
    d_gp = nearest_sq_dist(gt_pts, pred_pts)
    precision = float((d_pg <= threshold ** 2).double().mean())
    recall = float((d_gp <= threshold ** 2).double().mean())
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"chamfer_l2": float(d_pg.mean() + d_gp.mean()), "fscore": f, "precision": precision, "recall": recall}


def shape_metrics(pred_vertices, pred_faces, gt_vertices, gt_faces, *, num_points: int = 10000,
                  fscore_threshold: float = 0.05, seed: int = 0) -> dict:
    """Chamfer-L2 / F-score of a reconstruction vs its GT after scale/translation normalisation.

    Args:
        pred_vertices, gt_vertices: (V,3) in the canonical object frame; pred_faces, gt_faces: (F,3).
        num_points: points sampled on each surface.
        fscore_threshold: τ as a fraction of the normalised GT's bounding-box diagonal.
    Returns:
        ``{"chamfer_l2", "fscore", "precision", "recall", "fscore_tau"}``.
    """
    pv = normalize_mesh(torch.as_tensor(pred_vertices), torch.as_tensor(pred_faces))
    gv = normalize_mesh(torch.as_tensor(gt_vertices), torch.as_tensor(gt_faces))
    tau = fscore_threshold * float((gv.max(0).values - gv.min(0).values).norm())
    pp = sample_surface(pv, torch.as_tensor(pred_faces), num_points, seed)
    gp = sample_surface(gv, torch.as_tensor(gt_faces), num_points, seed)
    return {**chamfer_fscore(pp, gp, tau), "fscore_tau": tau}


def latent_error(z, z_gt) -> float | None:
    """``|z - z_gt| / sqrt(D)``; None when either is missing or the sizes differ."""
    if z is None or z_gt is None:
        return None
    z, z_gt = torch.as_tensor(z).double().reshape(-1), torch.as_tensor(z_gt).double().reshape(-1)
    if z.numel() != z_gt.numel():
        return None
    return float((z - z_gt).norm() / math.sqrt(z.numel()))


# ---------------------------------------------------------------------------------------------
# images


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per image of (...,C,H,W) tensors in [0,1], capped at 100 dB."""
    mse = ((a.double() - b.double()) ** 2).flatten(-3).mean(-1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp(max=PSNR_CAP_DB)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM per image of (N,C,H,W) tensors in [0,1]: Gaussian window, per channel, valid region, mean.

    ``SSIM = ((2 μa μb + C1)(2 σab + C2)) / ((μa² + μb² + C1)(σa² + σb² + C2))``, C1 = 0.01², C2 = 0.03².
    The Gaussian filter is applied separably (rows, then columns) in float32; the SSIM map in float64.
    """
    a, b = a.float(), b.float()
    c = a.shape[1]
    g = _gaussian_window(window, sigma).float()
    k_rows = g.reshape(1, 1, window, 1).expand(c, 1, window, 1).contiguous()
    k_cols = g.reshape(1, 1, 1, window).expand(c, 1, 1, window).contiguous()

    def blur(x):
        return F.conv2d(F.conv2d(x, k_rows, groups=c), k_cols, groups=c).double()

    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a ** 2
    sbb = blur(b * b) - mu_b ** 2
    sab = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return s.flatten(1).mean(1)


def view_metrics(pred_views: torch.Tensor, gt_views: torch.Tensor) -> dict:
    """PSNR / SSIM averaged over views; inputs (K,3,H,W) or (K,H,W,3) uint8 (or float in [0,1])."""
    def prep(v):
        v = torch.as_tensor(v)
        if v.shape[-1] == 3 and v.shape[1] != 3:
            v = v.permute(0, 3, 1, 2)
        return v.double() / 255 if v.dtype == torch.uint8 else v.double()

    p, g = prep(pred_views), prep(gt_views)
    return {"psnr": float(psnr(p, g).mean()), "ssim": float(ssim(p, g).mean())}


# ---------------------------------------------------------------------------------------------
# the metric


def _mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


class Shape3DMetric(Metric):
    """Synthetic GT only: Chamfer-L2, F-score, latent error, PSNR/SSIM of canonical views."""

    KEYS = ("chamfer_l2", "fscore", "precision", "recall", "latent_error", "psnr", "ssim")

    def instance_from_artifact(self, art: dict, pred_views=None, gt_views=None, *, num_points=10000,
                               fscore_threshold=0.05) -> dict | None:
        """Metrics of one stored artifact (None without GT mesh)."""
        gt, mesh = art.get("gt"), art.get("mesh")
        if not gt or gt.get("vertices") is None or mesh is None:
            return None
        out = shape_metrics(mesh["vertices"], mesh["faces"], gt["vertices"], gt["faces"], num_points=num_points,
                            fscore_threshold=fscore_threshold)
        out["latent_error"] = latent_error(art.get("latent"), gt.get("latent"))
        if pred_views is not None and gt_views is not None:
            out.update(view_metrics(pred_views, gt_views))
        return out

    def corpus(self, ctx: EvalContext) -> dict:
        from bench.metrics.images import read_png
        from bench.metrics.views import FID12_ANGLES, REFERENCE, ViewRenderer, has_ground_truth

        opts = ctx.options
        views = ViewRenderer(ctx)
        methods = {}
        for method in ctx.methods:
            recs = ctx.ok_records(method)
            per, skipped = {}, 0
            have_gt = []
            for rec in recs:
                art = ctx.run.load_artifact(method, rec["instance"])
                if has_ground_truth(art) and art.get("mesh") is not None:
                    have_gt.append(rec["instance"])
            if have_gt:  # the FID_12 renders of the reconstructions and of the ground truth
                views.view_images(method)
                views.gt_view_images()
            tick = ctx.ticker(f"{method}: 3D metrics", len(recs))
            for rec in recs:
                inst = rec["instance"]
                if inst not in have_gt:
                    skipped += 1
                    tick()
                    continue
                art = ctx.run.load_artifact(method, inst)
                pv = torch.stack([read_png(p) for p in views.view_paths(method, inst)])
                gv = torch.stack([read_png(p) for p in views.view_paths(REFERENCE, inst)])
                per[inst] = self.instance_from_artifact(art, pv, gv, num_points=opts.num_points,
                                                        fscore_threshold=opts.fscore_threshold)
                tick()
            summary = {k: _mean([v.get(k) for v in per.values()]) for k in self.KEYS}
            methods[method] = {"n_instances": len(per), "n_without_gt": skipped,
                               "n_failed": len(ctx.failed_records(method)), **summary, "per_instance": per}
            if not per:
                methods[method]["note"] = "no ground truth in the artifacts (shape3d needs synthetic data)"
        protocol = {
            "frame": "shared canonical object frame (no rotation alignment)",
            "alignment": "each mesh centred at its area-weighted surface centroid and scaled to unit RMS surface radius",
            "num_points": opts.num_points,
            "chamfer": "mean_a min_b |a-b|^2 + mean_b min_a |a-b|^2 (normalised units)",
            "fscore_threshold": opts.fscore_threshold,
            "fscore_threshold_units": "fraction of the normalised GT bounding-box diagonal",
            "latent_error": "|z - z_gt| / sqrt(D)",
            "views": list(FID12_ANGLES),
            "view_size": opts.view_size,
            "psnr": f"per view in [0,1], mean over views, capped at {PSNR_CAP_DB:g} dB",
            "ssim": "Gaussian window 11, sigma 1.5, C1=0.01^2, C2=0.03^2, per channel, valid region",
        }
        return {"protocol": protocol, "methods": methods}
