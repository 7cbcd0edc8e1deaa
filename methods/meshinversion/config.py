"""Hyper-parameters of MeshInversion's test-time inversion (:class:`InversionConfig`) and profiles.

One dataclass, one table: the CLI (``--set ours.<field>=<value>``), the run manifest, ``bench config
ours`` and ``docs/meshinversion.md`` all read these fields and their one-line helps. Defaults (= the
``paper`` profile) are the values the released code runs (``mi:lib/arguments.py``,
``mi:lib/mesh_inversion.py``); where the paper or its supplement states another value, the help says
so. The loss fields (weights, switches, Chamfer and gate parameters) are inherited from
:class:`.losses.LossConfig`, their one home.

Randomness is per instance and comes from the runner (:func:`bench.seeds.sample_seed`): each
instance draws its candidates and Chamfer subsamples from its own seed, so results do not depend on
batching, sharding or order (the official code uses one global stream seeded 1234).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from bench.config import option, require

from .losses import LossConfig


@dataclass
class InversionConfig(LossConfig):
    """MeshInversion inversion settings (the loss fields come from :class:`.losses.LossConfig`).

    Weights policy of ``vgg_weights``: with the demo generator and no file anywhere, seeded random
    VGG19 weights are used and labelled ``random vgg19``; with a real checkpoint a missing file is an
    error unless ``feat_loss`` is False.

    Deviations with an official switch: ``carry_optimizer_state`` (the released code's Adam state
    persists across instances; exact official numbers need True, batch size 1 and the official
    instance order), ``stale_outputs`` (the released code saves the texture/mesh/render of the last
    forward pass, one Adam step *before* the saved latent/camera). ``init_with_prior`` False
    reproduces the official choice exactly: the released code adds the prior of the *current*
    latent, a constant offset over the candidates.
    """

    # weights
    checkpoint: Optional[str] = option(
        None, help="generator checkpoint (official checkpoint_latest.pth or a state dict); None = untrained demo")
    vgg_weights: Optional[str] = option(
        None, help="torchvision VGG19 ImageNet weights vgg19-dcbb9e9d.pth for feat_loss; None = the torch hub cache")

    # latent initialisation (init_z)
    select_num: int = option(
        500, ge=1, help="random N(0,I) latent candidates per instance; the best one starts (official 500)")
    init_batch_size: int = option(
        50, ge=1, help="candidates scored per forward pass (official 1; any value gives the same choice)")
    init_with_prior: bool = option(
        False, help="add each candidate's own NLL prior to its score (official False: a constant offset there)")

    # optimisation (run)
    iterations: list[int] = option([50, 50, 50, 50], ge=0, min_length=1,
                                   help="Adam steps per stage (official [50, 50, 50, 50])")
    z_lrs: list[float] = option([1e-1, 5e-2, 1e-2, 5e-3], gt=0, help="latent learning rate per stage (official values)")
    pose_lrs: list[float] = option([1e-2, 5e-3, 1e-3, 5e-4], gt=0,
                                   help="camera learning rate per stage (official values)")
    lr_warmup_steps: int = option(
        0, ge=0,
        help="linear LR warm-up: LR x step/lr_warmup_steps while the 1-based step is below it (official 0 = off)")
    betas: tuple[float, float] = option((0.0, 0.99), ge=0, lt=1, help="Adam betas (official (0, 0.99))")
    adam_eps: float = option(1e-8, gt=0, help="Adam epsilon (official 1e-8)")
    carry_optimizer_state: bool = option(
        False, help="keep the Adam state across instances, as the released code does (default: fresh per instance)")
    stale_outputs: bool = option(
        False, help="return the last forward's render, one step behind the latent/camera, as the released code saves")
    update_pose: bool = option(True, help="optimise the camera too (official True, not switchable there)")

    # rendering
    render_size: int = option(
        256, ge=16, multiple_of=4,
        help="fit resolution in pixels (official 256); other sample sizes are resized for the fit only")

    # execution
    batch_invariant: Optional[bool] = option(
        None, help="run generator/VGG row by row so a batch equals separate runs bitwise; None = on for CPU only")
    warmup_passes: int = option(1, ge=0, help="untimed forward/backward passes in setup (kernel selection, allocator)")

    def __post_init__(self):
        super().__post_init__()  # LossConfig's: every field's type and range (check_fields)
        stages = len(self.iterations)
        require(len(self.z_lrs) == stages and len(self.pose_lrs) == stages, "z_lrs and pose_lrs",
                f"need one value per stage of iterations ({stages})", (self.z_lrs, self.pose_lrs))

    @property
    def total_steps(self) -> int:
        return sum(self.iterations)

    def stage_of(self, step: int) -> int:
        """Stage index of 0-based optimisation step ``step``."""
        end = 0
        for stage, stage_steps in enumerate(self.iterations):
            end += stage_steps
            if step < end:
                return stage
        return len(self.iterations) - 1

    def learning_rates(self, step: int) -> tuple[float, float]:
        """(lr_z, lr_pose) for 0-based step ``step`` (warm-up uses the official 1-based counter)."""
        stage = self.stage_of(step)
        lr_z, lr_pose = self.z_lrs[stage], self.pose_lrs[stage]
        global_step = step + 1
        if self.lr_warmup_steps > 0 and global_step < self.lr_warmup_steps:
            factor = global_step / self.lr_warmup_steps
            lr_z, lr_pose = lr_z * factor, lr_pose * factor
        return lr_z, lr_pose


#: Named profiles (field overrides). ``paper`` = the released code's values; ``fast`` = a CPU-friendly
#: setting that still clearly improves IoU on the synthetic dataset in a few seconds per instance.
PROFILES: dict[str, dict] = {
    "paper": {},
    "fast": {
        "render_size": 128,
        "chamfer_resolution": 2048,
        "select_num": 16,
        "init_batch_size": 16,
        "iterations": [10, 10, 5, 5],
    },
}
