"""Sensitivity of 2D mask losses to small 3D shape changes (the MeshInversion supplement's Fig. 1).

For shape s (latent ``z_s ~ N(0, I)``, a class id, a camera) and jitter size η: a unit direction
``d ~ N(0, I)/|.|`` seeded per (shape, η), ``z' = z + η·d``, meshes ``O = G(z)``, ``O' = G(z')``,
both rendered at the same camera. Per (shape, η):

* ``chamfer_3d``: the 3D Chamfer-L2 of :func:`bench.metrics.shape3d.chamfer_fscore`
  (``mean_a min_b |a-b|² + mean_b min_a |a-b|²``) between the 482 mesh vertices of O and O' in the
  object frame (float64, mesh units²). Vertices rather than sampled surface points: deterministic,
  no sampling floor; no normalisation, since the camera is fixed and a scaled or shifted shape is a
  shape change the masks see.
* ``iou``: ``1 − IoU(M, M')`` (:func:`bench.metrics.iou.mask_iou`); ``l1``: ``mean |M − M'|`` over
  the pixels. M, M' are the hard silhouettes of :func:`bench.methods.meshinversion.render.render`
  binarised at 0.5 (as the synthetic dataset makes its target masks), so both are exact pixel counts.
* ``chamfer_mask``: the inverter's mask term ``L_CM`` — :func:`.losses.chamfer_mask_loss` of the
  projected vertex xy of O' against the target point set of M, built by the inverter's own
  :func:`.losses.prepare_targets` (``mask2proj`` positions of the pixels with M > 0.9).
* ``chamfer_mask_change``: ``|L_CM(O', M) − L_CM(O, M)|``, both from the same function. ``L_CM(O, M)``
  is not 0 (482 vertices cannot cover the pixel set), so ``chamfer_mask`` itself carries a constant
  floor; its change is what responds to the shape change. ``chamfer_mask_delta`` (signed) and
  ``chamfer_mask_base`` are in ``points.csv`` too.

The study folder (``bench sensitivity --out DIR``)::

    DIR/study.json            the settings; a rerun with other settings into DIR is refused
    DIR/etas/eta_NN.json      the per-shape rows of η number NN, written atomically once done
    DIR/points.csv            one row per (shape, η)
    DIR/sensitivity.csv       one row per (η, loss): mean 3D distance, mean loss and its spread
    DIR/slopes.csv            least-squares log-log slopes per loss, whole range and per half
    DIR/summary.json          definitions, settings, generator, slopes, zero counts, timings
    DIR/sensitivity.png/.pdf  the figure

Resume: a killed study keeps its finished η files; a rerun with the same settings skips them.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from bench.errors import UserError

__all__ = [
    "CAMERAS", "DEFAULT_ETAS", "DTYPES", "LOSSES", "Settings", "SensitivityStudy", "aggregate", "chamfer_3d",
    "check_folder", "direction_seed", "draw_shapes", "fit_loglog", "fit_slopes", "mask_losses", "mesh_maps",
    "parse_etas", "plot", "render_silhouettes", "shape_seed", "unit_directions", "validate",
]

STUDY_VERSION = 1
#: 10 ** linspace(-6, -1, 11)
DEFAULT_ETAS: tuple[float, ...] = tuple(float(x) for x in 10.0 ** np.linspace(-6, -1, 11))
CAMERAS = ("canonical", "random")
DTYPES = ("float64", "float32")
LOSSES = ("iou", "l1", "chamfer_mask", "chamfer_mask_change")
LOSS_LABELS = {
    "iou": "IoU loss 1 − IoU",
    "l1": "L1 mask loss",
    "chamfer_mask": "Chamfer mask loss L_CM",
    "chamfer_mask_change": "|ΔL_CM| = |L_CM(O′,M) − L_CM(O,M)|",
}
SHORT_LABELS = {"iou": "1 − IoU", "l1": "L1", "chamfer_mask": "L_CM", "chamfer_mask_change": "|ΔL_CM|"}
LOSS_UNITS = {"iou": "unitless", "l1": "unitless (fraction of pixels)", "chamfer_mask": "NDC units² (1 px = 2/R)",
              "chamfer_mask_change": "NDC units² (1 px = 2/R)"}
POINT_COLUMNS = ("shape", "class_id", "eta_index", "eta", "chamfer_3d", "iou", "l1", "chamfer_mask",
                 "chamfer_mask_change", "chamfer_mask_base", "chamfer_mask_delta", "pixels_changed", "mask_pixels")
SENSITIVITY_COLUMNS = ("eta_index", "eta", "loss", "n_shapes", "n_zero", "n_nonfinite", "mean_chamfer_3d",
                       "std_chamfer_3d", "mean", "std", "median", "q25", "q75")
SLOPE_COLUMNS = ("loss", "range", "eta_min", "eta_max", "n_points", "n_used", "n_zero_points", "slope",
                 "intercept", "r2", "stderr")
RANGES = ("all", "small", "large")
OUTPUTS = ("points.csv", "sensitivity.csv", "slopes.csv", "summary.json", "sensitivity.png", "sensitivity.pdf")

DEFINITIONS = {
    "perturbation": "z' = z + eta*d, z ~ N(0, I_64) per shape, d = n/|n| with n ~ N(0, I_64) seeded per (shape, eta)",
    "chamfer_3d": "bench.metrics.shape3d.chamfer_fscore(...)['chamfer_l2'] = mean_a min_b |a-b|^2 + mean_b min_a "
                  "|a-b|^2 between the 482 mesh vertices of O = G(z) and O' = G(z') in the object frame "
                  "(float64, mesh units^2; vertices, not sampled surface points: deterministic; no normalisation)",
    "masks": "M, M': hard silhouettes of bench.methods.meshinversion.render.render at the same camera, binarised "
             "at 0.5 (as the synthetic dataset makes its target masks)",
    "iou": "1 - bench.metrics.iou.mask_iou(M, M')",
    "l1": "mean over pixels of |M - M'| (= changed pixels / (R*R))",
    "chamfer_mask": "L_CM(O', M) = methods.meshinversion.losses.chamfer_mask_loss(projected vertex xy of O', target "
                    "points of M from losses.prepare_targets (mask2proj, pixels with M > 0.9)): mean_a min_t |a-t|^2 "
                    "+ mean_t min_a |a-t|^2, squared distances in float64, float32 result, NDC units^2",
    "chamfer_mask_change": "|L_CM(O', M) - L_CM(O, M)|, both from chamfer_mask_loss (float32 results: the change "
                           "resolves down to about one float32 ulp of L_CM); L_CM(O, M) > 0 because the vertices "
                           "cannot cover the pixel set, so chamfer_mask has a constant floor",
    "aggregate": "per (eta, loss): mean, std (ddof=1), median, q25, q75 over the shapes; zeros included",
    "fit": "scipy.stats.linregress of log10(mean loss) on log10(mean chamfer_3d) over the eta points whose means "
           "are > 0 (a mean of exactly 0 cannot be drawn on a log axis and is counted in n_zero_points); ranges: "
           "all, small (eta <= sqrt(eta_min*eta_max)), large (eta >= sqrt(eta_min*eta_max))",
}


# --------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class Settings:
    """What defines a study's numbers (stored in ``study.json``; a resume must match it).

    ``checkpoint``: ``"demo"`` or the sha256 of the generator file.
    """

    shapes: int
    etas: tuple[float, ...] = DEFAULT_ETAS
    camera: str = "canonical"
    resolution: int = 256
    seed: int = 0
    dtype: str = "float64"
    checkpoint: str = "demo"

    def to_json(self) -> dict:
        out = asdict(self)
        out["etas"] = [float(e) for e in self.etas]
        out["version"] = STUDY_VERSION
        return out


def parse_etas(text: str) -> tuple[float, ...]:
    """``"1e-6,1e-3"`` -> ``(1e-06, 0.001)``: finite, > 0, distinct, returned in increasing order."""
    expected = "comma-separated finite values > 0 (e.g. 1e-6,1e-4,1e-2)"
    try:
        etas = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--etas expects {expected}, got {text!r}") from None
    if not etas:
        raise UserError(f"--etas needs at least one value: {expected}, got {text!r}")
    bad = [e for e in etas if not (math.isfinite(e) and e > 0)]
    if bad:
        raise UserError(f"--etas values must be finite and > 0 (the jitter size), got {bad[0]!r} in {text!r}")
    if len(set(etas)) != len(etas):
        raise UserError(f"--etas holds a value twice: {text!r}")
    return tuple(sorted(etas))


def validate(settings: Settings) -> Settings:
    """``settings``, or a :class:`UserError` naming the first bad field (nothing is written before)."""
    s = settings
    if s.shapes < 1:
        raise UserError(f"--shapes must be >= 1, got {s.shapes}")
    if not s.etas or not all(math.isfinite(e) and e > 0 for e in s.etas):
        raise UserError(f"--etas values must be finite and > 0, got {list(s.etas)}")
    if s.camera not in CAMERAS:
        raise UserError(f"--camera must be one of {', '.join(CAMERAS)}, got {s.camera!r}")
    if s.resolution < 16 or s.resolution % 4:
        raise UserError(f"--resolution must be a multiple of 4 and >= 16 (as the inverter's render_size), "
                        f"got {s.resolution}")
    if not 0 <= s.seed < 2 ** 63:
        raise UserError(f"--seed must be an integer in [0, 2^63), got {s.seed}")
    if s.dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {s.dtype!r}")
    return s


# --------------------------------------------------------------------------------------------
# seeds and draws


def shape_seed(seed: int, shape: int) -> int:
    """Seed of shape ``shape``'s latent, class and camera (:func:`bench.seeds.instance_seed`)."""
    from bench.seeds import instance_seed

    return instance_seed(seed, shape)


def direction_seed(seed: int, shape: int, eta: float) -> int:
    """Seed of the jitter direction of (shape, η): a stable 63-bit hash of the three."""
    digest = hashlib.sha256(f"sensitivity-direction:{int(seed)}:{int(shape)}:{float(eta)!r}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _cub_like(camera: str, rng):
    """(7,) camera of one shape: ``canonical`` = the centre of the synthetic dataset's CUB-like pose
    distribution (canonical quaternion, mid scale, no translation); ``random`` = a draw from it
    (:meth:`bench.datasets.synthetic.SyntheticDataset.ground_truth_camera`)."""
    import torch

    from bench.datasets.synthetic import SyntheticConfig, SyntheticDataset
    from bench.render.camera import canonical_quaternion

    config = SyntheticConfig(n=1)
    if camera == "random":
        return SyntheticDataset(config).ground_truth_camera(rng)
    scale = torch.tensor([(config.scale_min + config.scale_max) / 2])
    return torch.cat([scale, torch.zeros(2), canonical_quaternion()]).float()


def draw_shapes(indices, seed: int, n_classes: int, latent_dim: int = 64, camera: str = "canonical"):
    """Latents, class ids and cameras of the shapes ``indices``, each from its own seed.

    Returns z (B, latent_dim) float32, class_ids (B,) int64 (uniform over ``n_classes``), cameras (B, 7)
    float32 ``[s, tx, ty, qw, qx, qy, qz]``. Shape s is the same whatever the number of shapes.
    """
    import torch

    zs, classes, cams = [], [], []
    for s in indices:
        rng = torch.Generator().manual_seed(shape_seed(seed, int(s)))
        zs.append(torch.randn(latent_dim, generator=rng))
        classes.append(int(torch.randint(0, n_classes, (), generator=rng)))
        cams.append(_cub_like(camera, rng))
    return torch.stack(zs), torch.tensor(classes, dtype=torch.long), torch.stack(cams)


def unit_directions(indices, seed: int, eta: float, latent_dim: int = 64):
    """(B, latent_dim) float64 unit directions, one per shape, seeded per (shape, η)."""
    import torch

    out = []
    for s in indices:
        rng = torch.Generator().manual_seed(direction_seed(seed, int(s), eta))
        d = torch.randn(latent_dim, generator=rng, dtype=torch.float64)
        out.append(d / d.norm())
    return torch.stack(out)


# --------------------------------------------------------------------------------------------
# geometry and masks


def mesh_maps(generator, z, class_ids):
    """The generator's mesh map (B,3,32,32): its texture-free :meth:`~bench.methods.meshinversion.generator.
    Generator.mesh_map` when it has one (the silhouettes do not depend on the texture), else its forward."""
    if hasattr(generator, "mesh_map"):
        return generator.mesh_map(z, class_ids)
    return generator(z, class_ids)[1]


def render_silhouettes(template, mesh_map, cameras, resolution: int):
    """Object-frame vertices (B,V,3), projected vertex xy (B,V,2) and binary masks (B,1,R,R).

    MeshInversion's own render path (:func:`bench.methods.meshinversion.render.render`, hard mask) in the
    mesh map's dtype, with a constant texture (the silhouette does not depend on it); masks are the
    hard mask > 0.5, as float32 {0, 1}.
    """
    import torch

    from bench.methods.meshinversion.render import render

    dtype = mesh_map.dtype
    cams = cameras.to(mesh_map.device, dtype)
    texture = mesh_map.new_zeros(mesh_map.shape[0], 3, 4, 4)
    out = render(template, texture, mesh_map, cams[:, :1], cams[:, 1:3], cams[:, 3:7], resolution)
    return out.vertices, out.vtx_xy, (out.mask > 0.5).to(torch.float32)


def chamfer_targets(mask):
    """The inverter's target point set of masks (B,1,R,R): :func:`.losses.prepare_targets` ->
    ``points`` (mask2proj positions of the pixels > ``mask_threshold``)."""
    import torch

    from bench.methods.meshinversion import losses

    config = losses.LossConfig(feat_loss=False)
    image = torch.zeros(mask.shape[0], 3, *mask.shape[-2:], dtype=torch.float32, device=mask.device)
    return losses.prepare_targets(image, mask, config).points


def chamfer_mask(vtx_xy, targets):
    """L_CM per row (B,) float32: :func:`.losses.chamfer_mask_loss` as the inverter calls it."""
    from bench.methods.meshinversion import losses

    return losses.chamfer_mask_loss(vtx_xy, targets.xy, targets.lengths, losses.LossConfig().chunk_size)


def chamfer_3d(vertices_a, vertices_b) -> list[float]:
    """Per row the 3D Chamfer-L2 of :func:`bench.metrics.shape3d.chamfer_fscore` between two vertex
    sets (B,V,3) (float64, on the CPU)."""
    from bench.metrics.shape3d import chamfer_fscore

    a = vertices_a.detach().double().cpu()
    b = vertices_b.detach().double().cpu()
    return [chamfer_fscore(a[i], b[i], 0.0)["chamfer_l2"] for i in range(a.shape[0])]


def mask_losses(mask, mask_p, vtx_xy_p, targets, base) -> dict[str, list]:
    """The 2D losses per row between M (``mask``, its ``targets`` and ``base`` = L_CM(O, M)) and the
    perturbed shape's mask ``mask_p`` and vertex xy ``vtx_xy_p``. Lists of B numbers per key."""
    from bench.metrics.iou import mask_iou

    lcm = chamfer_mask(vtx_xy_p, targets)
    delta = lcm.double() - base.double()
    return {
        "iou": (1 - mask_iou(mask, mask_p)).double().tolist(),
        "l1": (mask - mask_p).abs().flatten(1).mean(1).double().tolist(),
        "chamfer_mask": lcm.double().tolist(),
        "chamfer_mask_change": delta.abs().tolist(),
        "chamfer_mask_base": base.double().tolist(),
        "chamfer_mask_delta": delta.tolist(),
        "pixels_changed": (mask != mask_p).flatten(1).sum(1).tolist(),
        "mask_pixels": (mask > 0.5).flatten(1).sum(1).tolist(),
    }


# --------------------------------------------------------------------------------------------
# aggregation and fits


def _finite(values) -> np.ndarray:
    arr = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def _stats(values) -> dict:
    v = _finite(values)
    if v.size == 0:
        return {"mean": None, "std": None, "median": None, "q25": None, "q75": None}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None,
            "median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)), "q75": float(np.quantile(v, 0.75))}


def aggregate(rows_by_eta: dict[int, list[dict]], etas) -> list[dict]:
    """One row per (η, loss) (``SENSITIVITY_COLUMNS``) from the per-shape rows of every η."""
    out = []
    for j, eta in enumerate(etas):
        rows = rows_by_eta[j]
        d3 = _finite(r["chamfer_3d"] for r in rows)
        for loss in LOSSES:
            values = [r[loss] for r in rows]
            finite = _finite(values)
            stats = _stats(values)
            out.append({"eta_index": j, "eta": float(eta), "loss": loss, "n_shapes": int(finite.size),
                        "n_zero": int((finite == 0).sum()), "n_nonfinite": len(values) - int(finite.size),
                        "mean_chamfer_3d": float(d3.mean()) if d3.size else None,
                        "std_chamfer_3d": float(d3.std(ddof=1)) if d3.size > 1 else None, **stats})
    return out


def fit_loglog(x, y) -> dict:
    """Least-squares line of log10(y) on log10(x) over the points where both are finite and > 0.

    Returns {n_points, n_used, n_zero_points (y == 0), slope, intercept, r2, stderr}; the fit fields
    are None with fewer than 2 usable points or a constant x.
    """
    from scipy.stats import linregress

    x = np.array([np.nan if v is None else v for v in x], dtype=np.float64)
    y = np.array([np.nan if v is None else v for v in y], dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    out = {"n_points": int(x.size), "n_used": int(keep.sum()), "n_zero_points": int((y == 0).sum()),
           "slope": None, "intercept": None, "r2": None, "stderr": None}
    if keep.sum() < 2 or np.ptp(np.log10(x[keep])) == 0:
        return out
    fit = linregress(np.log10(x[keep]), np.log10(y[keep]))
    out.update(slope=float(fit.slope), intercept=float(fit.intercept), r2=float(fit.rvalue ** 2),
               stderr=float(fit.stderr) if keep.sum() > 2 else None)
    return out


def split_eta(etas) -> float:
    """The η that splits the range into its small and large halves: sqrt(η_min·η_max)."""
    return math.sqrt(min(etas) * max(etas))


def fit_slopes(sensitivity: list[dict], etas) -> dict[str, dict[str, dict]]:
    """{loss: {range: fit}} for the ranges ``all``, ``small`` (η <= the split) and ``large`` (η >= it)."""
    mid = split_eta(etas)
    out: dict[str, dict[str, dict]] = {}
    for loss in LOSSES:
        rows = sorted((r for r in sensitivity if r["loss"] == loss), key=lambda r: r["eta"])
        out[loss] = {}
        for name in RANGES:
            sel = [r for r in rows if name == "all" or (name == "small" and r["eta"] <= mid * (1 + 1e-12))
                   or (name == "large" and r["eta"] >= mid * (1 - 1e-12))]
            fit = fit_loglog([r["mean_chamfer_3d"] for r in sel], [r["mean"] for r in sel])
            fit["eta_min"] = min((r["eta"] for r in sel), default=None)
            fit["eta_max"] = max((r["eta"] for r in sel), default=None)
            out[loss][name] = fit
    return out


# --------------------------------------------------------------------------------------------
# outputs


def _csv_bytes(columns, rows) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else (repr(row[k]) if isinstance(row[k], float) else row[k]))
                         for k in columns})
    return buf.getvalue().encode()


def _fmt(value, spec: str = ".2f") -> str:
    if value is None:
        return "n/a"
    text = format(value, spec)
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def plot(sensitivity: list[dict], slopes: dict, title: str, png: Path, pdf: Path | None = None,
         ulp: float | None = None) -> None:
    """Log-log plot of each loss's mean (IQR band) against the mean 3D distance; atomic PNG (+ PDF).

    ``ulp``: one float32 ulp of L_CM, drawn as a dotted line (the resolution of |ΔL_CM|).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.store import atomic_write_bytes

    from matplotlib.transforms import blended_transform_factory

    fig, ax = plt.subplots(figsize=(8.5, 7.6))
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.29)
    at_bottom = blended_transform_factory(ax.transData, ax.transAxes)  # x in data, y in axes units
    markers = {"iou": "o", "l1": "s", "chamfer_mask": "^", "chamfer_mask_change": "D"}
    notes = []
    for k, loss in enumerate(LOSSES):
        rows = sorted((r for r in sensitivity if r["loss"] == loss), key=lambda r: r["eta"])
        x = np.array([np.nan if r["mean_chamfer_3d"] is None else r["mean_chamfer_3d"] for r in rows], float)
        y = np.array([np.nan if r["mean"] is None else r["mean"] for r in rows], float)
        lo = np.array([np.nan if r["q25"] is None else r["q25"] for r in rows], float)
        hi = np.array([np.nan if r["q75"] is None else r["q75"] for r in rows], float)
        valid_x = np.isfinite(x) & (x > 0)
        shown = valid_x & np.isfinite(y) & (y > 0)
        fits = slopes[loss]
        zero_points = fits["all"]["n_zero_points"]
        label = (f"{LOSS_LABELS[loss]}: slope {_fmt(fits['all']['slope'])}, R² {_fmt(fits['all']['r2'], '.3f')}"
                 f"\n    small η {_fmt(fits['small']['slope'])}, large η {_fmt(fits['large']['slope'])}")
        if zero_points:
            label += f"; {zero_points}/{len(rows)} points mean 0 (▽ at the bottom)"
        zeros = sum(r["n_zero"] for r in rows)
        if zeros:
            notes.append(f"{SHORT_LABELS[loss]} {zeros}/{sum(r['n_shapes'] for r in rows)}")
        # NaN breaks the line: a point whose mean is 0 is a gap, not joined across
        line, = ax.plot(x[valid_x], np.where(shown, y, np.nan)[valid_x], marker=markers[loss], label=label)
        zero = valid_x & (y == 0)
        if zero.any():
            ax.plot(x[zero], np.full(int(zero.sum()), 0.015 + 0.02 * k), linestyle="none", marker="v",
                    markerfacecolor="none", color=line.get_color(), transform=at_bottom, clip_on=False)
        band = shown & np.isfinite(lo) & np.isfinite(hi) & (lo > 0)
        if band.any():
            ax.fill_between(x[band], lo[band], hi[band], color=line.get_color(), alpha=0.15, linewidth=0)
    if ulp:
        ax.axhline(ulp, color="0.4", linestyle=":", linewidth=1,
                   label=f"1 float32 ulp of L_CM ({ulp:.1e}): the resolution of |ΔL_CM|")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("3D Chamfer distance between O = G(z) and O′ = G(z + η·d), mean over shapes (mesh units²)")
    ax.set_ylabel("2D mask loss between M and M′, mean over shapes\n(1 − IoU, L1: unitless; L_CM: NDC units²)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, frameon=False)
    note = ("band: interquartile range over the shapes; slopes: least squares of log10(mean loss) on "
            "log10(mean 3D distance);\nsmall / large η: the halves of the η range (split at sqrt(η_min·η_max))")
    if notes:
        note += ("\nvalues exactly 0 (identical masks; for |ΔL_CM|: equal float32 L_CM): " + ", ".join(notes)
                 + "; a mean of 0 is not drawn and not fitted")
    fig.text(0.01, 0.008, note, fontsize=6.5, va="bottom", ha="left")
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        if path is None:
            continue
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150)
        atomic_write_bytes(path, buf.getvalue())
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# the study folder


def _read(path: Path):
    from bench.store import read_json

    return read_json(path)


def check_folder(out: Path, settings: Settings) -> None:
    """Refuse (``UserError``, nothing written) a folder that holds another study or other files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    study = out / "study.json"
    if study.is_file():
        try:
            old = _read(study)
        except (OSError, ValueError) as err:
            raise UserError(f"{study} is damaged ({err}); remove it (or the folder) or choose another --out") from None
        new = settings.to_json()
        if old != new:
            changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)] \
                if isinstance(old, dict) else ["all"]
            raise UserError(f"{out} holds a sensitivity study with other settings ({', '.join(changed)} differ); "
                            "rerun with the same settings to resume, or choose another --out")
    elif out.is_dir() and any(p.name != ".lock" for p in out.iterdir()):
        raise UserError(f"--out {out} is not empty and holds no sensitivity study (study.json); "
                        "choose a new or empty folder")


@dataclass
class _Base:
    """The unperturbed shapes of one batch."""

    indices: list[int]
    z: Any  # (B, L) study dtype
    class_ids: Any  # (B,)
    cameras: Any  # (B, 7)
    vertices: Any  # (B, V, 3)
    mask: Any  # (B, 1, R, R) bool
    base: Any  # (B,) float32 L_CM(O, M)


class SensitivityStudy:
    """The resumable driver of one study folder.

    Args:
        settings: :class:`Settings` (validated).
        generator: the MeshInversion generator (:func:`~bench.methods.meshinversion.generator.load_generator`).
        out: the study folder.
        device: torch device; batch_size: shapes per generator/render batch.
        generator_info: what ``summary.json`` says about the generator (label, path, sha256).
        progress: a ``bench.progress.progress_bar`` object (or None).
        log: a function printing one line (or None).
    """

    def __init__(self, settings: Settings, generator, out: Path, *, device="cpu", batch_size: int = 25,
                 generator_info: Optional[dict] = None, progress=None, log: Optional[Callable[[str], None]] = None):
        import torch

        from bench.render.uvsphere import uvsphere_template

        self.settings = validate(settings)
        self.dtype = getattr(torch, settings.dtype)
        self.device = torch.device(device)
        self.generator = copy.deepcopy(generator).to(self.device, self.dtype)  # the caller's stays float32
        self.template = uvsphere_template(self.device)
        self.out = Path(out)
        self.batch_size = max(1, int(batch_size))
        self.generator_info = generator_info or {"label": getattr(generator, "label", None),
                                                 "sha256": getattr(generator, "sha256", None)}
        self.progress = progress
        self.log = log or (lambda _line: None)
        self._base: Optional[list[_Base]] = None
        self.base_seconds: Optional[float] = None

    # ------------------------------------------------------------------ files
    def eta_path(self, j: int) -> Path:
        return self.out / "etas" / f"eta_{j:02d}.json"

    def load_eta(self, j: int) -> Optional[dict]:
        """The finished file of η number j, or None when it is missing, damaged or of other settings."""
        path = self.eta_path(j)
        if not path.is_file():
            return None
        try:
            doc = _read(path)
        except (OSError, ValueError):
            return None
        ok = (isinstance(doc, dict) and doc.get("settings") == self.settings.to_json() and doc.get("eta_index") == j
              and isinstance(doc.get("rows"), list)
              and [r.get("shape") for r in doc["rows"]] == list(range(self.settings.shapes)))
        return doc if ok else None

    def pending(self) -> list[int]:
        return [j for j in range(len(self.settings.etas)) if self.load_eta(j) is None]

    # ------------------------------------------------------------------ compute
    def _batches(self):
        n = self.settings.shapes
        return [list(range(i, min(i + self.batch_size, n))) for i in range(0, n, self.batch_size)]

    def _shapes(self, z, class_ids, cameras):
        import torch

        with torch.no_grad():
            mesh = mesh_maps(self.generator, z, class_ids)
            return render_silhouettes(self.template, mesh, cameras, self.settings.resolution)

    def base(self) -> list[_Base]:
        """The unperturbed shapes O of every batch (computed once per process)."""
        import torch

        if self._base is not None:
            return self._base
        s = self.settings
        task = self.progress.add_task("shapes O", total=s.shapes) if self.progress else None
        start = time.perf_counter()
        out = []
        n_classes = int(getattr(self.generator, "n_classes", 200))
        latent_dim = int(getattr(self.generator, "latent_dim", 64))
        for idx in self._batches():
            z, c, cams = draw_shapes(idx, s.seed, n_classes, latent_dim, s.camera)
            z, c, cams = z.to(self.device, self.dtype), c.to(self.device), cams.to(self.device)
            vertices, vtx_xy, mask = self._shapes(z, c, cams)
            with torch.no_grad():
                base = chamfer_mask(vtx_xy, chamfer_targets(mask))
            out.append(_Base(idx, z, c, cams, vertices, mask > 0.5, base))
            if task is not None:
                self.progress.advance(task, len(idx))
        self.base_seconds = time.perf_counter() - start
        self._base = out
        return out

    def compute_point(self, eta: float) -> list[dict]:
        """The per-shape rows (``POINT_COLUMNS``) of one η, with every loss."""
        import torch

        rows = []
        task = self.progress.add_task(f"η = {eta:.3g}", total=self.settings.shapes) if self.progress else None
        for b in self.base():
            d = unit_directions(b.indices, self.settings.seed, eta, b.z.shape[1]).to(self.device, self.dtype)
            vertices, vtx_xy, mask_p = self._shapes(b.z + eta * d, b.class_ids, b.cameras)
            mask = b.mask.to(torch.float32)
            with torch.no_grad():
                losses = mask_losses(mask, mask_p, vtx_xy, chamfer_targets(mask), b.base)
            d3 = chamfer_3d(b.vertices, vertices)
            for k, s in enumerate(b.indices):
                row = {"shape": s, "class_id": int(b.class_ids[k]), "eta": float(eta), "chamfer_3d": d3[k]}
                row.update({key: values[k] for key, values in losses.items()})
                rows.append(row)
            if task is not None:
                self.progress.advance(task, len(b.indices))
        return rows

    # ------------------------------------------------------------------ driver
    def run(self) -> dict:
        """Compute what is missing, then write every output; returns the summary."""
        from bench.locks import RunLock
        from bench.store import atomic_write_json

        check_folder(self.out, self.settings)
        self.out.mkdir(parents=True, exist_ok=True)
        with RunLock(self.out):
            check_folder(self.out, self.settings)  # another process may have started it meanwhile
            if not (self.out / "study.json").is_file():
                atomic_write_json(self.out / "study.json", self.settings.to_json())
            todo = self.pending()
            if len(todo) < len(self.settings.etas):
                self.log(f"resuming: {len(self.settings.etas) - len(todo)} of {len(self.settings.etas)} η "
                         "points already done")
            for j in todo:
                eta = self.settings.etas[j]
                self.base()
                start = time.perf_counter()
                rows = self.compute_point(eta)
                seconds = time.perf_counter() - start
                atomic_write_json(self.eta_path(j), {
                    "settings": self.settings.to_json(), "eta_index": j, "eta": float(eta), "seconds": seconds,
                    "base_seconds": self.base_seconds, "device": str(self.device), "batch_size": self.batch_size,
                    "rows": [{**r, "eta_index": j} for r in rows]}, sort_keys=False)
                self.log(f"η {j + 1}/{len(self.settings.etas)} = {eta:.3g}: {seconds:.1f} s")
            return self.write_outputs()

    def write_outputs(self) -> dict:
        from bench.store import atomic_write_bytes, atomic_write_json

        s = self.settings
        docs = {j: self.load_eta(j) for j in range(len(s.etas))}
        missing = [j for j, doc in docs.items() if doc is None]
        if missing:
            raise UserError(f"{self.out}: η points {missing} are not finished; rerun the same command")
        rows_by_eta = {j: doc["rows"] for j, doc in docs.items()}
        points = [r for j in range(len(s.etas)) for r in rows_by_eta[j]]
        sensitivity = aggregate(rows_by_eta, s.etas)
        slopes = fit_slopes(sensitivity, s.etas)
        atomic_write_bytes(self.out / "points.csv", _csv_bytes(POINT_COLUMNS, points))
        atomic_write_bytes(self.out / "sensitivity.csv", _csv_bytes(SENSITIVITY_COLUMNS, sensitivity))
        slope_rows = [{"loss": loss, "range": name, **fit} for loss in LOSSES for name, fit in slopes[loss].items()]
        atomic_write_bytes(self.out / "slopes.csv", _csv_bytes(SLOPE_COLUMNS, slope_rows))
        seconds = [docs[j]["seconds"] for j in range(len(s.etas))]
        base_l = [r["chamfer_mask_base"] for r in rows_by_eta[0]]
        label = self.generator_info.get("label") or "generator"
        summary = {
            "study": "mask-loss sensitivity (MeshInversion supplement Fig. 1)",
            "settings": s.to_json(),
            "generator": {**self.generator_info, "checkpoint": s.checkpoint,
                          "n_classes": int(getattr(self.generator, "n_classes", 0)) or None,
                          "class_ids": "uniform over the generator's classes, seeded per shape"},
            "camera": {"canonical": "canonical quaternion (FID pose, 30 deg), scale 0.65 (centre of the synthetic "
                                    "dataset's CUB-like range), no translation, same for every shape",
                       "random": "per shape, a CUB-like pose of the synthetic dataset (uniform azimuth, elevation "
                                 "N(0, 10 deg), scale U(0.55, 0.75), translation N(0, 0.03)); O and O' share it"
                       }[s.camera],
            "definitions": DEFINITIONS,
            "units": {"chamfer_3d": "mesh units^2", **LOSS_UNITS},
            "split_eta": split_eta(s.etas),
            "slopes": slopes,
            "zeros": {loss: {"values": sum(r["n_zero"] for r in sensitivity if r["loss"] == loss),
                             "points_with_mean_0": slopes[loss]["all"]["n_zero_points"]} for loss in LOSSES},
            "chamfer_mask_base": _stats(base_l),
            "chamfer_mask_float32_ulp": float(np.spacing(np.float32(statistics.fmean(base_l))))
            if base_l and all(v is not None for v in base_l) else None,
            "timing": {"seconds_per_point": seconds, "mean_seconds_per_point": statistics.fmean(seconds),
                       "shapes_per_point": s.shapes, "device": docs[0].get("device"),
                       "batch_size": docs[0].get("batch_size"),
                       "note": "seconds of one eta point: perturbed shapes, render, losses, 3D distance "
                               "(the unperturbed shapes are computed once per process)"},
            "files": list(OUTPUTS),
        }
        atomic_write_json(self.out / "summary.json", summary, sort_keys=False)
        title = (f"Mask-loss sensitivity to 3D shape change under latent jitter\n{label}, {s.camera} camera, "
                 f"{s.resolution} px, {s.dtype}; n = {s.shapes} shapes per point")
        plot(sensitivity, slopes, title, self.out / "sensitivity.png", self.out / "sensitivity.pdf",
             ulp=summary["chamfer_mask_float32_ulp"])
        return summary
