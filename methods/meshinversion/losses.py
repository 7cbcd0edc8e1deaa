"""MeshInversion inversion losses (spec §d ``criterion``), for a batch of B independent instances.

The official code works on one instance at a time. Here every term returns one value per instance
(shape (B,)); the optimised scalar is ``total.sum()``, so each instance's gradient (and therefore
its Adam step) is exactly what it would be alone. Instances have different numbers of mask pixels:
point sets are *padded batches* (:class:`PointSet`: (B, N, D) tensors plus ``lengths`` (B,)),
see :mod:`.chamfer`.

Terms (unweighted; defaults of :class:`LossConfig`):

* ``mask`` (×10): Chamfer between projected vertex xy and target mask pixel positions, squared
  distances in float64, both directions, no subsampling; float32 result.
* ``pixel`` (×1): one-way gated Chamfer prediction → target over (position, RGB), float64.
* ``feat`` (×0.04 as in the official code; the supplement says 0.05): symmetric gated Chamfer
  over (position, L2-normalised VGG19 relu3_1 feature) on the feature grid, float64.
* ``nll`` (×0.05): ``mean(z²)/2``.
* ``flat`` (×5e-5, off by default): ConvMesh flatness, computed by the caller or by
  :func:`flat_loss` from face normals.

Random subsampling (``distChamfer_downsample``): for each texture term and each instance,
``idx_a = randperm(N_pred)[:R]`` then ``idx_b = randperm(N_target)[:R]`` are drawn on the CPU
(default generator unless one is passed), also when N ≤ R; the same indices select colours and
positions. For B > 1 the draws go term by term (pixel, then feat), instance by instance. Explicit
indices can be injected (``indices=``) to reproduce a recorded call.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.config import check_fields, option, require
from bench.metrics.iou import mask_iou

from .chamfer import (DEFAULT_XY_THRESHOLD, GateParams, chamfer_sq, eps_from_threshold, gated_chamfer, masked_mean,
                      threshold_from_eps)

__all__ = [
    "LossConfig",
    "LossTargets",
    "PointSet",
    "chamfer_mask_loss",
    "criterion",
    "eps_from_threshold",
    "feat_texture_loss",
    "feature_points",
    "flat_loss",
    "get_vtx_color",
    "grid_sample_from_vtx",
    "mask2proj",
    "nll_loss",
    "pixel_points",
    "pixel_texture_loss",
    "prepare_targets",
    "subsample_indices",
    "texture_chamfer_loss",
    "threshold_from_eps",
]

IndexPairs = Sequence[tuple[Tensor, Tensor]]


#: ``texture_loss`` values -> the term names they use (``criterion``'s ``terms``, the loss traces).
PIXEL_TERMS = {"chamfer": "pixel", "pixel-chamfer": "pixel", "l1": "pixel_l1"}
FEATURE_TERMS = {"chamfer": "feat", "feature-chamfer": "feat", "perceptual": "feat_perceptual",
                 "contextual": "feat_contextual"}
TEXTURE_LOSSES = ("chamfer", "pixel-chamfer", "feature-chamfer", "l1", "perceptual", "contextual")


@dataclass
class LossConfig:
    """Weights, switches and parameters of :func:`criterion`: the one table of their defaults.

    :class:`bench.methods.meshinversion.config.InversionConfig` inherits these fields, so the same
    names are the CLI options (``--set ours.mask_loss_weight=10``) and the criterion's settings.
    Each field's help names the official argument and value.
    """

    mask_loss_weight: float = option(10.0, ge=0, help="weight of the Chamfer mask term (official chamfer_mask_loss_wt 10)")
    pixel_loss_weight: float = option(
        1.0, ge=0, help="weight of the pixel-level Chamfer texture term (official chamfer_texture_pixel_loss_wt 1)")
    feat_loss_weight: float = option(
        0.04, ge=0, help="weight of the feature-level Chamfer texture term (released code 0.04; the supplement states 0.05)")
    nll_loss_weight: float = option(0.05, ge=0, help="weight of the latent prior mean(z^2)/2 (official nll_loss_wt 0.05)")
    flat_loss_weight: float = option(
        5e-5, ge=0, help="weight of the ConvMesh flatness term, used only with mesh_regularization (official 5e-5)")
    mask_loss: bool = option(True, help="use the Chamfer mask term (official: always on)")
    pixel_loss: bool = option(True, help="use the pixel-level Chamfer texture term (official: always on)")
    feat_loss: bool = option(True, help="use the feature-level Chamfer texture term; needs VGG19 (official: on)")
    nll_loss: bool = option(True, help="use the latent prior during optimisation (official: on)")
    mesh_regularization: bool = option(
        False, help="add the ConvMesh flatness term (official --mesh_regularization_loss, off)")
    xy_threshold: float | None = option(
        None, ge=0, help="xy distance gate tau of the texture Chamfer terms (official 0.16, used when neither it nor "
                         "eps_s is set)")
    eps_s: float | None = option(
        None, le=1, help="the supplement's eps_s = 1 - (2 xy_k xy_threshold)^2: xy_threshold spelt as in its Tab. 2 "
                         "(0.8976 at the defaults); set one of the two, both are recorded")
    xy_k: float = option(1.0, ge=0, help="sharpness of the xy gate (official 1)")
    xy_alpha: float = option(1.0, ge=0, help="height of the xy gate (official 1)")
    rgb_eps: float = option(1.0, ge=0, help="colour/feature epsilon of the gated distance (official 1)")
    subpool_threshold: float = option(
        0.5, ge=0, le=1, help="pooled-mask threshold of the feature-grid points of the feature term (official 0.5)")
    mask_threshold: float = option(0.9, ge=0, lt=1, help="pixels with mask > this are Chamfer points (official 0.9)")
    chamfer_resolution: int | None = option(
        8192, ge=1, help="random subsample size of each texture Chamfer point set (official 8192; None = no subsampling)")
    chunk_size: int | None = option(
        None, ge=1, help="rows per Chamfer distance block, a memory knob (None = automatic, chamfer.auto_chunk_size)")
    texture_loss: str = option(
        "chamfer", help="texture terms (supplement Fig. 2): chamfer (pixel + feature Chamfer, official) | "
                        "pixel-chamfer | feature-chamfer | l1 (pixel-aligned, masked RGB) | perceptual (pixel-aligned "
                        "relu3_1) | contextual (Mechrez et al. 2018 on relu3_1); weights pixel_/feat_loss_weight")
    contextual_h: float = option(0.5, gt=0, help="bandwidth h of the contextual loss (Mechrez et al. 2018: 0.5)")
    contextual_eps: float = option(1e-5, gt=0, help="epsilon of the contextual loss's relative distance (paper: 1e-5)")

    def __post_init__(self):
        check_fields(self)  # every field's type and range (its option(...))
        require(self.texture_loss in TEXTURE_LOSSES, "texture_loss", f"must be one of {', '.join(TEXTURE_LOSSES)}",
                self.texture_loss)
        self.xy_threshold, self.eps_s = resolve_xy_gate(self.xy_threshold, self.eps_s, self.xy_k)

    @property
    def pixel_term(self) -> str | None:
        """The pixel-level texture term in use: ``pixel`` (Chamfer), ``pixel_l1`` or None."""
        return PIXEL_TERMS.get(self.texture_loss) if self.pixel_loss else None

    @property
    def feature_term(self) -> str | None:
        """The feature-level texture term in use (needs VGG): ``feat`` (Chamfer), ``feat_perceptual``,
        ``feat_contextual`` or None."""
        return FEATURE_TERMS.get(self.texture_loss) if self.feat_loss else None

    @property
    def gate(self) -> GateParams:
        return GateParams(xy_k=self.xy_k, xy_alpha=self.xy_alpha, xy_threshold=self.xy_threshold,
                          rgb_eps=self.rgb_eps)


def resolve_xy_gate(xy_threshold: float | None, eps_s: float | None, xy_k: float) -> tuple[float, float]:
    """``(xy_threshold, eps_s)``, both filled in, from whichever of the two spellings is set.

    Neither set: the released code's τ = 0.16. Both set: they must agree (else `ConfigError`), so a
    config dict read back from a manifest, which holds both, builds the same config.
    """
    if eps_s is None:
        tau = DEFAULT_XY_THRESHOLD if xy_threshold is None else xy_threshold
        return tau, eps_from_threshold(tau, xy_k)
    require(xy_k > 0, "eps_s", "needs xy_k > 0 (with xy_k = 0 the gate is off; set xy_threshold instead)", eps_s)
    tau = float(f"{threshold_from_eps(eps_s, xy_k):.12g}")  # 0.05, not 0.050000000000000024, in manifests
    if xy_threshold is not None:
        require(math.isclose(xy_threshold, tau, rel_tol=1e-6, abs_tol=1e-12), "eps_s and xy_threshold",
                f"are two spellings of one setting (eps_s = 1 - (2 xy_k xy_threshold)^2 = "
                f"{eps_from_threshold(xy_threshold, xy_k):.6g} for xy_threshold {xy_threshold}); set only one",
                (eps_s, xy_threshold))
        tau = xy_threshold
    return tau, eps_s


@dataclass
class PointSet:
    """A padded batch of point sets: positions xy (B, N, 2), values (B, N, C), lengths (B,).

    Rows ``n >= lengths[b]`` of instance b are padding (zeros).
    """

    xy: Tensor
    values: Tensor
    lengths: Tensor

    def __len__(self) -> int:
        return self.xy.shape[0]

    def instance(self, b: int) -> tuple[Tensor, Tensor]:
        """Unpadded (n_b, 2) positions and (n_b, C) values of instance b."""
        n = int(self.lengths[b])
        return self.xy[b, :n], self.values[b, :n]

    def take(self, idx: Sequence[Tensor]) -> "PointSet":
        """Per-instance row selection: idx[b] (n'_b,) indices into instance b -> new PointSet."""
        dev = self.xy.device
        lengths = torch.tensor([len(i) for i in idx], dtype=torch.long, device=dev)
        width = int(lengths.max()) if len(idx) else 0
        gather = torch.zeros((len(idx), width), dtype=torch.long, device=dev)
        for b, i in enumerate(idx):
            gather[b, : len(i)] = torch.as_tensor(i, device=dev)
        xy = torch.gather(self.xy, 1, gather.unsqueeze(-1).expand(-1, -1, self.xy.shape[-1]))
        val = torch.gather(self.values, 1, gather.unsqueeze(-1).expand(-1, -1, self.values.shape[-1]))
        keep = (torch.arange(width, device=dev)[None, :] < lengths[:, None]).unsqueeze(-1)
        return PointSet(xy * keep, val * keep, lengths)


@dataclass
class LossTargets:
    """Per-instance constants of the losses, computed once per target by :func:`prepare_targets`.

    image (B, 3, H, W) in [−1, 1]; mask (B, 1, H, W); points: target pixel positions + RGB
    (``get_vtx_color``); feat_points: target feature-grid positions + normalised relu3_1
    features (None without a feature-level term); features: the target's raw relu3_1 maps, kept
    only for the pixel-aligned ``perceptual`` term (None otherwise: candidate scoring repeats the
    target per row, and (rows, 256, H/4, W/4) copies would cost the default path memory for nothing).
    """

    image: Tensor
    mask: Tensor
    points: PointSet
    feat_points: PointSet | None = None
    features: Tensor | None = None  # (B, 256, h, w) relu3_1 of the target (``perceptual`` only)


# --------------------------------------------------------------------------------------------
# point sets


def _mask4(mask: Tensor) -> Tensor:
    """(B, H, W) or (B, 1, H, W) -> (B, 1, H, W)."""
    if mask.dim() == 3:
        return mask.unsqueeze(1)
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W) or (B, H, W), got {tuple(mask.shape)}")
    return mask


def mask2proj(mask: Tensor, threshold: float = 0.9, dtype: torch.dtype = torch.float32
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Positions of the pixels with ``mask > threshold`` (official ``mask2proj``), row-major.

    mask (B, 1, H, W) or (B, H, W) -> xy (B, N, 2) with xy = (2j/W − 1, −(2i/H − 1)) (pixel
    top-left corner convention), lengths (B,), pixel (B, N) flat index i·W + j (padding: 0).
    N is the largest count in the batch; rows past lengths[b] are zeros.
    """
    m = _mask4(mask)[:, 0] > threshold
    bsz, h, w = m.shape
    lengths = m.flatten(1).sum(1)
    width = int(lengths.max()) if bsz else 0
    b, i, j = torch.nonzero(m, as_tuple=True)  # lexicographic (b, i, j): row-major per instance
    offsets = torch.cumsum(lengths, 0) - lengths
    slot = torch.arange(b.numel(), device=m.device) - offsets[b]
    xy = torch.zeros((bsz, width, 2), dtype=dtype, device=m.device)
    xy[b, slot, 0] = (2 * j).to(dtype) / w - 1
    xy[b, slot, 1] = -((2 * i).to(dtype) / h - 1)
    pixel = torch.zeros((bsz, width), dtype=torch.long, device=m.device)
    pixel[b, slot] = i * w + j
    return xy, lengths, pixel


def get_vtx_color(mask: Tensor, image: Tensor, threshold: float = 0.9) -> PointSet:
    """Target point set (official ``get_vtx_color``): positions and exact RGB of mask pixels.

    mask (B, 1, H, W), image (B, 3, H, W) in [−1, 1] -> PointSet(xy (B, N, 2), rgb (B, N, 3)).
    """
    xy, lengths, pixel = mask2proj(mask, threshold, dtype=image.dtype)
    flat = image.flatten(2)  # (B, 3, H·W)
    rgb = torch.gather(flat, 2, pixel.unsqueeze(1).expand(-1, flat.shape[1], -1)).transpose(1, 2)
    valid = (torch.arange(xy.shape[1], device=xy.device)[None, :] < lengths[:, None]).unsqueeze(-1)
    return PointSet(xy, rgb * valid, lengths)


def grid_sample_from_vtx(xy: Tensor, image: Tensor) -> Tensor:
    """Bilinear samples of ``image`` at positions xy (official ``grid_sample_from_vtx``).

    xy (B, N, 2) in the (x right, y up) convention, image (B, C, H, W) -> (B, N, C).
    y is negated back to grid_sample's (y down) convention; ``align_corners=True``.
    """
    grid = torch.stack([xy[..., 0], -xy[..., 1]], dim=-1).unsqueeze(1).to(image.dtype)  # (B, 1, N, 2)
    out = F.grid_sample(image, grid, mode="bilinear", align_corners=True)  # (B, C, 1, N)
    return out[:, :, 0].transpose(1, 2)


def pixel_points(image: Tensor, mask: Tensor, threshold: float = 0.9) -> PointSet:
    """Predicted pixel point set: ``mask2proj(mask)`` positions, colours sampled from image.

    image (B, 3, H, W), mask (B, 1, H, W) -> PointSet (gradients flow to image only).
    """
    xy, lengths, _ = mask2proj(mask, threshold, dtype=image.dtype)
    return PointSet(xy, grid_sample_from_vtx(xy, image), lengths)


def feature_points(features: Tensor, mask: Tensor, subpool_threshold: float = 0.5,
                   threshold: float = 0.9) -> PointSet:
    """Feature-grid point set: L2-normalised features at the pooled-mask positions.

    features (B, C, h, w) (relu3_1), mask (B, 1, H, W) with H = s·h, W = s·w ->
    PointSet(xy (B, N, 2) on the h×w grid, normalised features (B, N, C)).
    The mask is s×s average-pooled and thresholded ``>= subpool_threshold``, then
    ``mask2proj`` (``> threshold``) gives the positions.
    """
    mask = _mask4(mask)
    h, w = features.shape[-2:]
    sub = mask.shape[-2] // h
    if sub < 1 or mask.shape[-2] != sub * h or mask.shape[-1] != sub * w:
        raise ValueError(f"mask {tuple(mask.shape[-2:])} is not an integer multiple of the feature grid {(h, w)}")
    pooled = (F.avg_pool2d(mask.detach().to(features.dtype), sub) >= subpool_threshold).to(features.dtype)
    xy, lengths, _ = mask2proj(pooled, threshold, dtype=features.dtype)
    feats = F.normalize(grid_sample_from_vtx(xy, features), dim=-1, eps=1e-12)
    return PointSet(xy, feats, lengths)


# --------------------------------------------------------------------------------------------
# subsampling


def subsample_indices(n: int, resolution: int | None, generator: torch.Generator | None = None) -> Tensor:
    """Official random subsampling: ``randperm(n)[:min(resolution, n)]`` on the CPU (int64)."""
    perm = torch.randperm(n, generator=generator)
    return perm if resolution is None else perm[:resolution]


def _draw(pred: PointSet, target: PointSet, resolution: int | None, generator: torch.Generator | None,
          given: IndexPairs | None) -> tuple[PointSet, PointSet]:
    """Subsample both sets per instance (drawn a then b per instance, or given)."""
    if given is None and resolution is None:
        return pred, target
    bsz = len(pred)
    if given is not None and len(given) != bsz:
        raise ValueError(f"indices for {len(given)} instances, batch has {bsz}")
    idx_a, idx_b = [], []
    for b in range(bsz):
        if given is not None:
            ia, ib = (torch.as_tensor(t, dtype=torch.long) for t in given[b])
        else:
            ia = subsample_indices(int(pred.lengths[b]), resolution, generator)
            ib = subsample_indices(int(target.lengths[b]), resolution, generator)
        idx_a.append(ia)
        idx_b.append(ib)
    return pred.take(idx_a), target.take(idx_b)


# --------------------------------------------------------------------------------------------
# terms


def chamfer_mask_loss(vtx_xy: Tensor, target_xy: Tensor, target_lengths: Tensor | None = None,
                      chunk_size: int | None = None) -> Tensor:
    """Chamfer mask loss: mean_a min_t ‖a − t‖² + mean_t min_a ‖a − t‖² (float64 → float32).

    vtx_xy (B, V, 2) projected vertex xy (all vertices), target_xy (B, N, 2) target mask pixel
    positions (padded, lengths (B,)) -> (B,) float32.
    """
    d_at, d_ta, _, _ = chamfer_sq(vtx_xy.double(), target_xy.double(), len_y=target_lengths,
                                  chunk_size=chunk_size)
    return d_at.float().mean(1) + masked_mean(d_ta.float(), target_lengths)


def texture_chamfer_loss(pred: PointSet, target: PointSet, gate: GateParams = GateParams(), *,
                         symmetric: bool = False, resolution: int | None = 8192,
                         generator: torch.Generator | None = None, indices: IndexPairs | None = None,
                         chunk_size: int | None = None) -> Tensor:
    """Gated Chamfer texture loss in float64 after the official random subsampling.

    One-way (pixel term): mean_a min_b D. Symmetric (feature term): ½(mean_a min_b D + mean_b min_a D).
    indices: per instance (idx_a, idx_b) to use instead of drawing. Returns (B,) float64.
    """
    pred, target = _draw(pred, target, resolution, generator, indices)
    d_ab, d_ba, _, _ = gated_chamfer(pred.xy.double(), pred.values.double(), target.xy.double(),
                                     target.values.double(), gate, len_x=pred.lengths,
                                     len_y=target.lengths, both=symmetric, chunk_size=chunk_size)
    loss = masked_mean(d_ab, pred.lengths)
    if symmetric:
        loss = 0.5 * (loss + masked_mean(d_ba, target.lengths))
    return loss


def pixel_texture_loss(pred_image: Tensor, pred_mask: Tensor, target: PointSet,
                       config: LossConfig = LossConfig(), *, generator: torch.Generator | None = None,
                       indices: IndexPairs | None = None) -> Tensor:
    """Pixel-level Chamfer texture loss (one-way, float64).

    pred_image (B, 3, H, W) in [−1, 1], pred_mask (B, 1, H, W), target from :func:`get_vtx_color`
    -> (B,) float64.
    """
    pred = pixel_points(pred_image, pred_mask, config.mask_threshold)
    return texture_chamfer_loss(pred, target, config.gate, symmetric=False,
                                resolution=config.chamfer_resolution, generator=generator,
                                indices=indices, chunk_size=config.chunk_size)


def feat_texture_loss(pred_features: Tensor, pred_mask: Tensor, target: PointSet,
                      config: LossConfig = LossConfig(), *, generator: torch.Generator | None = None,
                      indices: IndexPairs | None = None) -> Tensor:
    """Feature-level Chamfer texture loss (symmetric, float64).

    pred_features (B, 256, h, w) = VGG relu3_1 of (pred_image, pred_mask), pred_mask
    (B, 1, H, W), target from :func:`feature_points` of the target -> (B,) float64.
    """
    pred = feature_points(pred_features, pred_mask, config.subpool_threshold, config.mask_threshold)
    return texture_chamfer_loss(pred, target, config.gate, symmetric=True,
                                resolution=config.chamfer_resolution, generator=generator,
                                indices=indices, chunk_size=config.chunk_size)


def pixel_level_loss(pred_image: Tensor, pred_mask: Tensor, targets: LossTargets, config: LossConfig, *,
                     generator: torch.Generator | None = None, indices: IndexPairs | None = None) -> Tensor:
    """The pixel-level texture term ``config.pixel_term`` (Chamfer or L1) -> (B,) float64."""
    if config.pixel_term == "pixel_l1":
        from .texture_terms import l1_texture_loss

        return l1_texture_loss(pred_image, targets.image, targets.mask)
    return pixel_texture_loss(pred_image, pred_mask, targets.points, config, generator=generator, indices=indices)


def feature_level_loss(pred_features: Tensor, pred_mask: Tensor, targets: LossTargets, config: LossConfig, *,
                       generator: torch.Generator | None = None, indices: IndexPairs | None = None) -> Tensor:
    """The feature-level texture term ``config.feature_term`` (Chamfer, perceptual or contextual) of
    pred_features (B, 256, h, w) -> (B,) float64."""
    from . import texture_terms

    if config.feature_term == "feat_perceptual":
        cells = texture_terms.grid_mask(targets.mask, pred_features.shape[-2:], config.subpool_threshold)
        return texture_terms.perceptual_loss(pred_features, targets.features, cells)
    if config.feature_term == "feat_contextual":
        pred = feature_points(pred_features, pred_mask, config.subpool_threshold, config.mask_threshold)
        return texture_terms.contextual_loss(pred, targets.feat_points, config.contextual_h, config.contextual_eps)
    return feat_texture_loss(pred_features, pred_mask, targets.feat_points, config, generator=generator,
                             indices=indices)


def nll_loss(z: Tensor) -> Tensor:
    """Gaussian prior on the latent: z (B, L) -> mean_i z_i²/2 (B,)."""
    return (z.pow(2) / 2).mean(dim=1)


def flat_loss(normals: Tensor, face_adjacency: Tensor) -> Tensor:
    """ConvMesh flatness per instance: (F/2)·Σ_{i<3} mean_f (⟨n_f, n_{ff[f,i]}⟩ − 1)².

    normals (B, F, 3) unit face normals, face_adjacency (F, 3) long -> (B,). The official
    ``loss_flat`` is the batch mean of this.
    """
    nf = normals.shape[1]
    neigh = normals[:, face_adjacency.long()]  # (B, F, 3 neighbours, 3)
    cos = (normals.unsqueeze(2) * neigh).sum(-1)  # (B, F, 3)
    return (nf / 2) * (cos - 1).pow(2).mean(dim=1).sum(dim=1)


# --------------------------------------------------------------------------------------------
# criterion


def prepare_targets(image: Tensor, mask: Tensor, config: LossConfig = LossConfig(), vgg=None) -> LossTargets:
    """Target point sets, computed once per instance (they do not change during inversion).

    image (B, 3, H, W) in [−1, 1] (the official ``(img − 0.5)·2`` of the full crop, not masked),
    mask (B, 1, H, W) {0, 1}; vgg: :class:`.vgg.VGGRelu31`, needed when a feature-level texture
    term is on (``config.feature_term``).
    """
    mask = _mask4(mask).to(image.dtype)
    points = get_vtx_color(mask, image, config.mask_threshold)
    feat_points = features = None
    if config.feature_term is not None:
        if vgg is None:
            raise ValueError("the feature texture loss needs the VGG network (vgg=...) or feat_loss=False")
        with torch.no_grad():
            features = vgg(image, mask)
            feat_points = feature_points(features, mask, config.subpool_threshold, config.mask_threshold)
        if config.feature_term != "feat_perceptual":
            features = None
    return LossTargets(image=image, mask=mask, points=points, feat_points=feat_points, features=features)


def criterion(pred_image: Tensor, pred_mask: Tensor, targets: LossTargets, *, vtx_xy: Tensor | None = None,
              z: Tensor | None = None, config: LossConfig = LossConfig(), vgg=None,
              pred_features: Tensor | None = None, flat: Tensor | Callable[[], Tensor] | None = None,
              generator: torch.Generator | None = None,
              indices: Mapping[str, IndexPairs] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The official ``criterion`` per instance.

    pred_image (B, 3, H, W) rendered image in [−1, 1]; pred_mask (B, 1, H, W) hard mask;
    targets from :func:`prepare_targets`; vtx_xy (B, V, 2) projected vertex xy (mask term);
    z (B, L) latent (nll term); vgg or precomputed pred_features (B, 256, H/4, W/4) (feat term);
    flat: (B,) values or a callable returning them (flat term, if ``config.mesh_regularization``);
    generator: CPU generator for the subsampling (None = torch's default, as official);
    indices: {"pixel" | "feat": [(idx_a, idx_b) per instance]} to replay recorded draws.

    Returns ``(total (B,), terms)``; terms holds the unweighted (B,) value of every enabled term
    ("mask", "pixel" | "pixel_l1", "feat" | "feat_perceptual" | "feat_contextual" (``texture_loss``),
    "nll", "flat") and "iou" (B,) (detached, logged, not optimised).
    ``total`` is float64 when a texture term is on. Optimise ``total.sum()``.
    """
    indices = indices or {}
    pred_mask = _mask4(pred_mask)
    terms: dict[str, Tensor] = {}
    total = None

    def add(name: str, value: Tensor, weight: float) -> None:
        nonlocal total
        terms[name] = value
        total = weight * value if total is None else total + weight * value

    if config.mask_loss:
        if vtx_xy is None:
            raise ValueError("the mask term needs vtx_xy (B, V, 2)")
        add("mask", chamfer_mask_loss(vtx_xy, targets.points.xy, targets.points.lengths,
                                      config.chunk_size), config.mask_loss_weight)
    if config.pixel_term is not None:
        add(config.pixel_term, pixel_level_loss(pred_image, pred_mask, targets, config, generator=generator,
                                                indices=indices.get("pixel")), config.pixel_loss_weight)
    if config.feature_term is not None:
        if targets.feat_points is None:
            raise ValueError("targets have no feature points: prepare_targets(..., vgg=...) with feat_loss")
        if pred_features is None:
            if vgg is None:
                raise ValueError("the feature texture loss needs vgg=... or pred_features=...")
            pred_features = vgg(pred_image, pred_mask)
        add(config.feature_term, feature_level_loss(pred_features, pred_mask, targets, config, generator=generator,
                                                    indices=indices.get("feat")), config.feat_loss_weight)
    if config.nll_loss:
        if z is None:
            raise ValueError("the nll term needs z (B, L)")
        add("nll", nll_loss(z), config.nll_loss_weight)
    if config.mesh_regularization:
        if flat is None:
            raise ValueError("mesh_regularization needs flat=(B,) values or a callable returning them")
        value = flat() if callable(flat) else flat
        value = torch.as_tensor(value)
        if value.dim() == 0:
            if pred_image.shape[0] != 1:
                raise ValueError("flat must give one value per instance (B,) for a batch")
            value = value.reshape(1)
        add("flat", value, config.flat_loss_weight)
    if total is None:
        total = pred_image.new_zeros(pred_image.shape[0])
    with torch.no_grad():
        terms["iou"] = mask_iou(targets.mask, pred_mask.detach())
    return total, terms
