"""Test-time optimisation (TTO) of a CMR-style network: the MeshInversion supplement's recipe.

Per instance (batched: B instances are optimised together and each one's result equals a run on
its own, because the objective is the *sum* of per-instance losses, every term is a per-instance
mean, BatchNorm runs on its running statistics and Adam is elementwise):

1. one encoder pass gives the latent z₀ (200-d) and the camera head's camera c₀ = (s, t, q);
2. z, s, t, q are free, the network weights are frozen (eval mode, ``requires_grad=False``);
3. every step decodes V = mean + sym(shape(z)) and the texture flow (colours sampled from the input
   crop in [0,1]), renders the soft silhouette and the textured image, and evaluates

   * CMR: 2 · MSE(silhouette, mask) + 0.5 · perc(render·mask, image·mask)
   * UMR: 2.5 · (1 − soft IoU(silhouette, mask)) + 3.0 · perc(render·silhouette, image·mask)

   with perc the uncalibrated AlexNet distance (:mod:`bench.methods.cmr.perceptual`);
4. two Adam optimisers (betas (0, 0.99), eps 1e-8): z with a constant lr (5e-3); (s, t, q) with the
   stage lr ``pose_lrs[k]`` written into the param group before each step, the ``iterations`` split
   evenly over the stages (200 = 4 × 50).

Open choices (see ``shared/spec/baselines.md`` §4): ``renormalize_quat`` (q/|q| inside the projection,
default True), ``detach_texture_geometry`` (the textured render sees detached vertices and camera,
as in training; default True).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.methods.cmr.nets import sample_texture
from bench.methods.cmr.rendering import pose, render_views_for_loss, resize_image


@dataclass
class TTOSettings:
    """Hyper-parameters of :func:`run_tto` (defaults = the supplement's CMR recipe)."""

    iterations: int = 200
    latent_lr: float = 5e-3
    pose_lrs: tuple = (1e-2, 5e-3, 1e-3, 5e-4)
    betas: tuple = (0.0, 0.99)
    render_size: int = 256
    loss: str = "cmr"               # "cmr" | "umr"
    mask_weight: float = 2.0
    texture_weight: float = 0.5
    renormalize_quat: bool = True
    detach_texture_geometry: bool = True
    sigmainv: float = 7000.0


def stage_of(step: int, iterations: int, stages: int) -> int:
    """Stage index of ``step``: the iterations are split evenly (remainder to the last stages)."""
    return min(stages - 1, step * stages // max(1, iterations))


@dataclass
class Prepared:
    """Per-batch constants of the objective (targets at the render size)."""

    image01: torch.Tensor          # (B,3,H,W) full-resolution input (texture source)
    image_r: torch.Tensor          # (B,3,R,R) input at the render size
    mask_r: torch.Tensor           # (B,R,R) target mask at the render size
    state: dict = field(default_factory=dict)   # model extras (e.g. UMR's VAE noise)


def prepare(image01: torch.Tensor, mask: torch.Tensor, render_size: int, state: dict | None = None) -> Prepared:
    size = (render_size, render_size)
    return Prepared(image01=image01, image_r=resize_image(image01, size),
                    mask_r=resize_image(mask.unsqueeze(1).to(image01.dtype), size)[:, 0], state=state or {})


def objective(net, perceptual, latent: torch.Tensor, camera: torch.Tensor, data: Prepared,
              st: TTOSettings) -> tuple[torch.Tensor, dict]:
    """Per-instance loss (B,) and its terms (each (B,), detached)."""
    R = st.render_size
    size = (R, R)
    verts = net.decode_shape(latent, data.state)
    posed = pose(verts, camera, st.renormalize_quat)
    flow = net.texture_flow(latent)
    tex = sample_texture(data.image01, flow, net.texture_align_corners)
    image, _, sil = render_views_for_loss(posed, net.faces, tex, size, st.sigmainv, st.detach_texture_geometry)
    m = data.mask_r
    if st.loss == "cmr":
        mask_term = ((sil - m) ** 2).flatten(1).mean(dim=1)
        tex_term = perceptual(image * m.unsqueeze(1), data.image_r * m.unsqueeze(1))
    elif st.loss == "umr":
        inter = (sil * m).flatten(1).sum(dim=1)
        union = (sil + m - sil * m).flatten(1).sum(dim=1)
        mask_term = 1.0 - inter / (union + 1e-6)
        tex_term = perceptual(image * sil.unsqueeze(1), data.image_r * m.unsqueeze(1))
    else:
        raise ValueError(f"unknown TTO loss {st.loss!r}")
    total = st.mask_weight * mask_term + st.texture_weight * tex_term
    return total, {"mask": mask_term.detach(), "texture": tex_term.detach()}


def run_tto(net, perceptual, data: Prepared, latent0: torch.Tensor, camera0: torch.Tensor,
            st: TTOSettings) -> dict:
    """Optimise latent and camera; the network is left untouched.

    Args:
        net: CMR/UMR mesh net (eval mode, frozen).
        perceptual: per-image distance (B,) of two (B,3,R,R) [0,1] images.
        data: `Prepared` targets.
        latent0: (B,D) initial latent; camera0: (B,7) initial camera.
    Returns:
        dict: ``latent`` (B,D), ``camera`` (B,7) (q normalised when ``renormalize_quat``), ``losses``
        (iterations, B) per-step per-instance objective (evaluated before each step), ``terms``
        {name: (iterations, B)}.
    """
    z = latent0.detach().clone().requires_grad_(True)
    s = camera0[:, :1].detach().clone().requires_grad_(True)
    t = camera0[:, 1:3].detach().clone().requires_grad_(True)
    q = camera0[:, 3:7].detach().clone().requires_grad_(True)
    betas = tuple(float(b) for b in st.betas)
    opt_z = torch.optim.Adam([z], lr=float(st.latent_lr), betas=betas, eps=1e-8)
    opt_pose = torch.optim.Adam([s, t, q], lr=float(st.pose_lrs[0]), betas=betas, eps=1e-8)
    losses, terms = [], {"mask": [], "texture": []}
    stages = len(st.pose_lrs)
    for step in range(int(st.iterations)):
        for group in opt_pose.param_groups:
            group["lr"] = float(st.pose_lrs[stage_of(step, st.iterations, stages)])
        opt_z.zero_grad(set_to_none=True)
        opt_pose.zero_grad(set_to_none=True)
        camera = torch.cat([s, t, q], dim=1)
        per_instance, parts = objective(net, perceptual, z, camera, data, st)
        per_instance.sum().backward()
        opt_z.step()
        opt_pose.step()
        losses.append(per_instance.detach())
        for k, v in parts.items():
            terms[k].append(v)
    camera = torch.cat([s, t, q], dim=1).detach()
    if st.renormalize_quat:
        camera = torch.cat([camera[:, :3], camera[:, 3:] / camera[:, 3:].norm(dim=1, keepdim=True).clamp_min(1e-12)], 1)
    B = latent0.shape[0]
    empty = latent0.new_zeros(0, B)
    return {"latent": z.detach(), "camera": camera,
            "losses": torch.stack(losses) if losses else empty,
            "terms": {k: (torch.stack(v) if v else empty) for k, v in terms.items()}}
