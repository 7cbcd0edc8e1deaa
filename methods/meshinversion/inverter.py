"""MeshInversion's test-time inversion (``mi:lib/mesh_inversion.py init_z`` + ``run``), batched.

:class:`MeshInverter` fits a generator latent ``z`` and a camera (scale, translation, raw
quaternion) to B target images/masks at once:

1. **Latent initialisation**: ``select_num`` candidates ``z ~ N(0, I)`` per instance are scored with
   the full criterion at the initial camera (no gradients), ``init_batch_size`` rows per forward
   pass; the lowest score wins. The official code evaluates the NLL prior on the *current* latent
   instead of the candidate — a constant offset — so by default (``init_with_prior=False``) the score
   leaves the prior out, which selects exactly the official candidate.
2. **Optimisation**: stages of Adam steps (betas (0, 0.99)) on the latent and on the pose with the
   per-stage learning rates. The B instances are optimised together: the loss is the *sum* of the
   per-instance losses and every parameter row belongs to one instance, so each instance's gradient
   and Adam update are exactly its own (Adam is elementwise) — a batch of B gives the same result as
   B separate runs, up to floating-point differences of batched kernels.

Randomness is per instance: candidates and Chamfer subsamples come from generators seeded from the
instance's seed, never from the global RNG, so results do not depend on batching, order or sharding.

Failures are per instance: a non-finite loss marks that instance failed (its parameters are frozen
from then on) while the others go on.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .config import InversionConfig
from .render import RenderOutput, render

__all__ = ["InversionCriterion", "InversionResult", "InversionState", "MeshInverter", "RowByRow", "instance_seed",
           "mask_iou", "resolve_batch_invariant"]


def instance_seed(seed: int, key: str) -> int:
    """A stable 63-bit seed from the base ``seed`` and an instance key (e.g. the sample id)."""
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def mask_iou(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Official IoU ``Σ(t·p)/Σ(t + p − t·p)`` per instance; (B,1,H,W) or (B,H,W) -> (B,)."""
    t = target.reshape(target.shape[0], -1).float()
    p = pred.reshape(pred.shape[0], -1).float()
    inter = (t * p).sum(1)
    return inter / (t + p - t * p).sum(1).clamp_min(1e-12)


def resolve_batch_invariant(config: InversionConfig, device) -> bool:
    """``config.batch_invariant``, with None = True on CPU and False on CUDA."""
    if config.batch_invariant is None:
        return torch.device(device).type != "cuda"
    return bool(config.batch_invariant)


class RowByRow(torch.nn.Module):
    """Wrap a module so that a batch is processed one row at a time (outputs concatenated).

    CPU convolution kernels depend on the batch size, so a row computed inside a batch differs
    from the same row computed alone by ~1e-6; the inversion (Adam with beta1 = 0 normalises each
    gradient, the rasteriser's depth test is discontinuous) amplifies that into visible
    differences. Row-by-row evaluation makes a batch bitwise equal to separate runs.
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        n = args[0].shape[0]
        if n == 1:
            return self.module(*args)
        outs = [self.module(*[a[i:i + 1] for a in args]) for i in range(n)]
        return torch.cat(outs)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class InversionState:
    """The live optimisation variables, handed to callbacks (rows = instances).

    Attributes:
        step: 0-based global step about to run (or just run).
        z: (B,64) leaf; scale (B,1), translation (B,2), rotation (B,4) leaves.
        z_optim, pose_optim: the two Adam optimisers.
        lr_z, lr_pose: learning rates of this step.
    """

    step: int
    z: torch.Tensor
    scale: torch.Tensor
    translation: torch.Tensor
    rotation: torch.Tensor
    z_optim: torch.optim.Optimizer
    pose_optim: torch.optim.Optimizer
    lr_z: float = 0.0
    lr_pose: float = 0.0

    def camera(self) -> torch.Tensor:
        """(B,7) ``[s, tx, ty, qw, qx, qy, qz]`` (detached copy)."""
        return torch.cat([self.scale, self.translation, self.rotation], dim=1).detach().clone()


@dataclass
class InversionResult:
    """Outputs of :meth:`MeshInverter.invert` for a batch of B instances.

    Attributes:
        latent: (B,64) final latent; camera: (B,7) final camera.
        texture: (B,3,R,R) [-1,1]; mesh_map: (B,3,32,32); vertices: (B,V,3) object frame.
        image: (B,3,H,W) input-view render in [-1,1] (background 0); mask: (B,1,H,W) hard mask.
            These come from the final latent/camera, or (``stale_outputs``) from the last forward
            pass, one Adam step before the returned latent/camera, as the official code saves them.
        losses: per instance, the total loss of every optimisation step (before its update).
        final_terms: per instance, the loss terms of the last optimisation step.
        init_scores: (B,S) candidate scores; chosen: (B,) index of the chosen candidate.
        iou_init: (B,) IoU at the chosen candidate and the initial camera (fit resolution).
        iou_fit: (B,) IoU of the returned mask against the fit target.
        errors: per instance None or a failure message.
        timings: batch wall-clock seconds ``init``, ``optimize``, ``total``.
    """

    latent: torch.Tensor
    camera: torch.Tensor
    texture: torch.Tensor
    mesh_map: torch.Tensor
    vertices: torch.Tensor
    image: torch.Tensor
    mask: torch.Tensor
    losses: list[list[float]]
    final_terms: list[dict[str, float]]
    init_scores: torch.Tensor
    chosen: torch.Tensor
    iou_init: torch.Tensor
    iou_fit: torch.Tensor
    errors: list[Optional[str]]
    timings: dict[str, float] = field(default_factory=dict)


# Callback signatures: before_step(state) may overwrite parameter values (teacher forcing);
# after_backward(state, totals (B,), terms {name: (B,)}) may read gradients.
BeforeStep = Callable[[InversionState], None]
AfterBackward = Callable[[InversionState, torch.Tensor, dict], None]


class MeshInverter:
    """Batched MeshInversion inversion.

    Args:
        generator: module, ``forward(z (B,64), class_ids (B,)) -> (texture, mesh_map)``; frozen.
        template: :class:`bench.render.uvsphere.UVSphereTemplate` on ``device``.
        criterion: a :class:`bench.methods.meshinversion.losses` criterion (see :meth:`_losses`).
        config: :class:`InversionConfig`.
        device: torch device.
    """

    def __init__(self, generator, template, criterion, config: InversionConfig, device="cpu"):
        self.generator = generator
        self.template = template
        self.criterion = criterion
        self.config = config
        self.device = torch.device(device)
        #: Adam state carried to the next instance (``carry_optimizer_state``).
        self._carried: Optional[dict] = None

    # ------------------------------------------------------------------ building blocks
    @property
    def batch_invariant(self) -> bool:
        """Run the convolutional networks one row at a time (see ``InversionConfig.batch_invariant``)."""
        return resolve_batch_invariant(self.config, self.device)

    def generate(self, z: torch.Tensor, class_ids: torch.Tensor):
        """Generator forward; row by row when batch-invariant (bitwise equal to separate runs)."""
        if self.batch_invariant and z.shape[0] > 1:
            outs = [self.generator(z[i:i + 1], class_ids[i:i + 1]) for i in range(z.shape[0])]
            return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        return self.generator(z, class_ids)

    def forward(self, z, class_ids, scale, translation, rotation, size):
        """Generator + render at ``size`` (int or (H, W)). Returns (texture, mesh_map, RenderOutput)."""
        height, width = (size, size) if isinstance(size, int) else size
        texture, mesh_map = self.generate(z, class_ids)
        out = render(self.template, texture, mesh_map, scale, translation, rotation, height, width)
        return texture, mesh_map, out

    def _losses(self, out: RenderOutput, z: torch.Tensor, target, rows: torch.Tensor,
                generators: list[torch.Generator], with_prior: bool = True):
        """Per-row criterion: returns (total (N,), terms {name: (N,)}).

        ``rows`` (N,) selects the target instance of every row; ``generators`` gives each row its
        own RNG for the Chamfer subsampling.
        """
        flat = None
        if self.config.mesh_regularization:
            flat = lambda: self.criterion.flat(self.template, out.vertices)  # noqa: E731
        return self.criterion(out.image, out.mask, out.vtx_xy, z, target, rows, generators,
                              with_prior=with_prior, flat=flat)

    def prepare_target(self, image01: torch.Tensor, mask: torch.Tensor):
        """Target images (B,3,H,W) in [0,1] and masks (B,H,W) -> criterion target."""
        image = (image01.to(self.device, torch.float32) - 0.5) * 2
        mask = mask.to(self.device, torch.float32).reshape(image.shape[0], 1, *image.shape[-2:])
        return self.criterion.prepare_target(image, mask)

    def _row_generator(self, seed: int, phase: int, index: int) -> torch.Generator:
        # a fresh CPU generator per (instance, phase, index): independent of batching and order
        return torch.Generator().manual_seed((seed + 1_000_003 * phase + 7919 * index) % (1 << 63))

    # ------------------------------------------------------------------ init_z
    @torch.no_grad()
    def initial_latent(self, target, target_mask, class_ids, camera, seeds: list[int],
                       candidates: Optional[torch.Tensor] = None):
        """Choose the starting latent of every instance among ``select_num`` random candidates.

        Args:
            target: criterion target of the B instances; target_mask (B,1,H,W).
            class_ids (B,), camera (B,7) initial cameras, seeds: B instance seeds.
            candidates: optional (B,S,64) candidate latents (default: ``select_num`` draws from
                each instance's own generator).
        Returns:
            z0 (B,64), scores (B,S), chosen (B,), iou (B,S) of every candidate.
        """
        cfg = self.config
        B = class_ids.shape[0]
        if candidates is None:
            candidates = torch.stack([
                torch.randn(cfg.select_num, self.generator.latent_dim if hasattr(self.generator, "latent_dim") else 64,
                            generator=torch.Generator().manual_seed(s)) for s in seeds])
        candidates = candidates.to(self.device, torch.float32)
        S = candidates.shape[1]
        size = target_mask.shape[-1]
        flat_z = candidates.reshape(B * S, -1)
        inst = torch.arange(B, device=self.device).repeat_interleave(S)
        cand = torch.arange(S).repeat(B)
        scores = torch.empty(B * S, dtype=torch.float64)
        ious = torch.empty(B * S, dtype=torch.float32)
        for start in range(0, B * S, cfg.init_batch_size):
            sl = slice(start, min(start + cfg.init_batch_size, B * S))
            rows = inst[sl]
            scale, trans, rot = camera[rows, :1], camera[rows, 1:3], camera[rows, 3:7]
            _, _, out = self.forward(flat_z[sl], class_ids[rows], scale, trans, rot, size)
            gens = [self._row_generator(seeds[int(b)], 1, int(k)) for b, k in zip(rows.tolist(), cand[sl].tolist())]
            total, _ = self._losses(out, flat_z[sl], target, rows, gens, with_prior=cfg.init_with_prior)
            scores[sl] = total.detach().double().cpu()
            ious[sl] = mask_iou(target_mask[rows], out.mask).cpu()
        scores = scores.reshape(B, S)
        ious = ious.reshape(B, S)
        # a non-finite score never wins (NaN sorts as +inf here)
        chosen = torch.nan_to_num(scores, nan=float("inf")).argmin(dim=1)
        z0 = candidates[torch.arange(B, device=self.device), chosen.to(self.device)]
        return z0, scores, chosen, ious

    # ------------------------------------------------------------------ optimisers
    def _make_optimizers(self, z, scale, translation, rotation):
        cfg = self.config
        z_optim = torch.optim.Adam([z], lr=cfg.z_lrs[0], betas=cfg.betas, eps=cfg.adam_eps)
        pose_params = [scale, translation, rotation] if cfg.update_pose else []
        pose_optim = torch.optim.Adam(pose_params or [torch.zeros(1, requires_grad=True)], lr=cfg.pose_lrs[0],
                                      betas=cfg.betas, eps=cfg.adam_eps)
        if cfg.carry_optimizer_state and self._carried is not None:
            for optim, params, key in ((z_optim, [z], "z"), (pose_optim, pose_params, "pose")):
                for p, saved in zip(params, self._carried[key]):
                    optim.state[p] = {
                        "step": saved["step"].clone(),
                        "exp_avg": saved["exp_avg"].to(p.device).expand_as(p).clone(),
                        "exp_avg_sq": saved["exp_avg_sq"].to(p.device).expand_as(p).clone(),
                    }
        return z_optim, pose_optim, pose_params

    def _save_carry(self, z_optim, pose_optim, z, pose_params, row: int) -> None:
        """Keep the Adam state of instance ``row`` (the last one processed) for the next instance."""
        saved = {}
        for optim, params, key in ((z_optim, [z], "z"), (pose_optim, pose_params, "pose")):
            entries = []
            for p in params:
                st = optim.state.get(p)
                if not st:
                    return
                entries.append({"step": st["step"].detach().clone(),
                                "exp_avg": st["exp_avg"][row:row + 1].detach().clone(),
                                "exp_avg_sq": st["exp_avg_sq"][row:row + 1].detach().clone()})
            saved[key] = entries
        self._carried = saved

    def reset_optimizer_state(self) -> None:
        """Forget the carried Adam state (only used with ``carry_optimizer_state``)."""
        self._carried = None

    # ------------------------------------------------------------------ the whole inversion
    def invert(self, images01: torch.Tensor, masks: torch.Tensor, class_ids: torch.Tensor, cameras: torch.Tensor,
               seeds: list[int], *, candidates: Optional[torch.Tensor] = None,
               before_step: Optional[BeforeStep] = None, after_backward: Optional[AfterBackward] = None,
               output_size=None) -> InversionResult:
        """Invert a batch.

        Args:
            images01: (B,3,H,W) target images in [0,1] (H = W = the fit resolution).
            masks: (B,H,W) target masks {0,1}.
            class_ids: (B,) int64. cameras: (B,7) initial cameras ``[s, tx, ty, qw, qx, qy, qz]``.
            seeds: B instance seeds (see :func:`instance_seed`).
            candidates: optional (B,S,64) candidate latents (replaces the random draws).
            before_step / after_backward: optional callbacks (see :class:`InversionState`).
            output_size: int or (H, W) size of the returned render (default: the fit resolution).
        Returns:
            :class:`InversionResult`.
        """
        cfg = self.config
        dev = self.device
        B = images01.shape[0]
        size = images01.shape[-1]
        class_ids = class_ids.to(dev, torch.long).reshape(B)
        cameras = cameras.to(dev, torch.float32).reshape(B, 7)
        target_mask = masks.to(dev, torch.float32).reshape(B, 1, size, size)

        _sync(dev)
        t0 = time.perf_counter()
        target = self.prepare_target(images01, masks)
        z0, scores, chosen, cand_iou = self.initial_latent(target, target_mask, class_ids, cameras, seeds,
                                                            candidates)
        iou_init = cand_iou[torch.arange(B), chosen]  # both on the CPU
        _sync(dev)
        t1 = time.perf_counter()

        z = z0.detach().clone().requires_grad_(True)
        scale = cameras[:, :1].clone().requires_grad_(True)
        translation = cameras[:, 1:3].clone().requires_grad_(True)
        rotation = cameras[:, 3:7].clone().requires_grad_(True)
        z_optim, pose_optim, pose_params = self._make_optimizers(z, scale, translation, rotation)
        state = InversionState(0, z, scale, translation, rotation, z_optim, pose_optim)

        errors: list[Optional[str]] = [None] * B
        alive = torch.ones(B, dtype=torch.bool, device=dev)
        losses: list[list[float]] = [[] for _ in range(B)]
        final_terms: list[dict[str, float]] = [{} for _ in range(B)]
        rows = torch.arange(B, device=dev)
        prev = None  # parameters before the last step (stale outputs)
        for step in range(cfg.total_steps):
            lr_z, lr_pose = cfg.learning_rates(step)
            for group in z_optim.param_groups:
                group["lr"] = lr_z
            for group in pose_optim.param_groups:
                group["lr"] = lr_pose
            state.step, state.lr_z, state.lr_pose = step, lr_z, lr_pose
            if before_step is not None:
                before_step(state)
            if cfg.stale_outputs and step == cfg.total_steps - 1:
                prev = (z.detach().clone(), state.camera())
            z_optim.zero_grad(set_to_none=False)
            pose_optim.zero_grad(set_to_none=False)
            _, _, out = self.forward(z, class_ids, scale, translation, rotation, size)
            gens = [self._row_generator(seeds[b], 2, step) for b in range(B)]
            total, terms = self._losses(out, z, target, rows, gens, with_prior=True)
            finite = torch.isfinite(total.detach())
            values = total.detach().double().cpu().tolist()
            for b in range(B):
                value = values[b]
                losses[b].append(value)
                if alive[b] and not bool(finite[b]):
                    errors[b] = f"non-finite loss ({value}) at step {step}"
                    alive[b] = False
            # every instance's loss only reaches its own parameter rows, so summing gives each
            # instance exactly its own gradient; failed rows are dropped (and frozen below)
            keep = alive & finite
            if bool(keep.any()):
                total[keep].sum().backward()
            if after_backward is not None:
                after_backward(state, total.detach(), {k: v.detach() for k, v in terms.items()})
            if not bool(alive.all()):
                for p in [z, *pose_params]:
                    if p.grad is not None:
                        p.grad[~alive] = 0.0
                        p.grad.nan_to_num_(0.0, 0.0, 0.0)
            frozen = [p.detach().clone() for p in (z, *pose_params)] if not bool(alive.all()) else None
            z_optim.step()
            if cfg.update_pose:
                pose_optim.step()
            if frozen is not None:
                with torch.no_grad():
                    for p, old in zip((z, *pose_params), frozen):
                        p[~alive] = old[~alive]
            if step == cfg.total_steps - 1:
                for b in range(B):
                    final_terms[b] = {k: float(v[b].detach()) for k, v in terms.items()}
        if cfg.carry_optimizer_state and cfg.total_steps > 0:
            self._save_carry(z_optim, pose_optim, z, pose_params, B - 1)
        _sync(dev)
        t2 = time.perf_counter()

        # outputs: one no-grad forward at the final (or, stale_outputs, the previous) parameters
        with torch.no_grad():
            if prev is not None:
                z_out, cam_out = prev
            else:
                z_out, cam_out = z.detach().clone(), state.camera()
            out_size = (size, size) if output_size is None else (
                (output_size, output_size) if isinstance(output_size, int) else tuple(output_size))
            texture, mesh_map, out = self.forward(z_out, class_ids, cam_out[:, :1], cam_out[:, 1:3],
                                                  cam_out[:, 3:7], out_size)
            if out_size == (size, size):
                iou_fit = mask_iou(target_mask, out.mask)
            else:
                _, _, fit = self.forward(z_out, class_ids, cam_out[:, :1], cam_out[:, 1:3], cam_out[:, 3:7], size)
                iou_fit = mask_iou(target_mask, fit.mask)
        _sync(dev)
        t3 = time.perf_counter()
        return InversionResult(
            latent=z.detach().clone(), camera=state.camera(), texture=texture, mesh_map=mesh_map,
            vertices=out.vertices, image=out.image, mask=out.mask, losses=losses, final_terms=final_terms,
            init_scores=scores, chosen=chosen, iou_init=iou_init.cpu(), iou_fit=iou_fit.cpu(), errors=errors,
            timings={"init": t1 - t0, "optimize": t2 - t1, "output": t3 - t2, "total": t3 - t0})


class InversionCriterion:
    """The official criterion (:func:`.losses.criterion`) with per-row targets and per-row RNG.

    Rows of a forward batch may belong to any instance (candidate evaluation scores many rows of
    the same instance at once), so the caller passes ``rows`` (N,) indexing the instances of the
    prepared target. Subsampling indices are drawn here, row by row, from each row's own
    generator (``randperm(n)[:R]`` for the prediction, then for the target, pixel term then feature
    term, as the official ``distChamfer_downsample``); when a set has at most R points the identity
    order is used instead (the values are permutation-invariant; only exact ties could differ), so
    no random numbers are spent on a permutation that changes nothing.

    Args:
        config: :class:`InversionConfig` (weights, gate parameters, resolution, feat_loss...).
        vgg: :class:`.vgg.VGGRelu31` (required when ``config.feat_loss``).
        device: the device the networks run on (decides the ``batch_invariant`` default).
    """

    def __init__(self, config: InversionConfig, vgg=None, device="cpu"):
        from . import losses

        self._L = losses
        self.vgg = RowByRow(vgg) if vgg is not None and resolve_batch_invariant(config, device) else vgg
        self.loss_config = losses.LossConfig(
            mask_wt=config.mask_loss_weight, pixel_wt=config.pixel_loss_weight, feat_wt=config.feat_loss_weight,
            nll_wt=config.nll_loss_weight, flat_wt=config.flat_loss_weight, use_feat=bool(config.feat_loss),
            use_flat=bool(config.mesh_regularization), xy_threshold=config.xy_threshold, xy_k=config.xy_k,
            xy_alpha=config.xy_alpha, rgb_eps=config.rgb_eps, subpool_threshold=config.subpool_threshold,
            mask_threshold=config.mask_threshold, chamfer_resolution=config.chamfer_resolution)
        self.no_prior = replace(self.loss_config, use_nll=False)
        if config.feat_loss and vgg is None:
            raise ValueError("feat_loss needs a VGG network")

    def prepare_target(self, image: torch.Tensor, mask: torch.Tensor):
        """image (B,3,H,W) in [-1,1], mask (B,1,H,W) -> :class:`.losses.LossTargets`."""
        return self._L.prepare_targets(image, mask, self.loss_config, self.vgg)

    @staticmethod
    def _rows(points, rows):
        if points is None:
            return None
        return type(points)(points.xy[rows], points.values[rows], points.lengths[rows])

    def select(self, target, rows: torch.Tensor):
        """The prepared target of every row (instances repeated as ``rows`` says)."""
        return self._L.LossTargets(image=target.image[rows], mask=target.mask[rows],
                                   points=self._rows(target.points, rows),
                                   feat_points=self._rows(target.feat_points, rows))

    def _indices(self, n_pred: torch.Tensor, n_tgt: torch.Tensor, generators):
        res = self.loss_config.chamfer_resolution
        out = []
        for a, b, g in zip(n_pred.tolist(), n_tgt.tolist(), generators):
            pair = []
            for n in (a, b):
                if res is None or n <= res:
                    pair.append(torch.arange(n))
                else:
                    pair.append(torch.randperm(n, generator=g)[:res])
            out.append(tuple(pair))
        return out

    def flat(self, template, vertices: torch.Tensor) -> torch.Tensor:
        """Per-instance ConvMesh flatness of (N,V,3) vertices -> (N,)."""
        return self._L.flat_loss(template.face_normals(vertices), template.ff)

    def __call__(self, image, mask, vtx_xy, z, target, rows, generators, *, with_prior=True, flat=None,
                 pred_features=None):
        """Per-row (total (N,), terms); see :func:`.losses.criterion`."""
        cfg = self.loss_config if with_prior else self.no_prior
        L = self._L
        tgt = self.select(target, rows) if rows is not None else target
        indices = {}
        thr = cfg.mask_threshold
        n_pix = (mask.detach() > thr).flatten(1).sum(1)
        indices["pixel"] = self._indices(n_pix, tgt.points.lengths, generators)
        if cfg.use_feat:
            if pred_features is None:
                pred_features = self.vgg(image, mask)
            sub = mask.shape[-2] // pred_features.shape[-2]
            pooled = F.avg_pool2d(mask.detach().to(pred_features.dtype), sub) >= cfg.subpool_threshold
            n_feat = pooled.flatten(1).sum(1)
            indices["feat"] = self._indices(n_feat, tgt.feat_points.lengths, generators)
        return L.criterion(image, mask, tgt, vtx_xy=vtx_xy, z=z, config=cfg, vgg=self.vgg,
                           pred_features=pred_features, flat=flat, indices=indices)
