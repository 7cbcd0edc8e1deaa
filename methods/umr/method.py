"""Methods ``umr`` (feed-forward UMR) and ``umr-tto`` (UMR + test-time optimisation).

Same machinery as CMR (:mod:`bench.methods.cmr.method`), with UMR's network
(:mod:`bench.methods.umr.nets`), its TTO objective (2.5 · (1 − soft IoU) + 3.0 · perceptual of
render·silhouette vs image·mask) and its open choices as config fields:

* ``hypothesis``: ``argmax`` (default, deterministic) or ``sample`` (UMR's multinomial draw, seeded
  with ``seed``) among the 8 camera hypotheses;
* ``shape_code``: ``mean`` (default, μ of the VAE head) or ``sample`` (μ + σ·ε with ε drawn once per
  instance from ``seed`` and kept fixed during TTO);
* ``frame_quaternion``: rotation (w,x,y,z) from UMR's object frame (mirror plane y = 0) to the shared
  frame (mirror plane x = 0). The default, +90° about z, maps UMR's y axis onto x exactly, so meshes
  are symmetric about x = 0; which of UMR's in-plane axes is "up" is not documented anywhere (its
  frame is learned without SfM), so the default sends UMR's +x to +y and should be checked (and
  changed here) against renders of the released model. Projections are unaffected by this choice.

The checkpoint's batch-sized ``uv_sampler`` buffer is resized before the strict load; row 0 is
used, and its agreement with our own UV sampler is recorded (``describe()["checkpoint_info"]``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


from bench.errors import UserError
from bench.methods.cmr.method import FAST_TTO, CMRTTOConfig, MeshNetMethod, MeshNetTTOMethod
from bench.methods.cmr.nets import build_seeded
from bench.methods.umr.nets import UMRMeshNet

_DEFAULT_FRAME = list(UMRMeshNet.frame_quaternion)


@dataclass
class UMRConfig:
    """``umr``: feed-forward UMR.

    Attributes:
        checkpoint: released ``pred_net_latest.pth``; None -> seeded random weights ("untrained").
        seed: seed of the untrained weights and of the ``sample`` options.
        warmup: one dummy forward in `setup` (see ``cmr``).
        hypothesis: ``argmax`` | ``sample`` camera hypothesis.
        shape_code: ``mean`` | ``sample`` VAE code for the shape head.
        frame_quaternion: UMR frame -> shared frame rotation (w, x, y, z).
    """

    checkpoint: Optional[str] = None
    seed: int = 0
    warmup: bool = True
    hypothesis: str = "argmax"
    shape_code: str = "mean"
    frame_quaternion: list[float] = field(default_factory=lambda: list(_DEFAULT_FRAME))


@dataclass
class UMRTTOConfig(CMRTTOConfig):
    """``umr-tto``: UMR + TTO. Fields as ``cmr-tto`` (weights 2.5 / 3.0) plus UMR's options."""

    mask_weight: float = 2.5
    texture_weight: float = 3.0
    hypothesis: str = "argmax"
    shape_code: str = "mean"
    frame_quaternion: list[float] = field(default_factory=lambda: list(_DEFAULT_FRAME))


class _UMRMixin:
    model_name = "UMR"

    def build_net(self, seed):
        return build_seeded(UMRMeshNet, seed)

    def validate(self) -> None:
        super().validate()
        c = self.config
        if c.hypothesis not in ("argmax", "sample"):
            raise UserError(f"{self.name}.hypothesis must be 'argmax' or 'sample', got {c.hypothesis!r}")
        if c.shape_code not in ("mean", "sample"):
            raise UserError(f"{self.name}.shape_code must be 'mean' or 'sample', got {c.shape_code!r}")
        self.frame_quaternion()

    def configure_net(self, net) -> None:
        c = self.config
        net.hypothesis = c.hypothesis
        net.shape_code = c.shape_code

    def frame_quaternion(self):
        q = [float(x) for x in self.config.frame_quaternion]
        if len(q) != 4 or sum(x * x for x in q) < 1e-12:
            raise UserError(f"{self.name}.frame_quaternion must be 4 numbers (w, x, y, z), got {q}")
        return q

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
    summary = "UMR feed-forward prediction (one encoder pass)"
    Config = UMRConfig
    profiles = {"paper": {}, "fast": {}}


class UMRTTOMethod(_UMRMixin, MeshNetTTOMethod):
    """UMR + test-time optimisation of latent and camera ((1 − soft IoU) ×2.5 + perceptual ×3.0)."""

    name = "umr-tto"
    summary = "UMR + test-time optimisation of latent and camera (soft IoU + perceptual)"
    Config = UMRTTOConfig
    profiles = {"paper": {}, "fast": dict(FAST_TTO)}
    loss_kind = "umr"


__all__ = ["UMRConfig", "UMRTTOConfig", "UMRMethod", "UMRTTOMethod"]
