"""``ours``: MeshInversion as a :class:`bench.methods.base.Method`.

``setup`` loads the generator (checkpoint or the untrained demo generator) and, for the feature
term, VGG19; ``reconstruct`` inverts a batch of samples with :class:`MeshInverter` and returns one
:class:`Reconstruction` per sample (failed instances as ``Reconstruction.failed``).

Weights policy (recorded in every record's ``info`` and in :meth:`describe`):

* ``feat_loss=False``: no VGG at all (``feature_term = "off"``).
* ``vgg_weights`` set: that file, or a :class:`UserError` when it is missing.
* otherwise the torch hub cache (``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``); when it is
  missing, the untrained demo generator (``checkpoint=None``) falls back to seeded random VGG19
  weights, labelled ``"random vgg19 (no weights file)"``, while a real checkpoint raises a
  :class:`UserError` saying where to put the file (or to pass ``--set ours.feat_loss=false``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from bench.failures import reconstruct_in_groups
from bench.manifest import sha256_file
from bench.methods.base import Method, Reconstruction, TexturedMesh
from bench.metrics.iou import mask_iou
from bench.seeds import sample_seed
from bench.timing import Stopwatch, per_instance, synchronize
from bench.weights import missing_weights_error, resolve_weights

from .config import PROFILES, InversionConfig
from .render import render
from .vgg import VGG19_FILENAME, default_vgg19_path

#: seed of the random VGG19 *weights* used when no weights file exists (demo generator only).
RANDOM_VGG_SEED = 123
#: how the user names the VGG19 weights file.
VGG_WEIGHTS_OPTION = "ours.vgg_weights"
_DISABLE_FEATURE_TERM = "or disable the term with --set ours.feat_loss=false"
#: a CUB-like camera (scale, translation, canonical quaternion) for the setup warm-up passes.
_WARMUP_CAMERA = (0.6, 0.0, 0.0, 0.612372, 0.353553, -0.612372, 0.353553)


def random_vgg19_relu3_1(seed: int = RANDOM_VGG_SEED):
    """VGG19 relu3_1 with seeded random weights (torchvision's init: Kaiming-normal fan-out, zero
    bias), drawn from a private generator so the global RNG is untouched."""
    from .vgg import VGGRelu31

    model = VGGRelu31()
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.copy_(torch.randn(module.weight.shape, generator=rng) * math.sqrt(2.0 / fan_out))
                module.bias.zero_()
    return model


class _Prepared(NamedTuple):
    """One sample ready for the fit."""

    sample: Any
    image: torch.Tensor  # (3,S,S) in [0,1] at the fit resolution S
    mask: torch.Tensor  # (S,S) {0,1}
    output_hw: tuple[int, int]  # the sample's own size: the size of the returned render


class MeshInversionMethod(Method):
    """MeshInversion (Zhang et al., ECCV 2022): GAN inversion with Chamfer losses and 4-stage Adam."""

    name = "ours"
    Config = InversionConfig
    profiles = PROFILES

    def __init__(self, config: InversionConfig | None = None):
        super().__init__(config if config is not None else InversionConfig())
        self.generator = None
        self.template = None
        self.criterion = None
        self.inverter = None
        self.feature_term = "off"
        self.vgg_source: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    def _vgg_plan(self) -> tuple[str, Path | None]:
        """Where the feature term's VGG19 comes from, decided without loading anything:
        ("off" | "file" | "random" | "missing", path). A ``vgg_weights`` file that does not exist
        raises :class:`UserError`."""
        cfg = self.config
        if cfg.feature_term is None:  # feat_loss off, or a texture_loss without a feature-level term
            return "off", None
        path = resolve_weights(cfg.vgg_weights, (VGG19_FILENAME,), option=VGG_WEIGHTS_OPTION)
        if path is not None:
            return "file", path
        if cfg.checkpoint:
            return "missing", default_vgg19_path()
        return "random", None

    def _load_vgg(self, device):
        """VGG19 relu3_1 extractor per the weights policy; sets ``feature_term``."""
        from .vgg import load_vgg19_relu3_1

        kind, path = self._vgg_plan()
        if kind == "off":
            self.feature_term = "off"
            return None
        if kind == "missing":
            raise missing_weights_error("the feature loss's VGG19 ImageNet weights", VGG19_FILENAME,
                                        f"--set {VGG_WEIGHTS_OPTION}", extra=_DISABLE_FEATURE_TERM)
        if kind == "random":
            self.feature_term = "random vgg19 (no weights file)"
            self.vgg_source = {"label": self.feature_term, "seed": RANDOM_VGG_SEED}
            return random_vgg19_relu3_1(RANDOM_VGG_SEED).to(device)
        model = load_vgg19_relu3_1(path, device=device, disable_hint=_DISABLE_FEATURE_TERM)
        sha = sha256_file(path)
        self.feature_term = f"vgg19 weights {path.name} sha256:{sha[:12]}"
        self.vgg_source = {"path": str(path), "sha256": sha}
        return model

    def build_criterion(self, vgg):
        """The per-instance criterion for this config (see :class:`.inverter.InversionCriterion`)."""
        from .inverter import InversionCriterion

        return InversionCriterion(self.config, vgg, self.device)

    def setup(self, device="cpu") -> None:
        from bench.render.uvsphere import uvsphere_template

        from .generator import load_generator
        from .inverter import MeshInverter

        super().setup(device)
        cfg = self.config
        self.generator = load_generator(cfg.checkpoint or "demo", self.device)
        self.template = uvsphere_template(self.device)
        vgg = self._load_vgg(self.device)
        self.criterion = self.build_criterion(vgg)
        self.inverter = MeshInverter(self.generator, self.template, self.criterion, cfg, self.device)
        self._run_warmup_passes()

    def _run_warmup_passes(self) -> None:
        """``warmup_passes`` untimed forward/backward passes (kernel selection, allocator, lazy inits)."""
        passes = self.config.warmup_passes
        if passes <= 0:
            return
        size = self.config.render_size
        inverter = self.inverter
        z = torch.zeros(1, 64, device=self.device, requires_grad=True)
        camera = torch.tensor([_WARMUP_CAMERA], device=self.device)
        pose = camera[:, :1], camera[:, 1:3], camera[:, 3:]
        class_ids = torch.zeros(1, dtype=torch.long, device=self.device)
        with torch.no_grad():
            _, _, out = inverter.forward(z, class_ids, *pose, size)
        image01 = (out.image / 2 + 0.5) * out.mask + (1 - out.mask)
        target = inverter.prepare_target(image01, out.mask[:, 0])
        rngs = [torch.Generator().manual_seed(0)]
        rows = torch.zeros(1, dtype=torch.long, device=self.device)
        for _ in range(passes):
            _, _, out = inverter.forward(z, class_ids, *pose, size)
            total, _ = inverter._losses(out, z, target, rows, rngs)
            total.sum().backward()
        synchronize(self.device)

    # ------------------------------------------------------------------ describe
    def labels(self) -> list[str]:
        """``untrained`` (demo generator), ``random vgg19``, ``no feature loss`` as they apply."""
        labels = []
        if not self.config.checkpoint:
            labels.append("untrained")
        kind, _ = self._vgg_plan()
        if kind == "random":
            labels.append("random vgg19")
        elif kind == "off":
            labels.append("no feature loss")
        return labels

    def describe(self) -> dict[str, Any]:
        """Base manifest entry plus the feature term's source and the generator label."""
        out = super().describe()
        kind, path = self._vgg_plan()
        if kind == "file" and "vgg_weights" not in out["weights"]:
            out["weights"]["vgg19"] = {"path": str(path.resolve()), "sha256": sha256_file(path)}
        out["feature_term"] = {"off": "off", "random": "random vgg19 (no weights file)",
                               "missing": f"missing ({path})"}.get(kind, f"vgg19 weights {path}")
        if self.inverter is not None:
            out["feature_term"] = self.feature_term
        out["generator"] = getattr(self.generator, "label", None) or (
            "untrained demo generator" if not self.config.checkpoint else self.config.checkpoint)
        return out

    # ------------------------------------------------------------------ reconstruct
    def _prepare(self, sample):
        """Sample -> (image01 (3,S,S), mask (S,S), output size (H,W)) at the fit resolution S."""
        size = self.config.render_size
        image = sample.image.to(self.device, torch.float32)
        mask = sample.mask.to(self.device, torch.float32)
        if image.dim() != 3 or image.shape[0] != 3 or mask.shape != image.shape[1:]:
            raise ValueError(f"sample {sample.id}: expected image (3,H,W) and mask (H,W), got "
                             f"{tuple(image.shape)} and {tuple(mask.shape)}")
        output_hw = tuple(image.shape[1:])
        if output_hw != (size, size):
            image = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
            mask = F.interpolate(mask[None, None], size=(size, size), mode="nearest")[0, 0]
        return image.clamp(0, 1), (mask > 0.5).float(), output_hw

    def reconstruct(self, samples: list) -> list[Reconstruction]:
        """Invert a batch of samples (optimised together); one Reconstruction per sample, same order.

        Samples are inverted together per output size (the fit itself is always at ``render_size``);
        a malformed sample fails alone, and a batch that raises is retried instance by instance
        (:func:`bench.failures.reconstruct_in_groups`).
        """
        if self.inverter is None:
            raise RuntimeError("call setup(device) before reconstruct()")
        return reconstruct_in_groups(samples, self._group, self._invert_batch,
                                     lambda sample, message: Reconstruction.failed(sample.id, message))

    def _group(self, sample) -> tuple[tuple[int, int], _Prepared]:
        image, mask, output_hw = self._prepare(sample)
        return output_hw, _Prepared(sample, image, mask, output_hw)

    def _invert_batch(self, items: list[_Prepared]) -> list[Reconstruction]:
        """One :meth:`MeshInverter.invert` over prepared samples of one output size."""
        samples = [item.sample for item in items]
        result = self.inverter.invert(
            torch.stack([item.image for item in items]), torch.stack([item.mask for item in items]),
            torch.tensor([int(sample.class_id) for sample in samples], dtype=torch.long),
            torch.stack([sample.camera.reshape(7).float() for sample in samples]),
            [sample_seed(sample) for sample in samples], output_size=items[0].output_hw,
            searches=[getattr(sample, "camera_search", None) for sample in samples])
        instance_seconds = per_instance(result.timings, len(samples))
        return [self._reconstruction(sample, result, row, instance_seconds) for row, sample in enumerate(samples)]

    def _reconstruction(self, sample, result, row: int, instance_seconds: dict[str, float]) -> Reconstruction:
        """The Reconstruction of row ``row`` of an :class:`.inverter.InversionResult`."""
        if result.errors[row] is not None:
            return Reconstruction.failed(sample.id, result.errors[row])
        mask = result.mask[row, 0].detach().cpu()
        sample_mask = sample.mask.float().cpu()
        iou_final = float(mask_iou(sample_mask, mask)) if sample_mask.shape == mask.shape \
            else float(result.iou_fit[row])
        chosen = int(result.chosen[row])
        return Reconstruction(
            sample_id=sample.id,
            mesh=TexturedMesh(vertices=result.vertices[row].detach().cpu(), faces=self.template.faces.cpu(),
                              face_uvs=self.template.face_uvs.cpu(), texture=result.texture[row].detach().cpu()),
            camera=result.camera[row].detach().cpu(),
            image=(result.image[row].detach().cpu() / 2 + 0.5),
            mask=mask,
            latent=result.latent[row].detach().cpu(),
            timings={stage: instance_seconds[stage] for stage in ("total", "camera_search", "init", "optimize")
                     if stage in instance_seconds},
            losses=result.losses[row],
            info={
                "iou_init": float(result.iou_init[row]),
                "iou_final": iou_final,
                "chosen_candidate": chosen,
                "init_score": float(result.init_scores[row, chosen]),
                "final_terms": result.final_terms[row],
                "feature_term": self.feature_term,
                "labels": self.labels(),
                "batch_size": len(result.errors),
                "batch_timings": dict(result.timings),
                "outputs": "last forward (official, one step behind)" if self.config.stale_outputs else "final",
                "fit_size": self.config.render_size,
                **self._camera_info(result, row),
            },
        )

    @staticmethod
    def _camera_info(result, row: int) -> dict[str, Any]:
        """What the camera search chose for row ``row`` (record keys ``camera_source``, ``camera_init``,
        ``camera_search``), or nothing when the sample's own camera was used."""
        found = result.camera_search[row] if result.camera_search else None
        if found is None:
            return {}
        camera = [float(x) for x in result.camera_init[row]]
        return {"camera_source": "search", "camera_init": camera, "camera_search": found}

    # ------------------------------------------------------------------ profiling
    def profile_stages(self, batch_size: int = 1, repeats: int = 3, seed: int = 0) -> dict[str, list[float]]:
        """Per-stage wall-clock seconds of one inversion iteration (``bench profile``).

        Targets are rendered from the method's own generator at a CUB-like camera; each timed
        iteration runs generator -> render -> VGG -> every loss term -> backward -> Adam step on a
        batch of ``batch_size`` instances. One untimed iteration precedes the ``repeats`` timed
        ones; every stage is timed by :class:`bench.timing.Stopwatch` (CUDA-synchronised).

        Returns:
            {stage: [seconds per repeat]} with stages ``generator``, ``render``, ``vgg``,
            ``loss:mask``, ``loss:pixel``, ``loss:feat``, ``loss:nll``, ``backward``, ``step``,
            ``iteration`` (their sum); disabled terms are absent.
        """
        from bench.render.camera import canonical_quaternion

        from . import losses

        if self.inverter is None:
            raise RuntimeError("call setup(device) before profile_stages()")
        inverter, device, size = self.inverter, self.device, self.config.render_size
        loss_config = self.criterion.loss_config
        rng = torch.Generator().manual_seed(seed)
        batch = int(batch_size)
        camera = torch.cat([torch.full((batch, 1), 0.65), torch.zeros(batch, 2),
                            canonical_quaternion()[None].expand(batch, 4)], 1).to(device)
        class_ids = torch.randint(0, 200, (batch,), generator=rng).to(device)
        with torch.no_grad():
            target_latent = torch.randn(batch, 64, generator=rng).to(device)
            _, _, out = inverter.forward(target_latent, class_ids, camera[:, :1], camera[:, 1:3], camera[:, 3:], size)
            image01 = (out.image / 2 + 0.5) * out.mask + (1 - out.mask)
        target = inverter.prepare_target(image01, out.mask[:, 0])
        z = torch.randn(batch, 64, generator=rng).to(device).requires_grad_(True)
        scale = (camera[:, :1] * 0.95).clone().requires_grad_(True)
        translation = (camera[:, 1:3] + 0.02).clone().requires_grad_(True)
        rotation = camera[:, 3:].clone().requires_grad_(True)
        z_optim, pose_optim, _ = inverter._make_optimizers(z, scale, translation, rotation)

        def iteration(stopwatch: Stopwatch) -> None:
            z_optim.zero_grad()
            pose_optim.zero_grad()
            with stopwatch("generator"):
                texture, mesh_map = inverter.generate(z, class_ids)
            with stopwatch("render"):
                rendered = render(self.template, texture, mesh_map, scale, translation, rotation, size)
            total = 0
            if loss_config.mask_loss:
                with stopwatch("loss:mask"):
                    term = losses.chamfer_mask_loss(rendered.vtx_xy, target.points.xy, target.points.lengths,
                                                    loss_config.chunk_size)
                total = total + loss_config.mask_loss_weight * term
            if loss_config.pixel_term is not None:
                with stopwatch("loss:pixel"):
                    term = losses.pixel_level_loss(rendered.image, rendered.mask, target, loss_config, generator=rng)
                total = total + loss_config.pixel_loss_weight * term
            if loss_config.feature_term is not None:
                with stopwatch("vgg"):
                    features = self.criterion.vgg(rendered.image, rendered.mask)
                with stopwatch("loss:feat"):
                    term = losses.feature_level_loss(features, rendered.mask, target, loss_config, generator=rng)
                total = total + loss_config.feat_loss_weight * term
            if loss_config.nll_loss:
                with stopwatch("loss:nll"):
                    term = losses.nll_loss(z)
                total = total + loss_config.nll_loss_weight * term
            with stopwatch("backward"):
                total.sum().backward()
            with stopwatch("step"):
                z_optim.step()
                pose_optim.step()

        iteration(Stopwatch(device))  # warm-up iteration, not reported
        stopwatch = Stopwatch(device)
        for _ in range(repeats):
            iteration(stopwatch)
        times = {stage: list(laps) for stage, laps in stopwatch.laps.items()}
        times["iteration"] = [sum(laps[i] for laps in times.values()) for i in range(repeats)]
        return times
