"""Methods ``umr`` (feed-forward UMR) and ``umr-tto`` (UMR + test-time optimisation).

Same machinery as CMR (:mod:`bench.methods.cmr.method`), with UMR's network
(:mod:`bench.methods.umr.nets`), its TTO objective (2.5 · (1 − soft IoU) + 3.0 · perceptual of
render·silhouette vs image·mask) and its open choices as config fields:

* ``hypothesis``: ``argmax`` (default, deterministic) or ``sample`` (UMR's multinomial draw) among
  the 8 camera hypotheses;
* ``shape_code``: ``mean`` (default, μ of the VAE head) or ``sample`` (μ + σ·ε with ε drawn once per
  instance and kept fixed during TTO);
* ``frame_quaternion``: rotation (w,x,y,z) from UMR's object frame (mirror plane y = 0) to the shared
  frame (mirror plane x = 0). The default, +90° about z, maps UMR's y axis onto x exactly, so meshes
  are symmetric about x = 0; which of UMR's in-plane axes is "up" is not documented anywhere (its
  frame is learned without SfM), so the default sends UMR's +x to +y and should be checked (and
  changed here) against renders of the released model. Projections are unaffected by this choice.

Both ``sample`` options draw from the instance's own seed (:func:`bench.seeds.sample_seed`, i.e.
``bench run --seed``), so they are reproducible and independent of batching and sharding.

The configs derive from CMR's (:class:`UMRConfig` = ``CMRConfig`` + :class:`UMROptions`,
:class:`UMRTTOConfig` = ``CMRTTOConfig`` + :class:`UMROptions` with UMR's loss weights).

The checkpoint's batch-sized ``uv_sampler`` buffer is resized before the strict load; row 0 is
used, and its agreement with our own UV sampler is recorded (``describe()["checkpoint_info"]``).
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.config import check_fields, option, require
from bench.methods.cmr.method import FAST_TTO, CMRConfig, CMRTTOConfig, MeshNetMethod, MeshNetTTOMethod
from bench.methods.umr.nets import UMRMeshNet

HYPOTHESIS_MODES = ("argmax", "sample")
SHAPE_CODES = ("mean", "sample")


@dataclass
class UMROptions:
    """UMR's own options (shared by ``umr`` and ``umr-tto``)."""

    hypothesis: str = option("argmax", help="camera hypothesis among UMR's 8: argmax (deterministic) or sample "
                                            "(UMR's multinomial draw, from the instance's seed: bench run --seed)")
    shape_code: str = option("mean", help="VAE code read by the shape head: mean (mu) or sample (mu + sigma*eps, "
                                          "eps drawn once per instance from its seed, fixed during TTO)")
    frame_quaternion: list[float] = option(list(UMRMeshNet.frame_quaternion), length=4,
                                           help="rotation (w, x, y, z) from UMR's object frame (mirror plane "
                                                "y = 0) to the shared frame (mirror plane x = 0); default +90 deg "
                                                "about z (UMR's up axis is undocumented: check against renders)")

    def __post_init__(self):
        check_fields(self)  # types and the ranges stated in option(...)
        require(self.hypothesis in HYPOTHESIS_MODES, "hypothesis", "must be 'argmax' or 'sample'", self.hypothesis)
        require(self.shape_code in SHAPE_CODES, "shape_code", "must be 'mean' or 'sample'", self.shape_code)
        q = self.frame_quaternion
        require(sum(x * x for x in q) >= 1e-12, "frame_quaternion", "must be 4 numbers (w, x, y, z), not all zero", q)


@dataclass
class UMRConfig(UMROptions, CMRConfig):
    """``umr``: feed-forward UMR (``cmr``'s fields plus :class:`UMROptions`)."""

    def __post_init__(self):
        CMRConfig.__post_init__(self)
        UMROptions.__post_init__(self)


@dataclass
class UMRTTOConfig(UMROptions, CMRTTOConfig):
    """``umr-tto``: UMR + TTO (``cmr-tto``'s fields with UMR's loss weights, plus :class:`UMROptions`)."""

    mask_weight: float = option(2.5, ge=0, help="weight of the mask term 1 - soft IoU (UMR training weight 2.5)")
    texture_weight: float = option(3.0, ge=0, help="weight of the perceptual texture term (UMR training weight 3.0)")

    def __post_init__(self):
        CMRTTOConfig.__post_init__(self)
        UMROptions.__post_init__(self)


class _UMRMixin:
    model_name = "UMR"
    network_class = UMRMeshNet

    def configure_net(self, net) -> None:
        net.hypothesis = self.config.hypothesis
        net.shape_code = self.config.shape_code

    def frame_quaternion(self):
        return [float(x) for x in self.config.frame_quaternion]

    def after_load(self, net) -> None:
        diff = (net.uv_sampler[0] - net.own_uv_sampler).abs().max().item()
        self._load_info["uv_sampler_max_abs_diff_vs_own"] = diff

    def _extra_info(self, enc, extra, b) -> dict:
        out = super()._extra_info(enc, extra, b)
        out["hypothesis"] = int(enc["hypothesis"][b])
        out["hypothesis_mode"] = self.config.hypothesis
        out["hypothesis_probs"] = [round(float(p), 6) for p in enc["probs"][b].cpu()]
        out["shape_code"] = self.config.shape_code
        return out


class UMRMethod(_UMRMixin, MeshNetMethod):
    """UMR feed-forward prediction (one encoder pass)."""

    name = "umr"
    Config = UMRConfig
    profiles = {"paper": {}, "fast": {}}


class UMRTTOMethod(_UMRMixin, MeshNetTTOMethod):
    """UMR + test-time optimisation of latent and camera ((1 − soft IoU) ×2.5 + perceptual ×3.0)."""

    name = "umr-tto"
    Config = UMRTTOConfig
    profiles = {"paper": {}, "fast": dict(FAST_TTO)}
    loss_kind = "umr"


__all__ = ["UMROptions", "UMRConfig", "UMRTTOConfig", "UMRMethod", "UMRTTOMethod"]
