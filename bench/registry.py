"""The one table of everything the CLI names: methods, datasets, metrics, with their metadata.

Each built-in is one :class:`Entry` below: name, one-line summary, the ``"module:attr"`` class path
(imported only when used, so ``bench --help`` and ``bench ls`` import no torch) and, for metrics,
the level (``instance``: computed in ``bench run`` per reconstruction; ``corpus``: computed by
``bench eval`` over the run) and the report columns it produces, each with its direction. The
runner, ``bench eval``, ``bench report``, ``bench ls``, ``bench data check`` and the manifest read
this table; none keeps a list of its own.

Third-party packages add entries through the entry-point groups ``meshbench.methods``,
``meshbench.datasets`` and ``meshbench.metrics`` (value ``"module:attr"``). Their metadata are the
class attributes of the same names (``summary``, ``level``, ``columns``, ``synthetic_only``), read
when the entry is first asked for them. An entry point may not shadow a built-in.

Adding a built-in method = its package under ``methods/`` plus one line in ``BUILTIN`` below.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from bench.errors import UserError, did_you_mean

KINDS = ("methods", "datasets", "metrics")


@dataclass(frozen=True)
class Column:
    """One report column a metric produces.

    Attributes:
        key: key in the metric's per-method values (``RUN/metrics/<name>.json`` -> ``methods`` ->
            method); dotted for nested values (``total.median``).
        name: column name in ``bench report`` tables.
        higher_is_better: direction (None: neither, e.g. a count or throughput context).
        unit: unit of the value for table headers and plot axes ("" for a pure number).
    """

    key: str
    name: str
    higher_is_better: bool | None = None
    unit: str = ""

    def read(self, values: dict) -> Any:
        """The value of this column in one method's values (None when absent)."""
        node: Any = values
        for part in self.key.split("."):
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return node


@dataclass(frozen=True)
class Entry:
    """A registered method, dataset or metric.

    Attributes:
        kind: ``methods`` | ``datasets`` | ``metrics``.
        name: what the CLI calls it.
        target: ``"module:attr"`` of the class.
        summary: one line for ``bench ls`` and the docs.
        level: metrics only: ``instance`` (per record, in ``bench run``) or ``corpus`` (``bench eval``).
        columns: metrics only: the report columns it produces.
        synthetic_only: metrics only: needs ground truth (skipped by default on real data).
        source: ``built-in`` or the distribution that registered it.
    """

    kind: str
    name: str
    target: str
    summary: str = ""
    level: str = "corpus"
    columns: tuple[Column, ...] = ()
    synthetic_only: bool = False
    source: str = "built-in"

    def load(self):
        """Import and return the registered class."""
        module, _, attr = self.target.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as err:
            raise UserError(f"{self.kind[:-1]} {self.name!r} ({self.source}) cannot be loaded from "
                            f"{self.target}: {err}") from None
        return obj

    @property
    def instance_level(self) -> bool:
        return self.level == "instance"


def _metric(name, target, summary, level="corpus", columns=(), synthetic_only=False) -> Entry:
    return Entry("metrics", name, target, summary, level, tuple(Column(*c) for c in columns), synthetic_only)


LOWER, HIGHER = False, True

BUILTIN: dict[str, tuple[Entry, ...]] = {
    "methods": (
        Entry("methods", "ours", "bench.methods.meshinversion.method:MeshInversionMethod",
              "MeshInversion: GAN inversion of the ConvMesh generator (Chamfer losses, 4-stage Adam)"),
        Entry("methods", "cmr", "bench.methods.cmr.method:CMRMethod", "CMR feed-forward prediction (one encoder pass)"),
        Entry("methods", "cmr-tto", "bench.methods.cmr.method:CMRTTOMethod",
              "CMR + test-time optimisation of latent and camera (mask MSE + perceptual)"),
        Entry("methods", "umr", "bench.methods.umr.method:UMRMethod", "UMR feed-forward prediction (one encoder pass)"),
        Entry("methods", "umr-tto", "bench.methods.umr.method:UMRTTOMethod",
              "UMR + test-time optimisation of latent and camera (soft IoU + perceptual)"),
    ),
    "datasets": (
        Entry("datasets", "synthetic", "bench.datasets.synthetic:SyntheticDataset",
              "built-in offline dataset rendered from the active generator (default)"),
        Entry("datasets", "cub", "bench.datasets.cub:CUBDataset", "CUB-200-2011 birds in the CMR/MeshInversion layout"),
        Entry("datasets", "p3d", "bench.datasets.p3d:P3DDataset", "PASCAL3D+ cars in the CMR p3d layout"),
        Entry("datasets", "images", "bench.datasets.images:ImagesDataset",
              "your own photos with masks (CUB crop; camera searched by the method or predicted by CMR)"),
    ),
    "metrics": (
        _metric("iou", "bench.metrics.iou:IoUMetric", "mask IoU, official formula, against the sample's mask",
                level="instance", columns=[("iou", "iou", HIGHER)]),
        _metric("latency", "bench.metrics.latency:LatencyMetric",
                "per-instance wall and optimisation time (summary of the records' timings)",
                columns=[("instances_per_s", "inst_per_s", HIGHER, "1/s")]),
        _metric("fid1", "bench.metrics.fid:FID1Metric", "FID of masked input vs input-view render (black bg)",
                columns=[("fid", "fid1", LOWER), ("kid_mean", "kid1", LOWER)]),
        _metric("fid10", "bench.metrics.fid:FID10Metric", "FID of 10 canonical views (white bg) vs reference stats",
                columns=[("fid", "fid10", LOWER), ("kid_mean", "kid10", LOWER)]),
        _metric("fid12", "bench.metrics.fid:FID12Metric", "FID of 12 canonical views (white bg) vs reference stats",
                columns=[("fid", "fid12", LOWER), ("kid_mean", "kid12", LOWER)]),
        _metric("kid", "bench.metrics.fid:KIDMetric", "KID next to each FID"),
        _metric("shape3d", "bench.metrics.shape3d:Shape3DMetric",
                "synthetic GT only: Chamfer-L2, F-score, latent error, PSNR/SSIM of canonical views",
                columns=[("chamfer_l2", "chamfer_l2", LOWER, "RMS radius²"), ("fscore", "fscore", HIGHER),
                         ("latent_error", "latent_err", LOWER), ("psnr", "psnr", HIGHER, "dB"), ("ssim", "ssim", HIGHER)],
                synthetic_only=True),
    ),
}


def _from_entry_point(kind: str, ep) -> Entry:
    """An entry point's `Entry`; its metadata are read from the class on first use (see `entries`)."""
    source = ep.dist.name if getattr(ep, "dist", None) else "plugin"
    entry = Entry(kind, ep.name, ep.value, source=source)
    try:
        cls = entry.load()
    except UserError as err:
        return Entry(kind, ep.name, ep.value, summary=f"(cannot be loaded: {err})", source=source)
    columns = tuple(c if isinstance(c, Column) else Column(*c) for c in getattr(cls, "columns", ()))
    return Entry(kind, ep.name, ep.value, summary=str(getattr(cls, "summary", "") or ""),
                 level=str(getattr(cls, "level", "corpus")), columns=columns,
                 synthetic_only=bool(getattr(cls, "synthetic_only", False)), source=source)


_PLUGINS: dict[str, dict[str, Entry]] = {}


def entries(kind: str) -> dict[str, Entry]:
    """All entries of ``kind``: built-ins in table order, then entry points (which may not shadow one)."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}")
    out = {e.name: e for e in BUILTIN[kind]}
    if kind not in _PLUGINS:
        _PLUGINS[kind] = {ep.name: _from_entry_point(kind, ep) for ep in entry_points(group=f"meshbench.{kind}")
                          if ep.name not in out}
    out.update(_PLUGINS[kind])
    return out


def get(kind: str, name: str) -> Entry:
    """The entry ``name`` of ``kind``; a `UserError` with suggestions when it does not exist."""
    table = entries(kind)
    if name not in table:
        raise UserError(f"unknown {kind[:-1]} {name!r}{did_you_mean(name, table)}")
    return table[name]


def load(kind: str, name: str):
    """Import and return the class registered as ``name``."""
    return get(kind, name).load()


def metrics(level: str | None = None) -> list[Entry]:
    """Metric entries, optionally only those of one level (``instance`` | ``corpus``)."""
    return [e for e in entries("metrics").values() if level is None or e.level == level]
