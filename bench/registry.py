"""Lazy registry of methods, datasets and metrics.

Built-ins are ``"module:attr"`` strings with a one-line summary, so listing them imports nothing
heavy (no torch). Third-party packages add entries through the entry-point groups
``meshbench.methods``, ``meshbench.datasets`` and ``meshbench.metrics`` (value ``"module:attr"``;
the summary is the object's ``summary`` attribute, read only when loaded).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points

from bench.errors import UserError, did_you_mean

KINDS = ("methods", "datasets", "metrics")


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:attr"
    summary: str
    source: str = "built-in"

    def load(self):
        module, _, attr = self.target.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


BUILTIN: dict[str, dict[str, tuple[str, str]]] = {
    "methods": {
        "ours": ("bench.methods.meshinversion.method:MeshInversionMethod",
                 "MeshInversion: GAN inversion of the ConvMesh generator (Chamfer losses, 4-stage Adam)"),
        "cmr": ("bench.methods.cmr.method:CMRMethod", "CMR feed-forward prediction (one encoder pass)"),
        "cmr-tto": ("bench.methods.cmr.method:CMRTTOMethod",
                    "CMR + test-time optimisation of latent and camera (mask MSE + perceptual)"),
        "umr": ("bench.methods.umr.method:UMRMethod", "UMR feed-forward prediction (one encoder pass)"),
        "umr-tto": ("bench.methods.umr.method:UMRTTOMethod",
                    "UMR + test-time optimisation of latent and camera (soft IoU + perceptual)"),
    },
    "datasets": {
        "synthetic": ("bench.datasets.synthetic:SyntheticDataset",
                      "built-in offline dataset rendered from the active generator (default)"),
        "cub": ("bench.datasets.cub:CUBDataset", "CUB-200-2011 birds in the CMR/MeshInversion layout"),
        "p3d": ("bench.datasets.p3d:P3DDataset", "PASCAL3D+ cars in the CMR p3d layout"),
    },
    "metrics": {
        "iou": ("bench.metrics.iou:IoUMetric", "mask IoU, official formula, against the sample's mask"),
        "latency": ("bench.metrics.latency:LatencyMetric", "per-instance wall and optimisation time"),
        "fid1": ("bench.metrics.fid:FID1Metric", "FID of masked input vs input-view render (black bg)"),
        "fid10": ("bench.metrics.fid:FID10Metric", "FID of 10 canonical views (white bg) vs reference stats"),
        "fid12": ("bench.metrics.fid:FID12Metric", "FID of 12 canonical views (white bg) vs reference stats"),
        "kid": ("bench.metrics.fid:KIDMetric", "KID next to each FID"),
        "shape3d": ("bench.metrics.shape3d:Shape3DMetric",
                    "synthetic GT only: Chamfer-L2, F-score, latent error, PSNR/SSIM of canonical views"),
    },
}


def entries(kind: str) -> dict[str, Entry]:
    """All entries of ``kind`` (built-ins, then entry points; an entry point may not shadow a built-in)."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}")
    out = {name: Entry(name, target, summary) for name, (target, summary) in BUILTIN[kind].items()}
    for ep in entry_points(group=f"meshbench.{kind}"):
        if ep.name not in out:
            out[ep.name] = Entry(ep.name, ep.value, "", source=ep.dist.name if ep.dist else "plugin")
    return out


def get(kind: str, name: str) -> Entry:
    """The entry ``name`` of ``kind``; a `UserError` with suggestions when it does not exist."""
    table = entries(kind)
    if name not in table:
        singular = kind[:-1]
        raise UserError(f"unknown {singular} {name!r}{did_you_mean(name, table)}")
    return table[name]


def load(kind: str, name: str):
    """Import and return the class registered as ``name``."""
    return get(kind, name).load()
