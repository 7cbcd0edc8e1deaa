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
* **95 % interval** of each FID with ``--fid-bootstrap N`` (default 0: off): ``fid_ci`` beside
  ``fid``, a bootstrap over **instances** seeded by ``--seed`` (percentile interval shifted by the
  bootstrap bias, as :meth:`bench.metrics.distance.InstanceBootstrap.interval` explains): FID_1 resamples an instance's real and fake
  image together, FID_10/12 all views of a drawn instance, against the same fixed reference.

The parts, one module each: the PNGs (:mod:`bench.metrics.views`, under ``RUN/fid/``, written once
and reused), their features (:mod:`bench.metrics.features`, cached per extractor, weights and image
folder), the reference (:mod:`bench.metrics.reference`) and the distances
(:mod:`bench.metrics.distance`). The FID is computed over **all** ok records of a method in the run
directory (every shard), never averaged across shards.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.metrics.base import EvalContext, Metric
from bench.metrics.distance import (BOOTSTRAP_METHOD, fid_bootstrap_ci, fid_from_features, fid_from_statistics,
                                    kid_or_none)
from bench.metrics.features import FeatureCache
from bench.metrics.reference import ReferenceSource, statistics_from_features
from bench.metrics.views import FID12_ANGLES, ViewRenderer, fid10_angles, views_protocol


@dataclass
class FIDParts:
    """The renderer, feature cache and reference of one `bench eval` call (shared by FID, KID, shape3d)."""

    views: ViewRenderer
    features: FeatureCache
    reference: ReferenceSource

    @classmethod
    def of(cls, ctx: EvalContext) -> "FIDParts":
        if "fid" not in ctx.cache:
            views, features = ViewRenderer(ctx), FeatureCache(ctx)
            ctx.cache["fid"] = cls(views, features, ReferenceSource(ctx, views, features))
        return ctx.cache["fid"]


def _counts(ctx: EvalContext, method: str) -> dict:
    return {"n_instances": len(ctx.ok_records(method)), "n_failed": len(ctx.failed_records(method))}


#: Confidence level of ``fid_ci``.
CI_LEVEL = 0.95


def _view_groups(images, records: list[dict], angles) -> np.ndarray:
    """Instance index of each canonical-view image: `ViewRenderer.view_images` lists them
    instance-major (ok records in order), then angle, ``len(angles)`` per instance (checked on the names)."""
    k = len(angles)
    names = [p.name for p in images]
    expected = [f"{rec['instance']}_{int(a):03d}.png" for rec in records for a in angles]
    assert names == expected, "canonical views are not ordered per instance, then angle"
    return np.repeat(np.arange(len(records)), k)


def _bootstrap(ctx: EvalContext, method: str, fake, *, real=None, reference=None, groups=None) -> dict:
    """``{"fid_ci": {...}}`` with ``--fid-bootstrap N`` (N > 0); ``{}`` when off; only a ``fid_ci_note``
    below 2 instances (one instance resamples to itself: no interval)."""
    n = ctx.options.fid_bootstrap
    if not n:
        return {}
    n_instances = len(fake) if groups is None else int(np.max(groups)) + 1
    if n_instances < 2:
        return {"fid_ci_note": "no fid_ci: the bootstrap needs at least 2 instances"}
    tick = ctx.ticker(f"{method}: FID bootstrap", n)
    return {"fid_ci": fid_bootstrap_ci(fake, real, reference=reference, groups=groups, resamples=n,
                                       seed=ctx.options.seed, level=CI_LEVEL, tick=tick)}


class _FIDBase(Metric):
    kind = ""  # its registry name (fid1, fid10, fid12): the key of its results in ctx.cache

    def check(self, ctx: EvalContext) -> None:
        """Fail before any rendering: the extractor's weights file, and the ``.npz`` reference."""
        from bench.metrics.extractors import resolve_weights

        resolve_weights(ctx.options.fid_extractor, ctx.options.fid_weights)
        if self.kind != "fid1":
            FIDParts.of(ctx).reference.check()

    def values(self, ctx: EvalContext, parts: FIDParts, method: str) -> dict:  # pragma: no cover - per subclass
        raise NotImplementedError

    def protocol(self, ctx: EvalContext, parts: FIDParts) -> dict:
        opts = ctx.options
        return {**parts.features.extractor.describe(), "device": opts.device, "batch_size": opts.batch_size,
                "kid": {"subsets": opts.kid_subsets, "max_subset_size": opts.kid_subset_size, "seed": opts.seed,
                        "kernel": "poly(degree 3, gamma 1/D, coef0 1)"},
                "fid_bootstrap": {"resamples": opts.fid_bootstrap, "seed": opts.seed, "level": CI_LEVEL,
                                  "method": BOOTSTRAP_METHOD, "rng": "numpy.random.default_rng(seed)"}}

    def corpus(self, ctx: EvalContext) -> dict:
        self.check(ctx)
        parts = FIDParts.of(ctx)
        _ = parts.features.extractor  # fail early on an unreadable weights file
        methods = {m: self.values(ctx, parts, m) for m in ctx.methods}
        result = {"protocol": self.protocol(ctx, parts), "methods": methods}
        ctx.cache.setdefault("fid_results", {})[self.kind] = result
        return result


class FID1Metric(_FIDBase):
    """FID of masked input vs masked input-view render (black background), one pair per instance."""

    kind = "fid1"

    def values(self, ctx, parts, method):
        real, fake = parts.views.fid1_images(method)
        out = {**_counts(ctx, method), "n_images": len(fake)}
        if len(fake) < 2:
            return {**out, "fid": None, "note": "FID needs at least 2 ok instances"}
        fr, ff = parts.features.features(real), parts.features.features(fake)
        out = {**out, "fid": fid_from_features(ff, fr), **kid_or_none(ff, fr, ctx.options)}
        # real row i and fake row i are the same instance (fid1_images: one pair per ok record)
        return {**out, **_bootstrap(ctx, method, ff, real=fr)}

    def protocol(self, ctx, parts):
        return {**super().protocol(ctx, parts), "images": "input x mask vs input-view render x render mask, "
                "black background, render size", "quantisation": "round(255 x) to uint8"}


class _ViewsFID(_FIDBase):
    def angles(self, ctx: EvalContext) -> tuple[int, ...]:  # pragma: no cover - per subclass
        raise NotImplementedError

    def values(self, ctx, parts, method):
        angles = self.angles(ctx)
        images = parts.views.view_images(method, angles)
        out = {**_counts(ctx, method), "n_images": len(images), "views": list(angles)}
        ref = parts.reference.for_views(angles)
        if ref.note:
            out["note"] = ref.note
        if len(images) < 2 or ref.statistics is None:
            return {**out, "fid": None, "kid_mean": None, "kid_std": None,
                    "note": out.get("note", "FID needs at least 2 images")}
        feats = parts.features.features(images)
        out["fid"] = fid_from_statistics(statistics_from_features(feats), ref.statistics)
        out.update(_bootstrap(ctx, method, feats, reference=ref.statistics,
                              groups=_view_groups(images, ctx.ok_records(method), angles)))
        if ref.features is not None:
            out.update(kid_or_none(feats, ref.features, ctx.options))
        else:
            out.update({"kid_mean": None, "kid_std": None, "kid_note": "reference .npz holds statistics only: no KID"})
        return out

    def protocol(self, ctx, parts):
        angles = self.angles(ctx)
        return {**super().protocol(ctx, parts), **views_protocol(angles, ctx.options.view_size),
                **parts.reference.describe(angles)}


class FID12Metric(_ViewsFID):
    """FID of the 12 canonical views (white background) vs reference statistics."""

    kind = "fid12"

    def angles(self, ctx):
        return FID12_ANGLES


class FID10Metric(_ViewsFID):
    """FID of 10 (``paper``) or 11 (``official-code``) canonical views vs reference statistics."""

    kind = "fid10"

    def angles(self, ctx):
        return fid10_angles(ctx.options.fid10_views)

    def protocol(self, ctx, parts):
        return {**super().protocol(ctx, parts), "fid10_views": ctx.options.fid10_views}


class KIDMetric(Metric):
    """KID next to each FID: ``{method: {"fid1": {...}, "fid10": {...}, "fid12": {...}}}``.

    Uses the FID results already computed in the same `bench eval` call (``ctx.cache``) and computes
    the missing ones otherwise.
    """

    KINDS = (("fid1", FID1Metric), ("fid10", FID10Metric), ("fid12", FID12Metric))

    def check(self, ctx: EvalContext) -> None:
        FID12Metric().check(ctx)

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
