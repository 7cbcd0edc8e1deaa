"""The small interface every metric follows, and the context `bench eval` hands to corpus metrics.

Two levels (lm-evaluation-harness style: per-instance results kept apart from aggregation):

* ``level = "instance"``: ``instance(sample, recon) -> dict`` runs inside ``bench run`` on each
  reconstruction (IoU); the values land in the record's ``metrics``.
* ``level = "corpus"``: ``corpus(ctx) -> dict`` runs in ``bench eval`` over the whole run directory
  (all shards' records) and returns ``{"protocol": {...}, "methods": {method: {...}}}``, written
  to ``RUN/metrics/<name>.json``.

A metric's level, summary and report columns are its entry in :mod:`bench.registry` (a
third-party metric gives them as class attributes of the same names). An instance-level metric may
also define ``corpus`` (a summary of its per-record values).
A metric may define ``check(ctx)``: `bench eval` calls it for every chosen metric before any
computation, so a missing weights or reference file fails before anything is rendered.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from bench.config import check_fields, option, require
from bench.store import RunDir


@dataclass
class EvalOptions:
    """Protocol options of `bench eval`: the one table of its CLI options (``--fid-extractor`` ...
    ``--progress/--quiet`` take their default and help from here) and of the metrics JSON."""

    fid_extractor: str = option("standard", help="FID feature extractor: standard (TF-Inception FID, torch-fidelity "
                                "inception-v3-compat) | torchvision-inception (the paper's FID) | any extractor "
                                "registered with torch-fidelity")
    fid_weights: str | None = option(None, help="weights file of the FID extractor (default: its file in the torch "
                                     "hub cache; never downloaded)")
    fid_reference: str | None = option("auto", help="FID_10/12 reference: an .npz (ConvMesh "
                                       "precomputed_fid_299x299_testval.npz or mu/sigma) | dataset | auto (synthetic "
                                       "runs and other extractors: dataset; torchvision-inception on real data: "
                                       "ConvMesh's npz under <data root>/cache/)")
    fid10_views: str = option("paper", help="FID_10 views: paper (10: without 90 and 270, as the paper describes) | "
                              "official-code (11: without 270, what the released code computes)")
    device: str = option("cpu", help="cpu | cuda | cuda:K (feature extraction and rendering)")
    batch_size: int = option(40, ge=1, help="images per extractor forward pass")
    kid_subsets: int = option(100, ge=1, help="number of KID subsets")
    kid_subset_size: int = option(1000, help="upper bound of the KID subset size (each subset: min(n_fake, n_real, "
                                  "this) images; torch-fidelity's 1000)", ge=2)
    seed: int = option(2020, ge=0, lt=2 ** 32, help="seed of the KID subset sampling (torch-fidelity's 2020) and of "
                       "the FID bootstrap")
    fid_bootstrap: int = option(0, ge=0, help="FID_1/10/12 95% confidence interval: N bootstrap resamples "
                                "over instances (percentile interval shifted by the bootstrap bias), seeded by --seed "
                                "(0: off; at least 10)")
    fscore_threshold: float = option(0.05, help="shape3d F-score threshold, fraction of the normalised ground "
                                     "truth's bounding-box diagonal", gt=0, le=1)
    num_points: int = option(10000, ge=1, help="shape3d: points sampled on each surface for Chamfer-L2 / F-score")
    view_size: int = option(256, help="canonical-view resolution in pixels (the protocol is 256; smaller only for "
                            "quick checks; recorded)", ge=16, multiple_of=4)
    progress: bool = option(True, help="show progress bars")

    def __post_init__(self):
        from bench.devices import parse_device
        from bench.render.camera import FID10_OPTIONS

        check_fields(self)  # types and the ranges stated in option(...)
        require(bool(self.fid_extractor), "fid_extractor", "must name an extractor", self.fid_extractor)
        require(self.fid10_views in FID10_OPTIONS, "fid10_views", f"must be one of {', '.join(FID10_OPTIONS)}",
                self.fid10_views)
        require(self.fid_bootstrap == 0 or self.fid_bootstrap >= 10, "fid_bootstrap",
                "must be 0 (off) or at least 10 resamples (fewer give no usable 95% interval)", self.fid_bootstrap)
        self.device = parse_device(self.device, require_visible=False, option="device")


@dataclass
class EvalContext:
    """What a corpus metric sees: the run, the methods to evaluate, the options, a shared cache
    (so FID_10, FID_12 and KID reuse one set of renders and features) and a progress bar."""

    run: RunDir
    methods: list[str]
    options: EvalOptions = field(default_factory=EvalOptions)
    progress: Any = None
    cache: dict[str, Any] = field(default_factory=dict)

    def records(self, method: str) -> list[dict]:
        """All records of ``method`` (every shard's: the run directory holds them all), read once."""
        memo = self.cache.setdefault("records", {})
        if method not in memo:
            memo[method] = self.run.records(method)
        return memo[method]

    def ok_records(self, method: str) -> list[dict]:
        """Records of ``method`` with status ok."""
        return [r for r in self.records(method) if r.get("status") == "ok"]

    def failed_records(self, method: str) -> list[dict]:
        return [r for r in self.records(method) if r.get("status") != "ok"]

    def ticker(self, description: str, total: int) -> Callable[..., None]:
        """A new progress task; call the result (``tick(n=1)``) to advance it (no-op without a bar)."""
        bar = self.progress
        if bar is None:
            return lambda n=1: None
        task = bar.add_task(description, total=total)
        return lambda n=1: bar.advance(task, n)


class Metric:
    """Base class (optional: any object with the method of its level works). Built-ins are described
    by their registry entry; a plugin sets ``summary``, ``level`` and ``columns`` here."""

    summary: str = ""
    level: str = "corpus"

    def instance(self, sample, recon) -> dict[str, float]:  # pragma: no cover - per subclass
        return {}

    def check(self, ctx: "EvalContext") -> None:
        """Optional: fail with a `UserError` before any metric runs (missing weights, reference file)."""

    def corpus(self, ctx: EvalContext) -> dict:  # pragma: no cover - per subclass
        raise NotImplementedError
