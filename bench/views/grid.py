"""The qualitative grid of a run (``bench figure ablation RUN``; the supplement's Fig. 2): one row per
instance; columns the input, each method's input-view render, and each method's reconstruction from a
novel view, labelled with the method (or what its variant set) and the instance's IoU.

Input-view renders are the records' own renders (the artifact's ``image`` and ``mask``, on white); the
novel view renders the artifact's textured mesh with the canonical-view protocol of FID_10/12
(orientation 30°, scale 0.7, white background) at the chosen azimuth.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.errors import UserError


def column_label(spec: str) -> str:
    """``ours@texture_loss=l1`` -> ``texture_loss=l1``; a plain method keeps its name."""
    return spec.split("@", 1)[1] if "@" in spec else spec


def default_methods(run) -> list[str]:
    """The variants of the run's last sweep (in sweep order), else every method of the run."""
    manifest = run.read_manifest()
    sweeps = manifest.get("sweeps") or []
    if sweeps:
        return list(sweeps[-1]["variants"])
    return list(manifest.get("methods") or run.methods())


def common_instances(run, methods: list[str], count: int, ids: list[str] | None = None) -> list[str]:
    """``ids`` checked to be finished by every method, or the first ``count`` instances (by index) that
    every method finished."""
    ok = {m: {r["instance"]: r for r in run.records(m) if r["status"] == "ok"} for m in methods}
    if ids:
        for m in methods:
            missing = [i for i in ids if i not in ok[m]]
            if missing:
                raise UserError(f"--ids: {m} has no finished record of {', '.join(missing)}")
        return ids
    shared = set.intersection(*(set(v) for v in ok.values())) if ok else set()
    order = sorted(shared, key=lambda i: ok[methods[0]][i]["index"])
    if not order:
        raise UserError(f"no instance was finished by every one of {', '.join(methods)}; run them first")
    return order[:count]


def _on_white(image, mask) -> np.ndarray:
    """(3,H,W) image and (H,W) mask (torch) -> (H,W,3) float in [0,1] on white."""
    img = image.float().clamp(0, 1)
    m = mask.float()[None]
    return (img * m + (1 - m)).permute(1, 2, 0).numpy()


def ablation_figure(run, methods: list[str], instances: list[str], out: Path, azimuth: float = 90.0,
                    size: int = 128) -> list[Path]:
    """Draw the grid into ``out`` (``.png`` and ``.pdf`` beside it); returns the written paths."""
    import torch

    from bench.metrics.views import render_canonical_views
    from bench.reporting.figures import _pyplot, _save

    plt = _pyplot()
    cols = 1 + 2 * len(methods)
    fig, axes = plt.subplots(len(instances), cols, figsize=(1.6 * cols, 1.7 * len(instances) + 0.5), squeeze=False)
    for r, inst in enumerate(instances):
        records = {m: run.read_record(m, inst) for m in methods}
        arts = {m: run.load_artifact(m, inst) for m in methods}
        first = arts[methods[0]]
        axes[r][0].imshow(_on_white(first["input_image"], first["input_mask"]))
        axes[r][0].set_ylabel(inst, fontsize=7)
        for k, m in enumerate(methods):
            art = arts[m]
            axes[r][1 + k].imshow(_on_white(art["image"], art["mask"]))
            iou = (records[m].get("metrics") or {}).get("iou")
            if iou is not None:
                axes[r][1 + k].text(0.02, 0.02, f"IoU {iou:.3f}", transform=axes[r][1 + k].transAxes, fontsize=6,
                                    color="black", backgroundcolor=(1, 1, 1, 0.6))
            view = render_canonical_views(art["mesh"], [azimuth], size=size)[0]
            axes[r][1 + len(methods) + k].imshow(view.numpy() if torch.is_tensor(view) else view)
    titles = (["input (target mask)"] + [f"{column_label(m)}\ninput view" for m in methods]
              + [f"{column_label(m)}\nazimuth {azimuth:g}°" for m in methods])
    for c, title in enumerate(titles):
        axes[0][c].set_title(title, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{run.root.name}: {len(instances)} instances × {len(methods)} methods "
                 "(input | input-view renders | novel views)", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = _save(fig, out.parent, out.stem)
    plt.close(fig)
    return paths
