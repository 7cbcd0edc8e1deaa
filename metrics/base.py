"""The small interface every metric follows, and the context `bench eval` hands to corpus metrics.

Two levels (lm-evaluation-harness style: per-instance results kept apart from aggregation):

* ``level = "instance"``: ``instance(sample, recon) -> dict`` runs inside ``bench run`` on each
  reconstruction (IoU, latency); the values land in the record's ``metrics``.
* ``level = "corpus"``: ``corpus(ctx) -> dict`` runs in ``bench eval`` over the whole run directory
  (all shards' records) and returns ``{"protocol": {...}, "methods": {method: {...}}}``, written
  to ``RUN/metrics/<name>.json``.

An instance-level metric may also define ``corpus`` (a summary of its per-record values).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.store import RunDir


@dataclass
class EvalOptions:
    """Protocol options of `bench eval` (the same table drives the CLI and the metrics JSON).

    Attributes:
        fid_extractor: ``standard`` (TF-Inception FID, torch-fidelity ``inception-v3-compat``) |
            ``torchvision-inception`` (paper parity) | any torch-fidelity registered extractor.
        fid_weights: weights file of the extractor (default: the torch hub cache file).
        fid_reference: ``None``/``auto`` | ``dataset`` | path to an ``.npz`` (FID_10/FID_12 reference).
        fid10_views: ``paper`` (10 views: without 90° and 270°) | ``official-code`` (11 views: without 270°).
        device: ``cpu`` | ``cuda`` (feature extraction and rendering).
        batch_size: images per extractor forward pass.
        kid_subsets: number of KID subsets (subset size min(n_fake, n_real, 1000)).
        kid_subset_size: upper bound of the KID subset size.
        seed: KID subset sampling seed (torch-fidelity's default 2020).
        fscore_threshold: F-score distance threshold as a fraction of the normalised GT's
            bounding-box diagonal.
        num_points: points sampled on each surface for Chamfer / F-score.
        view_size: resolution of the canonical views (protocol: 256; smaller only for quick checks).
        progress: show rich progress bars.
    """

    fid_extractor: str = "standard"
    fid_weights: str | None = None
    fid_reference: str | None = None
    fid10_views: str = "paper"
    device: str = "cpu"
    batch_size: int = 40
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    seed: int = 2020
    fscore_threshold: float = 0.05
    num_points: int = 10000
    view_size: int = 256
    progress: bool = True


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


class Metric:
    """Base class (optional: any object with ``name``, ``summary``, ``level`` and the method of its
    level works)."""

    name: str = ""
    summary: str = ""
    level: str = "corpus"

    def instance(self, sample, recon) -> dict[str, float]:  # pragma: no cover - per subclass
        return {}

    def corpus(self, ctx: EvalContext) -> dict:  # pragma: no cover - per subclass
        raise NotImplementedError
