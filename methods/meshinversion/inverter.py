"""MeshInversion's test-time inversion (``mi:lib/mesh_inversion.py init_z`` + ``run``), batched.

:class:`MeshInverter` fits a generator latent ``z`` and a camera (scale, translation, raw
quaternion) to B target images/masks at once:

0. **Camera search** (only for samples without a camera, :mod:`bench.camera_search`): the first
   ``search.candidates`` latent candidates of each instance are each posed at K hypotheses fitted to
   the target mask's box and scored with the same criterion; the camera of the best (candidate,
   hypothesis) pair becomes the initial camera.
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
instance's seed (the method passes :func:`bench.seeds.sample_seed`), never from the global RNG, so
results do not depend on batching, order or sharding.

Failures are per instance: a non-finite loss marks that instance failed (its parameters are frozen
from then on) while the others go on.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from bench.failures import find_non_finite
from bench.metrics.iou import mask_iou
from bench.timing import Stopwatch

from . import losses
from .config import InversionConfig
from .render import RenderOutput, render

__all__ = ["InitialLatent", "InversionCriterion", "InversionResult", "InversionState", "MeshInverter", "RowByRow",
           "resolve_batch_invariant"]

#: Phases of the per-row subsampling generators (candidate scoring, optimisation steps, camera search).
_PHASE_CANDIDATES = 1
_PHASE_OPTIMIZE = 2
_PHASE_CAMERA_SEARCH = 3


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
        num_rows = args[0].shape[0]
        if num_rows == 1:
            return self.module(*args)
        return torch.cat([self.module(*[arg[row:row + 1] for arg in args]) for row in range(num_rows)])


def _split_camera(camera: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B,7) ``[s, tx, ty, qw, qx, qy, qz]`` -> scale (B,1), translation (B,2), rotation (B,4)."""
    return camera[:, :1], camera[:, 1:3], camera[:, 3:7]


@dataclass
class InversionState:
    """The live optimisation variables, handed to callbacks (rows = instances).

    Attributes:
        step: 0-based global step about to run (or just run).
        z: (B,64) leaf; scale (B,1), translation (B,2), rotation (B,4) leaves.
        z_optim, pose_optim: the two Adam optimisers.
        lr_z, lr_pose: learning rates of this step.
        pose_params: the pose leaves ``pose_optim`` updates (empty without ``update_pose``).
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
    pose_params: list[torch.Tensor] = field(default_factory=list)

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
        timings: batch wall-clock seconds ``init``, ``optimize``, ``output``, ``total`` (and
            ``camera_search`` when a search ran; ``total`` includes it).
        camera_search: per instance None, or what the camera search chose (:meth:`MeshInverter.search_camera`).
        camera_init: (B,7) the initial cameras the optimisation started from (searched or given).
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
    camera_search: list[Optional[dict]] = field(default_factory=list)
    camera_init: Optional[torch.Tensor] = None


@dataclass
class InitialLatent:
    """The chosen starting latents of a batch (:meth:`MeshInverter.choose_initial_latent`).

    Attributes:
        latent: (B,64) chosen candidates; scores: (B,S) float64 candidate scores; chosen: (B,)
            index of the chosen candidate; iou: (B,) its IoU at the initial camera (CPU).
    """

    latent: torch.Tensor
    scores: torch.Tensor
    chosen: torch.Tensor
    iou: torch.Tensor


@dataclass
class _Batch:
    """The inputs of one :meth:`MeshInverter.invert` call on the device (rows = instances)."""

    class_ids: torch.Tensor  # (B,) int64
    cameras: torch.Tensor  # (B,7) initial cameras
    target_mask: torch.Tensor  # (B,1,S,S)
    seeds: list[int]
    fit_size: int  # S
    rows: torch.Tensor  # (B,) arange: every row's target instance

    @property
    def size(self) -> int:
        return len(self.seeds)


@dataclass
class _Progress:
    """Per-instance bookkeeping of one optimisation."""

    losses: list[list[float]]
    final_terms: list[dict[str, float]]
    errors: list[Optional[str]]
    alive: list[bool]

    @classmethod
    def start(cls, batch_size: int) -> "_Progress":
        return cls([[] for _ in range(batch_size)], [{} for _ in range(batch_size)], [None] * batch_size,
                   [True] * batch_size)


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
            outputs = [self.generator(z[row:row + 1], class_ids[row:row + 1]) for row in range(z.shape[0])]
            return torch.cat([texture for texture, _ in outputs]), torch.cat([mesh_map for _, mesh_map in outputs])
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

    @staticmethod
    def _subsample_rng(seed: int, phase: int, index: int) -> torch.Generator:
        """A fresh CPU generator per (instance, phase, candidate or step): independent of batching and order."""
        return torch.Generator().manual_seed((seed + 1_000_003 * phase + 7919 * index) % (1 << 63))

    # ------------------------------------------------------------------ init_z
    def draw_candidates(self, seeds: list[int]) -> torch.Tensor:
        """(B,S,64) candidate latents: ``select_num`` N(0,I) draws from each instance's own seed."""
        latent_dim = getattr(self.generator, "latent_dim", 64)
        return torch.stack([
            torch.randn(self.config.select_num, latent_dim, generator=torch.Generator().manual_seed(seed))
            for seed in seeds])

    @torch.no_grad()
    def choose_initial_latent(self, target, target_mask, class_ids, cameras, seeds: list[int],
                              candidates: Optional[torch.Tensor] = None) -> InitialLatent:
        """Choose the starting latent of every instance among ``select_num`` random candidates.

        Args:
            target: criterion target of the B instances; target_mask (B,1,H,W).
            class_ids (B,), cameras (B,7) initial cameras, seeds: B instance seeds.
            candidates: optional (B,S,64) candidate latents (default: :meth:`draw_candidates`).
        Returns:
            :class:`InitialLatent` (a non-finite score never wins).
        """
        batch_size = class_ids.shape[0]
        if candidates is None:
            candidates = self.draw_candidates(seeds)
        candidates = candidates.to(self.device, torch.float32)
        num_candidates = candidates.shape[1]
        num_rows = batch_size * num_candidates
        row_latents = candidates.reshape(num_rows, -1)
        row_instance = torch.arange(batch_size, device=self.device).repeat_interleave(num_candidates)
        row_candidate = torch.arange(num_candidates).repeat(batch_size)
        scores = torch.empty(num_rows, dtype=torch.float64)
        ious = torch.empty(num_rows, dtype=torch.float32)
        for start in range(0, num_rows, self.config.init_batch_size):
            chunk = slice(start, min(start + self.config.init_batch_size, num_rows))
            instances = row_instance[chunk]
            _, _, out = self.forward(row_latents[chunk], class_ids[instances], *_split_camera(cameras[instances]),
                                     target_mask.shape[-1])
            rngs = [self._subsample_rng(seeds[instance], _PHASE_CANDIDATES, candidate)
                    for instance, candidate in zip(instances.tolist(), row_candidate[chunk].tolist())]
            total, _ = self._losses(out, row_latents[chunk], target, instances, rngs,
                                    with_prior=self.config.init_with_prior)
            scores[chunk] = total.detach().double().cpu()
            ious[chunk] = mask_iou(target_mask[instances], out.mask).cpu()
        scores = scores.reshape(batch_size, num_candidates)
        # a non-finite score never wins (NaN sorts as +inf here)
        chosen = torch.nan_to_num(scores, nan=float("inf")).argmin(dim=1)
        latent = candidates[torch.arange(batch_size, device=self.device), chosen.to(self.device)]
        iou = ious.reshape(batch_size, num_candidates)[torch.arange(batch_size), chosen]  # both on the CPU
        return InitialLatent(latent=latent, scores=scores, chosen=chosen, iou=iou)

    # ------------------------------------------------------------------ camera search
    @torch.no_grad()
    def search_camera(self, target, row: int, target_mask: torch.Tensor, class_id: torch.Tensor, seed: int,
                      search) -> tuple[torch.Tensor, dict]:
        """The initial camera of instance ``row`` among the hypotheses of ``search``.

        Each of the first ``search.candidates`` latent candidates (:meth:`draw_candidates`) gets its
        own K hypotheses (:func:`bench.camera_search.camera_hypotheses`, fitted to its shape) and every
        (candidate, hypothesis) pair is scored with the criterion, like the latent initialisation
        (prior per ``init_with_prior``); the lowest score's camera is kept.

        Args:
            target: the batch's criterion target; row: this instance's row in it.
            target_mask: (S,S) its mask; class_id: () int64; seed: its seed; search: a CameraSearch.
        Returns:
            ((7,) camera, info: hypothesis index, candidate, score, azimuth/elevation, scale fit, K).
        """
        from bench.camera_search import camera_hypotheses

        size = target_mask.shape[-1]
        latents = self.draw_candidates([seed])[0, :search.candidates].to(self.device, torch.float32)
        num_candidates, num_hyps = latents.shape[0], search.size
        texture, mesh_map = self.generate(latents, class_id.reshape(1).expand(num_candidates).to(self.device))
        vertices = self.template.vertex_positions(mesh_map)
        hyps = torch.stack([camera_hypotheses(target_mask, vertices[c], search) for c in range(num_candidates)])
        pairs = num_candidates * num_hyps
        scores = torch.empty(pairs, dtype=torch.float64)
        for start in range(0, pairs, self.config.init_batch_size):
            index = torch.arange(start, min(start + self.config.init_batch_size, pairs))
            cand, hyp = index // num_hyps, index % num_hyps
            cams = hyps[cand, hyp].to(self.device)
            out = render(self.template, texture[cand], mesh_map[cand], *_split_camera(cams), size,
                         vertices=vertices[cand])
            rngs = [self._subsample_rng(seed, _PHASE_CAMERA_SEARCH, int(i)) for i in index]
            rows = torch.full((len(index),), row, dtype=torch.long, device=self.device)
            total, _ = self._losses(out, latents[cand], target, rows, rngs, with_prior=self.config.init_with_prior)
            scores[index] = total.detach().double().cpu()
        best = int(torch.nan_to_num(scores, nan=float("inf")).argmin())
        cand, hyp = divmod(best, num_hyps)
        rotation, fit = divmod(hyp, 2)
        elevation, azimuth = divmod(rotation, search.azimuths)
        info = {"hypothesis": hyp, "hypotheses": num_hyps, "candidate": cand, "score": float(scores[best]),
                "azimuth_deg": 360.0 * azimuth / search.azimuths,
                "elevation_deg": float(search.elevations_deg[elevation]),
                "scale_fit": ("width", "height")[fit], "candidates": num_candidates}
        return hyps[cand, hyp].to(self.device), info

    # ------------------------------------------------------------------ optimisers
    def _make_optimizers(self, z, scale, translation, rotation):
        """The latent and pose Adam optimisers (with the carried state, if any) and the pose leaves."""
        cfg = self.config
        z_optim = torch.optim.Adam([z], lr=cfg.z_lrs[0], betas=cfg.betas, eps=cfg.adam_eps)
        pose_params = [scale, translation, rotation] if cfg.update_pose else []
        pose_optim = torch.optim.Adam(pose_params or [torch.zeros(1, requires_grad=True)], lr=cfg.pose_lrs[0],
                                      betas=cfg.betas, eps=cfg.adam_eps)
        if cfg.carry_optimizer_state and self._carried is not None:
            for optim, params, key in ((z_optim, [z], "z"), (pose_optim, pose_params, "pose")):
                for param, saved in zip(params, self._carried[key]):
                    optim.state[param] = {
                        "step": saved["step"].clone(),
                        "exp_avg": saved["exp_avg"].to(param.device).expand_as(param).clone(),
                        "exp_avg_sq": saved["exp_avg_sq"].to(param.device).expand_as(param).clone(),
                    }
        return z_optim, pose_optim, pose_params

    def _save_carry(self, state: InversionState, row: int) -> None:
        """Keep the Adam state of instance ``row`` (the last one processed) for the next instance."""
        saved = {}
        for optim, params, key in ((state.z_optim, [state.z], "z"), (state.pose_optim, state.pose_params, "pose")):
            entries = []
            for param in params:
                param_state = optim.state.get(param)
                if not param_state:
                    return
                entries.append({"step": param_state["step"].detach().clone(),
                                "exp_avg": param_state["exp_avg"][row:row + 1].detach().clone(),
                                "exp_avg_sq": param_state["exp_avg_sq"][row:row + 1].detach().clone()})
            saved[key] = entries
        self._carried = saved

    def reset_optimizer_state(self) -> None:
        """Forget the carried Adam state (only used with ``carry_optimizer_state``)."""
        self._carried = None

    # ------------------------------------------------------------------ the whole inversion
    def invert(self, images01: torch.Tensor, masks: torch.Tensor, class_ids: torch.Tensor, cameras: torch.Tensor,
               seeds: list[int], *, candidates: Optional[torch.Tensor] = None,
               before_step: Optional[BeforeStep] = None, after_backward: Optional[AfterBackward] = None,
               output_size=None, searches: Optional[list] = None) -> InversionResult:
        """Invert a batch.

        Args:
            images01: (B,3,H,W) target images in [0,1] (H = W = the fit resolution).
            masks: (B,H,W) target masks {0,1}.
            class_ids: (B,) int64. cameras: (B,7) initial cameras ``[s, tx, ty, qw, qx, qy, qz]``.
            seeds: B instance seeds (the method passes :func:`bench.seeds.sample_seed`).
            candidates: optional (B,S,64) candidate latents (replaces the random draws).
            before_step / after_backward: optional callbacks (see :class:`InversionState`).
            output_size: int or (H, W) size of the returned render (default: the fit resolution).
            searches: optional per instance None or a :class:`bench.camera_search.CameraSearch`: search
                that instance's initial camera (:meth:`search_camera`) instead of using ``cameras``.
        Returns:
            :class:`InversionResult`.
        """
        batch = self._batch(images01, masks, class_ids, cameras, seeds)
        stopwatch = Stopwatch(self.device)
        target = None
        found: list[Optional[dict]] = [None] * batch.size
        if searches is not None and any(search is not None for search in searches):
            with stopwatch("camera_search"):
                target = self.prepare_target(images01, masks)
                for row, search in enumerate(searches):
                    if search is not None:
                        batch.cameras[row], found[row] = self.search_camera(
                            target, row, batch.target_mask[row, 0], batch.class_ids[row], seeds[row], search)
        with stopwatch("init"):
            target = self.prepare_target(images01, masks) if target is None else target
            init = self.choose_initial_latent(target, batch.target_mask, batch.class_ids, batch.cameras, seeds,
                                              candidates)
        with stopwatch("optimize"):
            state, progress, stale = self.optimize(init.latent, batch, target, before_step, after_backward)
        with stopwatch("output"):
            texture, mesh_map, rendered, iou_fit = self.final_outputs(state, stale, batch, output_size)
        timings = dict(stopwatch.seconds)
        timings["total"] = sum(timings.values())
        return InversionResult(
            latent=state.z.detach().clone(), camera=state.camera(), texture=texture, mesh_map=mesh_map,
            vertices=rendered.vertices, image=rendered.image, mask=rendered.mask, losses=progress.losses,
            final_terms=progress.final_terms, init_scores=init.scores, chosen=init.chosen, iou_init=init.iou.cpu(),
            iou_fit=iou_fit.cpu(), errors=progress.errors, timings=timings, camera_search=found,
            camera_init=batch.cameras.detach().cpu())

    def _batch(self, images01, masks, class_ids, cameras, seeds: list[int]) -> _Batch:
        batch_size, fit_size = images01.shape[0], images01.shape[-1]
        return _Batch(class_ids=class_ids.to(self.device, torch.long).reshape(batch_size),
                      cameras=cameras.to(self.device, torch.float32).reshape(batch_size, 7),
                      target_mask=masks.to(self.device, torch.float32).reshape(batch_size, 1, fit_size, fit_size),
                      seeds=list(seeds), fit_size=fit_size, rows=torch.arange(batch_size, device=self.device))

    def optimize(self, latent: torch.Tensor, batch: _Batch, target, before_step: Optional[BeforeStep] = None,
                 after_backward: Optional[AfterBackward] = None):
        """The staged Adam optimisation from ``latent`` (B,64) and the batch's initial cameras.

        Returns:
            (final :class:`InversionState`, per-instance progress, ``stale``: the (latent, camera)
            before the last step with ``stale_outputs``, else None).
        """
        cfg = self.config
        state = self._initial_state(latent, batch.cameras)
        progress = _Progress.start(batch.size)
        stale = None
        last_step = cfg.total_steps - 1
        for step in range(cfg.total_steps):
            self._set_learning_rates(state, step)
            if before_step is not None:
                before_step(state)
            if cfg.stale_outputs and step == last_step:
                stale = (state.z.detach().clone(), state.camera())
            total, terms = self._step_loss(state, batch, target, step)
            self._record_losses(progress, total, terms, step)
            self._backward(total, progress.alive)
            if after_backward is not None:
                after_backward(state, total.detach(), {name: value.detach() for name, value in terms.items()})
            self._adam_step(state, progress.alive)
            if step == last_step:
                progress.final_terms = [{name: float(value[row].detach()) for name, value in terms.items()}
                                        for row in range(batch.size)]
        if cfg.carry_optimizer_state and cfg.total_steps > 0:
            self._save_carry(state, batch.size - 1)
        return state, progress, stale

    def _initial_state(self, latent: torch.Tensor, cameras: torch.Tensor) -> InversionState:
        """Fresh leaves for the latent and the camera, and their optimisers."""
        z = latent.detach().clone().requires_grad_(True)
        scale, translation, rotation = (part.clone().requires_grad_(True) for part in _split_camera(cameras))
        z_optim, pose_optim, pose_params = self._make_optimizers(z, scale, translation, rotation)
        return InversionState(0, z, scale, translation, rotation, z_optim, pose_optim, pose_params=pose_params)

    def _set_learning_rates(self, state: InversionState, step: int) -> None:
        lr_z, lr_pose = self.config.learning_rates(step)
        for group in state.z_optim.param_groups:
            group["lr"] = lr_z
        for group in state.pose_optim.param_groups:
            group["lr"] = lr_pose
        state.step, state.lr_z, state.lr_pose = step, lr_z, lr_pose

    def _step_loss(self, state: InversionState, batch: _Batch, target, step: int):
        """Zero the gradients, forward at the current parameters, per-instance criterion."""
        state.z_optim.zero_grad(set_to_none=False)
        state.pose_optim.zero_grad(set_to_none=False)
        _, _, out = self.forward(state.z, batch.class_ids, state.scale, state.translation, state.rotation,
                                 batch.fit_size)
        rngs = [self._subsample_rng(seed, _PHASE_OPTIMIZE, step) for seed in batch.seeds]
        return self._losses(out, state.z, target, batch.rows, rngs, with_prior=True)

    @staticmethod
    def _record_losses(progress: _Progress, total: torch.Tensor, terms: dict, step: int) -> None:
        """Append every instance's loss; a non-finite loss fails its instance (from then on frozen)."""
        for row, value in enumerate(total.detach().double().cpu().tolist()):
            progress.losses[row].append(value)
            if progress.alive[row] and find_non_finite({"loss": value}) is not None:
                culprit = find_non_finite({name: values[row] for name, values in terms.items()})
                progress.errors[row] = (f"non-finite loss ({value}) at step {step}"
                                        + (f" (first non-finite term: {culprit})" if culprit else ""))
                progress.alive[row] = False

    def _backward(self, total: torch.Tensor, alive: list[bool]) -> None:
        # every instance's loss only reaches its own parameter rows, so summing gives each
        # instance exactly its own gradient; failed rows are dropped (and frozen in _adam_step)
        keep = torch.tensor(alive, dtype=torch.bool, device=self.device)
        if bool(keep.any()):
            total[keep].sum().backward()

    def _adam_step(self, state: InversionState, alive: list[bool]) -> None:
        """Both Adam steps; the rows of failed instances keep their values."""
        params = [state.z, *state.pose_params]
        frozen = None
        if not all(alive):
            dead = ~torch.tensor(alive, dtype=torch.bool, device=self.device)
            for param in params:
                if param.grad is not None:
                    param.grad[dead] = 0.0
                    param.grad.nan_to_num_(0.0, 0.0, 0.0)
            frozen = [param.detach().clone() for param in params]
        state.z_optim.step()
        if self.config.update_pose:
            state.pose_optim.step()
        if frozen is not None:
            with torch.no_grad():
                for param, old in zip(params, frozen):
                    param[dead] = old[dead]

    @torch.no_grad()
    def final_outputs(self, state: InversionState, stale, batch: _Batch, output_size=None):
        """One no-grad forward at the final (or, ``stale_outputs``, the previous) latent/camera.

        Returns:
            (texture, mesh_map, RenderOutput at ``output_size``, IoU (B,) of the fit-size mask).
        """
        latent, camera = stale if stale is not None else (state.z.detach().clone(), state.camera())
        fit_hw = (batch.fit_size, batch.fit_size)
        if output_size is None:
            output_hw = fit_hw
        else:
            output_hw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        texture, mesh_map, rendered = self.forward(latent, batch.class_ids, *_split_camera(camera), output_hw)
        if output_hw == fit_hw:
            fit_mask = rendered.mask
        else:
            fit_mask = self.forward(latent, batch.class_ids, *_split_camera(camera), batch.fit_size)[2].mask
        return texture, mesh_map, rendered, mask_iou(batch.target_mask, fit_mask)


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
        config: :class:`InversionConfig`; its :class:`.losses.LossConfig` fields are the criterion's.
        vgg: :class:`.vgg.VGGRelu31` (required when a feature-level texture term is on, ``feature_term``).
        device: the device the networks run on (decides the ``batch_invariant`` default).
    """

    def __init__(self, config: InversionConfig, vgg=None, device="cpu"):
        self.vgg = RowByRow(vgg) if vgg is not None and resolve_batch_invariant(config, device) else vgg
        self.loss_config = losses.LossConfig(**{f.name: getattr(config, f.name) for f in fields(losses.LossConfig)})
        self.no_prior = replace(self.loss_config, nll_loss=False)
        if self.loss_config.feature_term is not None and vgg is None:
            raise ValueError(f"the feature-level texture term ({self.loss_config.texture_loss}) needs a VGG network")

    def prepare_target(self, image: torch.Tensor, mask: torch.Tensor):
        """image (B,3,H,W) in [-1,1], mask (B,1,H,W) -> :class:`.losses.LossTargets`."""
        return losses.prepare_targets(image, mask, self.loss_config, self.vgg)

    @staticmethod
    def _select_points(points, rows):
        if points is None:
            return None
        return type(points)(points.xy[rows], points.values[rows], points.lengths[rows])

    def select(self, target, rows: torch.Tensor):
        """The prepared target of every row (instances repeated as ``rows`` says)."""
        return losses.LossTargets(image=target.image[rows], mask=target.mask[rows],
                                  points=self._select_points(target.points, rows),
                                  feat_points=self._select_points(target.feat_points, rows),
                                  features=target.features[rows] if target.features is not None else None)

    def _subsample_indices(self, pred_counts: torch.Tensor, target_counts: torch.Tensor, rngs):
        """Per row (prediction indices, target indices): ``randperm(n)[:R]``, identity when n <= R."""
        resolution = self.loss_config.chamfer_resolution
        pairs = []
        for pred_count, target_count, rng in zip(pred_counts.tolist(), target_counts.tolist(), rngs):
            pair = []
            for count in (pred_count, target_count):
                if resolution is None or count <= resolution:
                    pair.append(torch.arange(count))
                else:
                    pair.append(torch.randperm(count, generator=rng)[:resolution])
            pairs.append(tuple(pair))
        return pairs

    def flat(self, template, vertices: torch.Tensor) -> torch.Tensor:
        """Per-instance ConvMesh flatness of (N,V,3) vertices -> (N,)."""
        return losses.flat_loss(template.face_normals(vertices), template.ff)

    def __call__(self, image, mask, vtx_xy, z, target, rows, generators, *, with_prior=True, flat=None,
                 pred_features=None):
        """Per-row (total (N,), terms); see :func:`.losses.criterion`."""
        config = self.loss_config if with_prior else self.no_prior
        row_target = self.select(target, rows) if rows is not None else target
        pixel_counts = (mask.detach() > config.mask_threshold).flatten(1).sum(1)
        indices = {"pixel": self._subsample_indices(pixel_counts, row_target.points.lengths, generators)}
        if config.feature_term is not None and pred_features is None:
            pred_features = self.vgg(image, mask)
        if config.feature_term == "feat":  # the Chamfer term's subsampling draws
            pool = mask.shape[-2] // pred_features.shape[-2]
            pooled = F.avg_pool2d(mask.detach().to(pred_features.dtype), pool) >= config.subpool_threshold
            feature_counts = pooled.flatten(1).sum(1)
            indices["feat"] = self._subsample_indices(feature_counts, row_target.feat_points.lengths, generators)
        return losses.criterion(image, mask, row_target, vtx_xy=vtx_xy, z=z, config=config, vgg=self.vgg,
                                pred_features=pred_features, flat=flat, indices=indices)
