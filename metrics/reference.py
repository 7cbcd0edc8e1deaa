"""Reference ("real") statistics for FID_10 / FID_12.

Two sources (``--fid-reference``):

* an ``.npz`` file:
  - ConvMesh's ``precomputed_fid_299x299_testval.npz`` (keys ``stats_m`` (D,), ``stats_s`` (D,D)
    holding only the **lower triangle** of the covariance in float32, ``num_images``,
    ``resolution``): the covariance is rebuilt as ``stats_s + triu(stats_s.T, 1)``, as
    MeshInversion's ``run_evaluation.py`` does (loading it naively gives a wrong FID). Those
    statistics were computed with torchvision's Inception, so they are only valid with
    ``--fid-extractor torchvision-inception``.
  - a pytorch-fid style file with ``mu`` and ``sigma`` (full covariance), for any extractor.
* ``dataset``: statistics computed from the run's own images and cached in the run directory
  (``RUN/fid/_reference/...``): for synthetic data the ground-truth meshes' canonical renders
  (the same views, background and quantisation as the reconstructions: a natural reference);
  for real data the input crops multiplied by their mask on a grey (0.5) background, as ConvMesh
  built its test-val statistics.

Statistics are dicts ``{"mu": (D,) float64, "sigma": (D,D) float64}`` (torch-fidelity's form).
:class:`ReferenceSource` is the choice made for one run (resolved once, statistics computed once
per view set); the reference images come from :mod:`bench.metrics.views`, their features from
:mod:`bench.metrics.features`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import UserError

#: ConvMesh's file name; MeshInversion hard-codes ``./datasets/cub/cache/<this>``.
CONVMESH_REFERENCE = "precomputed_fid_299x299_testval.npz"


def convmesh_covariance(stats_s: np.ndarray) -> np.ndarray:
    """Full symmetric covariance from ConvMesh's triangle storage: ``s + triu(s.T, 1)`` (float64).

    Args:
        stats_s: (D,D) array whose lower triangle (diagonal included) holds the covariance.
    """
    s = np.asarray(stats_s, dtype=np.float64)
    return s + np.triu(s.T, 1)


def statistics_from_features(features) -> dict:
    """torch-fidelity's ``fid_features_to_statistics`` (mean, unbiased ``np.cov``), as float64.

    Args:
        features: (N,D) tensor or array, N >= 2.
    """
    import torch
    from torch_fidelity.metric_fid import fid_features_to_statistics

    feats = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    if feats.dim() != 2 or feats.shape[0] < 2:
        raise ValueError(f"FID statistics need (N,D) features with N >= 2, got {tuple(feats.shape)}")
    stats = fid_features_to_statistics(feats.detach().cpu().float())
    return as_float64(stats)


def as_float64(stats: dict) -> dict:
    """``{"mu", "sigma"}`` cast to float64 (torch-fidelity's FID asserts equal dtypes)."""
    return {"mu": np.asarray(stats["mu"], dtype=np.float64), "sigma": np.asarray(stats["sigma"], dtype=np.float64)}


def load_reference_npz(path: str | os.PathLike, looked_in: str | None = None) -> dict:
    """Reference statistics from an ``.npz`` file (ConvMesh triangle format or ``mu``/``sigma``).

    Returns:
        ``{"mu", "sigma", "format": "convmesh-tril" | "mu-sigma", "num_images", "path"}``.
    Raises:
        UserError: the file is missing (message says where it was looked for) or unreadable.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        where = f" ({looked_in})" if looked_in else ""
        raise UserError(f"FID reference statistics file {path} not found{where}; pass --fid-reference NPZ "
                        "or --fid-reference dataset")
    try:
        data = np.load(path, allow_pickle=False)
        keys = set(data.files)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
        raise UserError(f"cannot read FID reference statistics {path}: {err}") from None
    if {"stats_m", "stats_s"} <= keys:
        mu, sigma, fmt = data["stats_m"], convmesh_covariance(data["stats_s"]), "convmesh-tril"
    elif {"mu", "sigma"} <= keys:
        mu, sigma, fmt = data["mu"], data["sigma"], "mu-sigma"
    else:
        raise UserError(f"{path} holds neither ConvMesh statistics (stats_m, stats_s) nor mu/sigma "
                        f"(keys: {', '.join(sorted(keys))})")
    mu = np.asarray(mu, dtype=np.float64).reshape(-1)
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.shape != (mu.size, mu.size):
        raise UserError(f"{path}: covariance shape {sigma.shape} does not match mean shape {mu.shape}")
    num = int(data["num_images"]) if "num_images" in keys else None
    return {"mu": mu, "sigma": sigma, "format": fmt, "num_images": num, "path": str(path.resolve())}


def _dataset_root(manifest: dict) -> str | None:
    """The dataset's data root as recorded in the manifest (several spellings accepted)."""
    ds = manifest.get("dataset")
    candidates = []
    if isinstance(ds, dict):
        candidates += [ds.get(k) for k in ("root", "data_dir", "data_root", "path")]
        cfg = ds.get("config")
        if isinstance(cfg, dict):
            candidates += [cfg.get(k) for k in ("root", "data_dir", "data_root", "path")]
    candidates += [manifest.get(k) for k in ("data_dir", "data_root")]
    return next((str(c) for c in candidates if c), None)


def dataset_name(manifest: dict) -> str | None:
    ds = manifest.get("dataset")
    if isinstance(ds, dict):
        return ds.get("name") or ds.get("dataset")
    return ds if isinstance(ds, str) else None


def default_reference_path(manifest: dict) -> tuple[Path, str]:
    """Where ConvMesh's statistics are looked for: ``<dataset root>/cache/<CONVMESH_REFERENCE>``
    (MeshInversion's hard-coded ``./datasets/cub/cache/...`` when the manifest has no root).

    Returns:
        (path, human-readable description of where it was looked for).
    """
    root = _dataset_root(manifest)
    if root:
        return Path(root) / "cache" / CONVMESH_REFERENCE, "looked for in <dataset root>/cache/"
    return Path("datasets/cub/cache") / CONVMESH_REFERENCE, "looked for at the official ./datasets/cub/cache/"


def resolve_reference(option: str | None, manifest: dict, extractor: str) -> tuple[str, Path | None, str]:
    """Resolve ``--fid-reference``.

    ``None``/``"auto"``: ``dataset`` for synthetic runs and for the standard extractor; ConvMesh's
    file under the dataset root for ``torchvision-inception`` on real data.

    Returns:
        (kind ``"npz"`` | ``"dataset"``, npz path or None, where-it-was-looked-for text).
    """
    name = dataset_name(manifest)
    if option in (None, "", "auto"):
        if name == "synthetic" or extractor != "torchvision-inception":
            return "dataset", None, ""
        path, where = default_reference_path(manifest)
        return "npz", path, where
    if option == "dataset":
        return "dataset", None, ""
    return "npz", Path(option).expanduser(), "given by --fid-reference"


# ---------------------------------------------------------------------------------------------
# the reference of one run


@dataclass(frozen=True)
class Reference:
    """The FID_10/12 reference for one view set.

    Attributes:
        statistics: ``{"mu", "sigma"}`` (None: fewer than 2 reference images).
        features: (N,D) features for KID (None for an ``.npz``: statistics only).
        description: protocol fields (``reference``, ``reference_images`` | ``reference_path``, ...).
        note: why there is no statistics, if so.
    """

    statistics: dict | None
    features: Any
    description: dict
    note: str | None = None


class ReferenceSource:
    """The reference ``--fid-reference`` chose for a run: an ``.npz`` file, or the run's own images
    (ground-truth views on synthetic data, masked input crops on real data).

    Args:
        ctx: the `EvalContext`; views: its `ViewRenderer`; features: its `FeatureCache`.
    """

    def __init__(self, ctx, views, features):
        self.ctx, self.views, self.features = ctx, views, features
        self.manifest = ctx.run.read_manifest()
        self.kind, self.path, self.where = resolve_reference(ctx.options.fid_reference, self.manifest,
                                                             ctx.options.fid_extractor)
        self._npz: dict | None = None
        self._by_angles: dict[tuple, Reference] = {}

    def check(self) -> None:
        """Fail early (before any rendering) when an ``.npz`` reference is missing or mismatched."""
        if self.kind == "npz":
            self.npz()

    def npz(self) -> dict:
        if self._npz is None:
            ref = load_reference_npz(self.path, self.where)
            if ref["format"] == "convmesh-tril" and self.ctx.options.fid_extractor != "torchvision-inception":
                raise UserError(f"{self.path} holds ConvMesh statistics, computed with torchvision's Inception; use "
                                "--fid-extractor torchvision-inception with it, or --fid-reference dataset")
            self._npz = ref
        return self._npz

    def synthetic(self) -> bool:
        """Whether the run has ground-truth meshes (then the dataset reference = their views)."""
        from bench.metrics.views import has_ground_truth

        if dataset_name(self.manifest) == "synthetic":
            return True
        run = self.ctx.run
        for method in run.methods():
            for rec in self.ctx.ok_records(method)[:1]:
                return has_ground_truth(run.load_artifact(method, rec["instance"]))
        return False

    def for_views(self, angles) -> Reference:
        """The reference of the canonical views at ``angles`` (computed once per angle set)."""
        angles = tuple(angles)
        if angles not in self._by_angles:
            self._by_angles[angles] = self._compute(angles)
        return self._by_angles[angles]

    def describe(self, angles) -> dict:
        """Protocol fields of the reference (recorded with FID_10/12)."""
        return {"reference": "npz" if self.kind == "npz" else "dataset",
                "reference_path": str(self.path) if self.path else None, **self.for_views(angles).description}

    def _compute(self, angles: tuple) -> Reference:
        if self.kind == "npz":
            ref = self.npz()
            desc = {"reference": "npz", "reference_path": ref["path"], "reference_format": ref["format"],
                    "reference_num_images": ref["num_images"]}
            return Reference({"mu": ref["mu"], "sigma": ref["sigma"]}, None, desc)
        if self.synthetic():
            images = self.views.gt_view_images(angles)
            desc = {"reference": "dataset", "reference_images": "ground-truth meshes' canonical views "
                    "(same views, renderer, background and quantisation as the reconstructions)"}
        else:
            images = self.views.dataset_reference_images()
            desc = {"reference": "dataset", "reference_images": "input crops x mask on grey 0.5 background "
                    "(ConvMesh test-val recipe), one per instance of the run"}
        desc["reference_num_images"] = len(images)
        if len(images) < 2:
            return Reference(None, None, desc, note="fewer than 2 reference images")
        feats = self.features.features(images)
        return Reference(statistics_from_features(feats), feats, desc)
