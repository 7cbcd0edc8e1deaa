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

   with perc the uncalibrated AlexNet distance (:mod:`bench.methods.cmr.perceptual`) and the soft
   IoU the project's one IoU (:func:`bench.metrics.iou.mask_iou`; UMR's own code adds 1e-6 to the
   union instead of guarding it, a relative difference below 1e-8 for any non-empty mask);
4. two Adam optimisers (betas (0, 0.99), eps 1e-8): z with a constant lr (5e-3); (s, t, q) with the
   stage lr ``pose_lrs[k]`` written into the param group before each step, the ``iterations`` split
   evenly over the stages (200 = 4 × 50).

:class:`TTOSettings` is the one table of these hyper-parameters: the ``cmr-tto`` / ``umr-tto``
configs derive from it. Open choices (see ``shared/spec/baselines.md`` §4): ``renormalize_quat``,
``detach_texture_geometry``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.config import check_fields, option
from bench.methods.cmr.nets import sample_texture
from bench.methods.cmr.rendering import pose, render_views_for_loss, resize_image, unit_quaternion_camera
from bench.metrics.iou import mask_iou

#: the objectives :func:`run_tto` knows (a property of the method, not a config option)
TTO_LOSSES = ("cmr", "umr")
#: Adam epsilon of both optimisers (torch's default, as in the official code)
ADAM_EPS = 1e-8


@dataclass
class TTOSettings:
    """Hyper-parameters of :func:`run_tto` (defaults = the supplement's CMR recipe)."""

    iterations: int = option(200, ge=0, help="Adam steps in total, split evenly over the pose_lrs stages "
                                       "(supplement: 200 = 4 stages x 50)")
    latent_lr: float = option(5e-3, gt=0, help="constant Adam learning rate of the latent (supplement: 5e-3)")
    pose_lrs: list[float] = option([1e-2, 5e-3, 1e-3, 5e-4], gt=0, min_length=1,
                                   help="Adam learning rate of the camera (s, t, q), one entry per stage "
                                        "(supplement: 1e-2, 5e-3, 1e-3, 5e-4)")
    betas: list[float] = option([0.0, 0.99], ge=0, lt=1, length=2,
                                help="Adam (beta1, beta2) of both optimisers (supplement: 0, 0.99)")
    render_size: int = option(256, ge=32, help="side in pixels of the loss renders, >= 32 for the AlexNet of the "
                                        "perceptual term (the output render is at the sample's size)")
    mask_weight: float = option(2.0, ge=0, help="weight of the mask term (CMR: MSE of the soft silhouette; "
                                          "CMR training weight 2)")
    texture_weight: float = option(0.5, ge=0, help="weight of the perceptual texture term (CMR training weight 0.5)")
    renormalize_quat: bool = option(True, help="project with q/|q| (open choice, the supplement does not say; "
                                               "false = MeshInversion's raw quaternion)")
    detach_texture_geometry: bool = option(True, help="the textured loss render sees detached vertices and "
                                                      "camera, as in CMR/UMR training (open choice)")
    sigmainv: float = option(7000.0, gt=0, help="sharpness of the DIB-R soft silhouette of the mask term")

    def __post_init__(self):
        check_fields(self)  # types and the ranges stated in option(...)


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


def loss_terms(loss: str, perceptual, image: torch.Tensor, silhouette: torch.Tensor,
               data: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
    """The (mask, texture) terms (each (B,)) of objective ``loss`` for renders at the render size.

    Args:
        loss: ``cmr`` (MSE of the silhouette; texture compared inside the target mask) or ``umr``
            (1 − soft IoU; the render masked by its own silhouette, the image by the target mask).
        image: (B,3,R,R) textured render; silhouette: (B,R,R) soft silhouette.
    """
    target = data.mask_r
    if loss == "cmr":
        mask_term = ((silhouette - target) ** 2).flatten(1).mean(dim=1)
        render_mask = target
    elif loss == "umr":
        mask_term = 1.0 - mask_iou(target, silhouette).to(silhouette.dtype)
        render_mask = silhouette
    else:
        raise ValueError(f"unknown TTO loss {loss!r}; use one of {TTO_LOSSES}")
    texture_term = perceptual(image * render_mask.unsqueeze(1), data.image_r * target.unsqueeze(1))
    return mask_term, texture_term


def objective(net, perceptual, latent: torch.Tensor, camera: torch.Tensor, data: Prepared,
              settings: TTOSettings, loss: str = "cmr") -> tuple[torch.Tensor, dict]:
    """Per-instance loss (B,) and its terms (each (B,), detached)."""
    size = (settings.render_size, settings.render_size)
    posed = pose(net.decode_shape(latent, data.state), camera, settings.renormalize_quat)
    texture = sample_texture(data.image01, net.texture_flow(latent), net.texture_align_corners)
    image, _, silhouette = render_views_for_loss(posed, net.faces, texture, size, settings.sigmainv,
                                                 settings.detach_texture_geometry)
    mask_term, texture_term = loss_terms(loss, perceptual, image, silhouette, data)
    total = settings.mask_weight * mask_term + settings.texture_weight * texture_term
    return total, {"mask": mask_term.detach(), "texture": texture_term.detach()}


def _free_camera_parts(camera0: torch.Tensor) -> list[torch.Tensor]:
    """(B,7) -> leaf tensors s (B,1), t (B,2), q (B,4) requiring grad."""
    return [camera0[:, a:b].detach().clone().requires_grad_(True) for a, b in ((0, 1), (1, 3), (3, 7))]


def run_tto(net, perceptual, data: Prepared, latent0: torch.Tensor, camera0: torch.Tensor,
            settings: TTOSettings, loss: str = "cmr") -> dict:
    """Optimise latent and camera; the network is left untouched.

    Args:
        net: CMR/UMR mesh net (eval mode, frozen).
        perceptual: per-image distance (B,) of two (B,3,R,R) [0,1] images.
        data: `Prepared` targets.
        latent0: (B,D) initial latent; camera0: (B,7) initial camera.
        settings: the hyper-parameters (a `TTOSettings`, e.g. the ``cmr-tto`` config itself).
        loss: the objective, one of `TTO_LOSSES`.
    Returns:
        dict: ``latent`` (B,D), ``camera`` (B,7) (q normalised when ``renormalize_quat``), ``losses``
        (iterations, B) per-step per-instance objective (evaluated before each step), ``terms``
        {name: (iterations, B)}.
    """
    z = latent0.detach().clone().requires_grad_(True)
    pose_parts = _free_camera_parts(camera0)
    betas = tuple(float(b) for b in settings.betas)
    opt_latent = torch.optim.Adam([z], lr=float(settings.latent_lr), betas=betas, eps=ADAM_EPS)
    opt_pose = torch.optim.Adam(pose_parts, lr=float(settings.pose_lrs[0]), betas=betas, eps=ADAM_EPS)
    losses, terms = [], {"mask": [], "texture": []}
    for step in range(int(settings.iterations)):
        stage = stage_of(step, settings.iterations, len(settings.pose_lrs))
        for group in opt_pose.param_groups:
            group["lr"] = float(settings.pose_lrs[stage])
        opt_latent.zero_grad(set_to_none=True)
        opt_pose.zero_grad(set_to_none=True)
        per_instance, parts = objective(net, perceptual, z, torch.cat(pose_parts, dim=1), data, settings, loss)
        per_instance.sum().backward()
        opt_latent.step()
        opt_pose.step()
        losses.append(per_instance.detach())
        for k, v in parts.items():
            terms[k].append(v)
    camera = torch.cat(pose_parts, dim=1).detach()
    if settings.renormalize_quat:
        camera = unit_quaternion_camera(camera)
    empty = latent0.new_zeros(0, latent0.shape[0])
    return {"latent": z.detach(), "camera": camera,
            "losses": torch.stack(losses) if losses else empty,
            "terms": {k: (torch.stack(v) if v else empty) for k, v in terms.items()}}
