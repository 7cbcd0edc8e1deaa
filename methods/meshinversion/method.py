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
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.errors import UserError
from bench.manifest import sha256_file
from bench.methods.base import Method, Reconstruction, TexturedMesh

from .config import PROFILES, InversionConfig
from .render import render

#: seed of the random VGG19 used when no weights file exists (demo generator only).
RANDOM_VGG_SEED = 123


def random_vgg19_relu3_1(seed: int = RANDOM_VGG_SEED):
    """VGG19 relu3_1 with seeded random weights (torchvision's init: Kaiming-normal fan-out, zero
    bias), drawn from a private generator so the global RNG is untouched."""
    from .vgg import VGGRelu31

    model = VGGRelu31()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_out))
                m.bias.zero_()
    return model


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, RuntimeError) and ("out of memory" in str(exc).lower()
                                              or "not enough memory" in str(exc).lower())


class MeshInversionMethod(Method):
    """MeshInversion (Zhang et al., ECCV 2022): GAN inversion with Chamfer losses and 4-stage Adam."""

    name = "ours"
    summary = "MeshInversion: GAN inversion of the ConvMesh generator (Chamfer losses, 4-stage Adam)"
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
    def _load_vgg(self, device):
        """VGG19 relu3_1 extractor per the weights policy; sets ``feature_term``."""
        from . import vgg as vgg_mod

        cfg = self.config
        if not cfg.feat_loss:
            self.feature_term = "off"
            return None
        path = Path(cfg.vgg_weights).expanduser() if cfg.vgg_weights else vgg_mod.default_vgg19_path()
        if not path.is_file():
            if cfg.vgg_weights:
                raise UserError(f"VGG19 weights file not found: {cfg.vgg_weights} (pass an existing "
                                f"vgg19-dcbb9e9d.pth, or --set ours.feat_loss=false)")
            if cfg.checkpoint:
                raise UserError(
                    f"the feature loss needs torchvision's VGG19 ImageNet weights: put vgg19-dcbb9e9d.pth in "
                    f"{vgg_mod.default_vgg19_path()} (or pass --set ours.vgg_weights=PATH), or disable the term "
                    f"with --set ours.feat_loss=false")
            self.feature_term = "random vgg19 (no weights file)"
            self.vgg_source = {"label": self.feature_term, "seed": RANDOM_VGG_SEED}
            return random_vgg19_relu3_1(RANDOM_VGG_SEED).to(device)
        model = vgg_mod.load_vgg19_relu3_1(path, disable_hint="or disable the term with --set ours.feat_loss=false")
        model = model.to(device)
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
        self._warm_up()

    def _warm_up(self) -> None:
        """Untimed forward/backward passes (kernel selection, allocator, lazy inits)."""
        n = self.config.warmup_iterations
        if n <= 0:
            return
        size = self.config.render_size
        z = torch.zeros(1, 64, device=self.device, requires_grad=True)
        cam = torch.tensor([[0.6, 0.0, 0.0, 0.612372, 0.353553, -0.612372, 0.353553]], device=self.device)
        c = torch.zeros(1, dtype=torch.long, device=self.device)
        with torch.no_grad():
            _, _, out = self.inverter.forward(z, c, cam[:, :1], cam[:, 1:3], cam[:, 3:], size)
        image01 = (out.image / 2 + 0.5) * out.mask + (1 - out.mask)
        target = self.inverter.prepare_target(image01, out.mask[:, 0])
        gen = [torch.Generator().manual_seed(0)]
        rows = torch.zeros(1, dtype=torch.long, device=self.device)
        for _ in range(n):
            _, _, out = self.inverter.forward(z, c, cam[:, :1], cam[:, 1:3], cam[:, 3:], size)
            total, _ = self.inverter._losses(out, z, target, rows, gen)
            total.sum().backward()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ describe
    def _vgg_plan(self) -> tuple[str, Path | None]:
        """Where the feature term's VGG19 comes from, decided without loading anything:
        ("off" | "file" | "random" | "missing", path)."""
        from .vgg import default_vgg19_path

        cfg = self.config
        if not cfg.feat_loss:
            return "off", None
        path = Path(cfg.vgg_weights).expanduser() if cfg.vgg_weights else default_vgg19_path()
        if path.is_file():
            return "file", path
        if cfg.vgg_weights or cfg.checkpoint:
            return "missing", path
        return "random", None

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
        out_hw = tuple(image.shape[1:])
        if out_hw != (size, size):
            image = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
            mask = F.interpolate(mask[None, None], size=(size, size), mode="nearest")[0, 0]
        return image.clamp(0, 1), (mask > 0.5).float(), out_hw

    def reconstruct(self, samples: list) -> list[Reconstruction]:
        """Invert a batch of samples (optimised together); one Reconstruction per sample, same order."""
        if self.inverter is None:
            raise RuntimeError("call setup(device) before reconstruct()")
        results: list[Reconstruction | None] = [None] * len(samples)
        prepared = []
        for i, s in enumerate(samples):
            try:
                prepared.append((i, *self._prepare(s)))
            except Exception as exc:  # noqa: BLE001 - a bad sample fails alone
                results[i] = Reconstruction.failed(s.id, f"{type(exc).__name__}: {exc}")
        # one inversion batch per output size (the fit itself is always at render_size)
        groups: dict[tuple, list] = {}
        for item in prepared:
            groups.setdefault(item[3], []).append(item)
        for out_hw, items in groups.items():
            for idx, rec in self._invert_group([samples[i] for i, *_ in items], items, out_hw):
                results[idx] = rec
        return results  # type: ignore[return-value]

    def _invert_group(self, samples, items, out_hw):
        try:
            return list(zip([i for i, *_ in items], self._invert_batch(samples, items, out_hw)))
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            if len(items) == 1:
                kind = "out of memory" if _is_oom(exc) else type(exc).__name__
                return [(items[0][0], Reconstruction.failed(samples[0].id, f"{kind}: {exc}"))]
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            # retry one by one so the other instances of the batch still succeed
            out = []
            for s, item in zip(samples, items):
                out.extend(self._invert_group([s], [item], out_hw))
            return out

    def _invert_batch(self, samples, items, out_hw) -> list[Reconstruction]:
        from .inverter import instance_seed, mask_iou

        cfg = self.config
        images = torch.stack([it[1] for it in items])
        masks = torch.stack([it[2] for it in items])
        class_ids = torch.tensor([int(s.class_id) for s in samples], dtype=torch.long)
        cameras = torch.stack([s.camera.reshape(7).float() for s in samples])
        seeds = [instance_seed(cfg.seed, s.id) for s in samples]
        res = self.inverter.invert(images, masks, class_ids, cameras, seeds, output_size=out_hw)
        B = len(samples)
        faces = self.template.faces.cpu()
        face_uvs = self.template.face_uvs.cpu()
        per = {k: v / B for k, v in res.timings.items()}
        recs = []
        for b, s in enumerate(samples):
            if res.errors[b] is not None:
                recs.append(Reconstruction.failed(s.id, res.errors[b]))
                continue
            mask = res.mask[b, 0].detach().cpu()
            sample_mask = s.mask.float().cpu()
            iou_final = float(mask_iou(sample_mask[None], mask[None])[0]) if sample_mask.shape == mask.shape \
                else float(res.iou_fit[b])
            recs.append(Reconstruction(
                sample_id=s.id,
                mesh=TexturedMesh(vertices=res.vertices[b].detach().cpu(), faces=faces, face_uvs=face_uvs,
                                  texture=res.texture[b].detach().cpu()),
                camera=res.camera[b].detach().cpu(),
                image=(res.image[b].detach().cpu() / 2 + 0.5),
                mask=mask,
                latent=res.latent[b].detach().cpu(),
                timings={"total": per["total"], "init": per["init"], "optimize": per["optimize"]},
                losses=res.losses[b],
                info={
                    "iou_init": float(res.iou_init[b]),
                    "iou_final": iou_final,
                    "chosen_candidate": int(res.chosen[b]),
                    "init_score": float(res.init_scores[b, res.chosen[b]]),
                    "final_terms": res.final_terms[b],
                    "feature_term": self.feature_term,
                    "labels": self.labels(),
                    "batch_size": B,
                    "batch_timings": dict(res.timings),
                    "outputs": "last forward (official, one step behind)" if cfg.stale_outputs else "final",
                    "fit_size": cfg.render_size,
                },
            ))
        return recs

    # ------------------------------------------------------------------ profiling
    def profile_stages(self, batch_size: int = 1, repeats: int = 3, seed: int = 0) -> dict[str, list[float]]:
        """Per-stage wall-clock seconds of one inversion iteration (``bench profile``).

        Targets are rendered from the method's own generator at a CUB-like camera; each timed
        iteration runs generator -> render -> VGG -> every loss term -> backward -> Adam step on a
        batch of ``batch_size`` instances. One untimed iteration precedes the ``repeats`` timed
        ones; on CUDA the device is synchronised around every stage.

        Returns:
            {stage: [seconds per repeat]} with stages ``generator``, ``render``, ``vgg``,
            ``loss:mask``, ``loss:pixel``, ``loss:feat``, ``loss:nll``, ``backward``, ``step``,
            ``iteration`` (their sum); disabled terms are absent.
        """
        from bench.render.camera import canonical_quaternion

        from . import losses as L

        if self.inverter is None:
            raise RuntimeError("call setup(device) before profile_stages()")
        cfg, dev, inv = self.config, self.device, self.inverter
        size = cfg.render_size
        gen = torch.Generator().manual_seed(seed)
        B = int(batch_size)
        cam = torch.cat([torch.full((B, 1), 0.65), torch.zeros(B, 2), canonical_quaternion()[None].expand(B, 4)], 1)
        cam = cam.to(dev)
        classes = torch.randint(0, 200, (B,), generator=gen).to(dev)
        with torch.no_grad():
            z_t = torch.randn(B, 64, generator=gen).to(dev)
            _, _, out = inv.forward(z_t, classes, cam[:, :1], cam[:, 1:3], cam[:, 3:], size)
            image01 = (out.image / 2 + 0.5) * out.mask + (1 - out.mask)
        target = inv.prepare_target(image01, out.mask[:, 0])
        lc = self.criterion.loss_config
        z = torch.randn(B, 64, generator=gen).to(dev).requires_grad_(True)
        scale = (cam[:, :1] * 0.95).clone().requires_grad_(True)
        trans = (cam[:, 1:3] + 0.02).clone().requires_grad_(True)
        rot = cam[:, 3:].clone().requires_grad_(True)
        z_optim, pose_optim, _ = inv._make_optimizers(z, scale, trans, rot)
        times: dict[str, list[float]] = {}

        def timed(name, fn):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t = time.perf_counter()
            value = fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.setdefault(name, []).append(time.perf_counter() - t)
            return value

        for it in range(repeats + 1):
            z_optim.zero_grad()
            pose_optim.zero_grad()
            tex, mm = timed("generator", lambda: inv.generate(z, classes))
            rout = timed("render", lambda: render(self.template, tex, mm, scale, trans, rot, size))
            total = 0
            if lc.use_mask:
                total = total + lc.mask_wt * timed("loss:mask", lambda: L.chamfer_mask_loss(
                    rout.vtx_xy, target.points.xy, target.points.lengths, lc.chunk_size))
            if lc.use_pixel:
                total = total + lc.pixel_wt * timed("loss:pixel", lambda: L.pixel_texture_loss(
                    rout.image, rout.mask, target.points, lc, generator=gen))
            if lc.use_feat:
                feats = timed("vgg", lambda: self.criterion.vgg(rout.image, rout.mask))
                total = total + lc.feat_wt * timed("loss:feat", lambda: L.feat_texture_loss(
                    feats, rout.mask, target.feat_points, lc, generator=gen))
            if lc.use_nll:
                total = total + lc.nll_wt * timed("loss:nll", lambda: L.nll_loss(z))
            timed("backward", lambda: total.sum().backward())
            timed("step", lambda: (z_optim.step(), pose_optim.step()))
            if it == 0:  # warm-up iteration, not reported
                times.clear()
        times["iteration"] = [sum(v[i] for v in times.values()) for i in range(repeats)]
        return times
