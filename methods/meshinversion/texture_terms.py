"""Pixel-aligned and contextual texture terms, the alternatives of the supplement's texture-loss
ablation (Fig. 2) to MeshInversion's Chamfer terms (``LossConfig.texture_loss``).

Every term returns one value per instance, shape (B,), float64; instances with different numbers of
mask pixels or feature cells are handled per instance (:class:`.losses.PointSet` lengths, or masks).

* :func:`l1_texture_loss` — pixel-aligned L1 on masked RGB: over the target mask pixels, the mean
  over pixels and channels of |I_pred − I_target| (both in [−1, 1]; the render's background is 0).
* :func:`perceptual_loss` — pixel-aligned distance of VGG19 relu3_1 features with the feature Chamfer
  term's preprocessing: L2-normalised features, on the feature-grid cells of the target's pooled mask
  (``avg_pool(mask, s) ≥ subpool_threshold``): the mean over those cells of ‖f̂_pred − f̂_target‖².
* :func:`contextual_loss` — Mechrez, Talmi & Zelnik-Manor, "The Contextual Loss for Image
  Transformation with Non-Aligned Data" (ECCV 2018), on the feature Chamfer term's point sets
  (normalised relu3_1 features at the pooled-mask cells of prediction x_i and target y_j): both centred
  by the target's mean feature and re-normalised, d_ij = 1 − cos(x_i, y_j), d̃_ij = d_ij / (min_k d_ik
  + ε), w_ij = exp((1 − d̃_ij) / h), CX_ij = w_ij / Σ_k w_ik, CX = (1/N_y) Σ_j max_i CX_ij,
  loss = −log CX. The paper's h = 0.5 and ε = 1e-5 are the defaults (``contextual_h``,
  ``contextual_eps``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def l1_texture_loss(pred_image: Tensor, target_image: Tensor, target_mask: Tensor) -> Tensor:
    """pred_image, target_image (B,3,H,W) in [−1, 1], target_mask (B,1,H,W) {0,1} -> (B,) float64."""
    m = target_mask.double()
    diff = (pred_image.double() - target_image.double()).abs() * m
    return diff.sum((1, 2, 3)) / (3 * m.sum((1, 2, 3))).clamp_min(1)


def grid_mask(mask: Tensor, grid: tuple[int, int], subpool_threshold: float) -> Tensor:
    """(B,1,H,W) mask -> (B,1,h,w) {0,1}: the feature Chamfer term's pooled cells (``≥ subpool_threshold``)."""
    sub = mask.shape[-2] // grid[0]
    return (F.avg_pool2d(mask.detach().double(), sub) >= subpool_threshold).double()


def perceptual_loss(pred_features: Tensor, target_features: Tensor, target_grid_mask: Tensor) -> Tensor:
    """pred/target features (B,C,h,w) (relu3_1), target_grid_mask (B,1,h,w) -> (B,) float64."""
    p = F.normalize(pred_features.double(), dim=1, eps=1e-12)
    t = F.normalize(target_features.double(), dim=1, eps=1e-12)
    m = target_grid_mask.double()
    return (((p - t) ** 2).sum(1, keepdim=True) * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1)


def contextual_one(x: Tensor, y: Tensor, h: float = 0.5, eps: float = 1e-5) -> Tensor:
    """Contextual loss of point sets x (N,C) (prediction) and y (M,C) (target) -> () float64."""
    x, y = x.double(), y.double()
    mu = y.mean(0, keepdim=True)
    xn = F.normalize(x - mu, dim=1, eps=1e-12)
    yn = F.normalize(y - mu, dim=1, eps=1e-12)
    d = 1 - xn @ yn.T  # (N,M)
    d_tilde = d / (d.min(dim=1, keepdim=True).values + eps)
    w = torch.exp((1 - d_tilde) / h)
    cx = w / w.sum(dim=1, keepdim=True)
    return -torch.log(cx.max(dim=0).values.mean())


def contextual_loss(pred, target, h: float = 0.5, eps: float = 1e-5) -> Tensor:
    """Per instance :func:`contextual_one` of two :class:`.losses.PointSet` (values = features) -> (B,)."""
    out = []
    for b in range(len(pred)):
        _, x = pred.instance(b)
        _, y = target.instance(b)
        if len(x) == 0 or len(y) == 0:  # nothing rendered (or no target cell): CX is undefined; a constant
            out.append(0 * pred.values[b].double().sum() + math.log(max(len(y), 1)))  # (no texture gradient)
            continue
        out.append(contextual_one(x, y, h, eps))
    return torch.stack(out)
