"""Methods ``cmr`` (feed-forward CMR) and ``cmr-tto`` (CMR + test-time optimisation).

The shared machinery (:class:`MeshNetMethod`, :class:`MeshNetTTOMethod`) also serves UMR
(:mod:`bench.methods.umr.method`).

Weights: config ``checkpoint`` = the released ``pred_net_500.pth`` (strict load, one-line
`UserError` on a wrong file). Without it the network gets seeded random weights and every output
is labelled ``untrained``. ``cmr-tto`` also needs torchvision's ImageNet AlexNet weights for its
perceptual term (``perceptual_weights`` or the torch hub cache; never downloaded); untrained runs
fall back to seeded random AlexNet weights, labelled ``perceptual-random-alexnet``.

Output frame (see :mod:`bench.methods.cmr.rendering`): every `Reconstruction` holds the mesh in
the object frame shared with MeshInversion (y up, mirror plane x = 0) and the camera
``[s, tx, ty, q]`` such that ``bench.render.camera.project(mesh.vertices, s, t, q)`` reproduces the
model's own projection. CMR's frame *is* that frame (its cameras are SfM-aligned like
MeshInversion's), so CMR needs no conversion; faces are only re-wound outwards.

Reconstruction fields: ``image`` (3,H,W) in [0,1], the two-sided textured render at the sample's
resolution with background 0.5; ``mask`` (H,W) the hard mask; ``latent`` (200,); ``timings``
``total`` / ``optimize`` / ``encode`` / ``render`` per instance (the batch's CUDA-synchronised wall
time divided by the batch size; the whole batch's times are in ``info["batch_timings"]``);
``losses`` the per-step objective.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch

from bench.errors import UserError
from bench.methods.base import Method, Reconstruction, TexturedMesh
from bench.methods.cmr.checkpoint import load_checkpoint
from bench.methods.cmr.nets import CMRMeshNet, build_seeded, sample_texture
from bench.methods.cmr.rendering import (BACKGROUND, inward_faces, outward_faces_and_textures, pose,
                                         render_textured, to_shared_frame)

UNTRAINED = "untrained"


# --------------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------------
@dataclass
class CMRConfig:
    """``cmr``: feed-forward CMR.

    Attributes:
        checkpoint: released ``pred_net_500.pth``; None -> seeded random weights ("untrained").
        seed: seed of the untrained weights.
        warmup: run one dummy forward in `setup` so that the first instance's timings do not
            include one-off kernel initialisation.
    """

    checkpoint: Optional[str] = None
    seed: int = 0
    warmup: bool = True


@dataclass
class CMRTTOConfig(CMRConfig):
    """``cmr-tto``: CMR + test-time optimisation of latent and camera (MeshInversion supplement).

    Attributes:
        perceptual_weights: torchvision AlexNet ImageNet state dict (``alexnet-owt-7be5be79.pth``);
            None -> the torch hub cache, else (untrained only) seeded random weights.
        iterations: Adam steps in total, split evenly over the ``pose_lrs`` stages (200 = 4 × 50).
        latent_lr: constant lr of the latent.
        pose_lrs: per-stage lr of (s, t, q).
        betas: Adam betas of both optimisers.
        render_size: resolution of the loss renders (the output render is at the sample's size).
        mask_weight, texture_weight: loss weights (CMR training: 2 and 0.5).
        renormalize_quat: open choice: use q/|q| in the projection (default True; the supplement
            does not say; False = MeshInversion's raw quaternion).
        detach_texture_geometry: open choice: the textured render sees detached vertices and camera
            (as in training; default True).
        camera_init: ``head`` (the supplement: the network's camera head) or ``sample`` (the
            sample's own initial camera, e.g. SfM / CMR-pred, as MeshInversion uses).
        sigmainv: sharpness of the DIB-R soft silhouette used by the mask term.
    """

    perceptual_weights: Optional[str] = None
    iterations: int = 200
    latent_lr: float = 5e-3
    pose_lrs: list[float] = field(default_factory=lambda: [1e-2, 5e-3, 1e-3, 5e-4])
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])
    render_size: int = 256
    mask_weight: float = 2.0
    texture_weight: float = 0.5
    renormalize_quat: bool = True
    detach_texture_geometry: bool = True
    camera_init: str = "head"
    sigmainv: float = 7000.0


FAST_TTO = {"iterations": 20, "render_size": 128}


# --------------------------------------------------------------------------------------------------
# shared machinery
# --------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MeshNetMethod(Method):
    """Feed-forward prediction with a CMR-style mesh net (subclasses set the model)."""

    model_name: ClassVar[str] = "CMR"
    tto: ClassVar[bool] = False

    def __init__(self, config):
        super().__init__(config)
        self.net = None
        self.perceptual = None
        self._labels: list[str] = []
        self._load_info: dict[str, Any] = {}

    # -- model -------------------------------------------------------------------------------
    def build_net(self, seed: int | None):
        return build_seeded(CMRMeshNet, seed)

    def configure_net(self, net) -> None:
        """Apply config options to the network (UMR: hypothesis choice, shape code)."""

    def frame_quaternion(self):
        return self.net.frame_quaternion

    def labels(self) -> list[str]:
        """``untrained`` without a checkpoint; ``perceptual-random-alexnet`` when the TTO's
        perceptual term runs on random AlexNet weights (known before `setup`)."""
        out = [UNTRAINED] if not self.config.checkpoint else []
        if self.tto and not self.config.checkpoint:
            from bench.methods.cmr.perceptual import RANDOM_LABEL, hub_alexnet_path

            if self.perceptual is not None:
                random_alex = str(self.perceptual.source).startswith("random")
            else:
                random_alex = not self.config.perceptual_weights and hub_alexnet_path() is None
            if random_alex:
                out.append(RANDOM_LABEL)
        return out

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        labels = list(out.get("labels", []))
        for lab in self.labels():
            if lab not in labels:
                labels.append(lab)
        out["labels"] = labels
        if self._load_info:
            out["checkpoint_info"] = dict(self._load_info)
        if self.perceptual is not None:
            out["perceptual_weights_source"] = self.perceptual.source
        return out

    def validate(self) -> None:
        """Check config values before anything is loaded (raise `UserError`)."""

    def setup(self, device) -> None:
        self.validate()
        super().setup(device)
        cfg = self.config
        if self.tto:  # first: a missing AlexNet file should fail before a 340 MB checkpoint is read
            from bench.methods.cmr.perceptual import build_perceptual

            self.perceptual = build_perceptual(cfg.perceptual_weights, allow_random=not cfg.checkpoint,
                                               seed=cfg.seed, owner=self.name).to(self.device)
        if cfg.checkpoint:
            net = self.build_net(None)
            self._load_info = load_checkpoint(net, cfg.checkpoint, self.model_name)
        else:
            net = self.build_net(cfg.seed)
            self._load_info = {"untrained": True, "seed": int(cfg.seed)}
        self.after_load(net)
        self.configure_net(net)
        net.eval().requires_grad_(False)
        self.net = net.to(self.device)
        self._inward = torch.from_numpy(inward_faces(self.net.template.vertices, self.net.template.faces)).to(self.device)
        self._labels = self.labels()
        if getattr(cfg, "warmup", False):
            self._warmup()

    def _warmup(self) -> None:
        """One forward (and, for TTO, one backward) pass on a dummy input; nothing is kept."""
        dummy = torch.full((1, 3, 256, 256), 0.5, device=self.device)
        with torch.enable_grad():
            enc = self.net.encode(dummy, seed=0)
            z = enc["latent"].detach().requires_grad_(self.tto)
            flow = self.net.texture_flow(z)
            if self.tto:
                flow.sum().backward()
        _sync(self.device)

    def after_load(self, net) -> None:
        """Hook after weights are in place (UMR: check the checkpoint's UV sampler)."""

    # -- batch -------------------------------------------------------------------------------
    def reconstruct(self, samples: list) -> list[Reconstruction]:
        if self.net is None:
            raise RuntimeError(f"{self.name}: call setup(device) before reconstruct()")
        out: dict[int, Reconstruction] = {}
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(samples):
            problem = self._check_sample(s)
            if problem:
                out[i] = Reconstruction.failed(getattr(s, "id", str(i)), problem)
            else:
                groups.setdefault(tuple(s.image.shape[-2:]), []).append(i)
        for idx in groups.values():
            batch = [samples[i] for i in idx]
            try:
                recs = self._reconstruct_batch(batch)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - fall back to one by one
                if len(batch) == 1:
                    recs = [Reconstruction.failed(batch[0].id, f"{type(exc).__name__}: {exc}")]
                else:
                    recs = []
                    for s in batch:
                        try:
                            recs += self._reconstruct_batch([s])
                        except UserError:
                            raise
                        except Exception as exc1:  # noqa: BLE001
                            recs.append(Reconstruction.failed(s.id, f"{type(exc1).__name__}: {exc1}"))
            for i, r in zip(idx, recs):
                out[i] = r
        return [out[i] for i in range(len(samples))]

    @staticmethod
    def _check_sample(s) -> str | None:
        if not hasattr(s, "image") or not hasattr(s, "mask"):
            return getattr(s, "error", None) or "not a Sample"
        img, mask = s.image, s.mask
        if not torch.is_tensor(img) or img.dim() != 3 or img.shape[0] != 3:
            return f"image must be a (3,H,W) tensor, got {tuple(getattr(img, 'shape', ()))}"
        if not torch.is_tensor(mask) or tuple(mask.shape) != tuple(img.shape[-2:]):
            return f"mask must be (H,W) = {tuple(img.shape[-2:])}, got {tuple(getattr(mask, 'shape', ()))}"
        if not torch.isfinite(img).all() or not torch.isfinite(mask).all():
            return "image or mask holds non-finite values"
        cam = getattr(s, "camera", None)
        if cam is not None and (not torch.is_tensor(cam) or cam.numel() != 7):
            return f"camera must have 7 entries, got shape {tuple(getattr(cam, 'shape', ()))}"
        return None

    def _inputs(self, batch):
        dev = self.device
        image = torch.stack([s.image.float() for s in batch]).to(dev).clamp(0, 1)
        mask = torch.stack([s.mask.float() for s in batch]).to(dev)
        return image, mask

    def _encode(self, image):
        return self.net.encode(image, seed=self.config.seed)

    def _optimize(self, batch, image, mask, enc) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Feed-forward: the encoder's latent and the camera head's camera."""
        return enc["latent"], enc["camera"], {}

    def _reconstruct_batch(self, batch) -> list[Reconstruction]:
        dev = self.device
        B = len(batch)
        _sync(dev)
        t0 = time.perf_counter()
        image, mask = self._inputs(batch)
        with torch.no_grad():
            enc = self._encode(image)
        _sync(dev)
        t1 = time.perf_counter()
        latent, camera, extra = self._optimize(batch, image, mask, enc)
        _sync(dev)
        t2 = time.perf_counter()
        with torch.no_grad():
            verts = self.net.decode_shape(latent, enc)
            tex = sample_texture(image, self.net.texture_flow(latent), self.net.texture_align_corners)
            H, W = image.shape[-2:]
            renorm = bool(getattr(self.config, "renormalize_quat", True))
            posed = pose(verts, camera, renorm)
            rimg, rmask, _ = render_textured(posed, self.net.faces, tex, (H, W), background=BACKGROUND)
            if renorm:
                camera = torch.cat([camera[:, :3], camera[:, 3:] / camera[:, 3:].norm(dim=1, keepdim=True)], 1)
            v_shared, cam_shared = to_shared_frame(verts, camera, self.frame_quaternion())
            faces_out, tex_out = outward_faces_and_textures(self.net.faces, tex, self._inward)
        _sync(dev)
        t3 = time.perf_counter()
        batch_time = t3 - t0
        recs = []
        for b, s in enumerate(batch):
            batch_timings = {"total": batch_time, "optimize": (t2 - t1) if self.tto else 0.0, "encode": t1 - t0,
                             "render": t3 - t2}
            info = {"labels": list(self._labels), "model": self.model_name, "batch_size": B,
                    "batch_timings": batch_timings,
                    "camera_model_frame": [float(x) for x in camera[b].cpu()],
                    "frame_quaternion": [float(x) for x in self.frame_quaternion()]}
            info.update(self._extra_info(enc, extra, b))
            losses = [float(x) for x in extra["losses"][:, b].cpu()] if "losses" in extra else []
            rec = Reconstruction(
                sample_id=s.id,
                mesh=TexturedMesh(vertices=v_shared[b].float().cpu(), faces=faces_out.cpu(),
                                  face_textures=(tex_out[b] * 2 - 1).float().cpu()),
                camera=cam_shared[b].float().cpu(),
                image=rimg[b].float().cpu(),
                mask=rmask[b].float().cpu(),
                latent=latent[b].detach().float().cpu(),
                timings={k: v / B for k, v in batch_timings.items()},
                losses=losses,
                info=info,
            )
            problem = _non_finite(rec)
            if problem:
                rec = Reconstruction.failed(s.id, problem)
            recs.append(rec)
        return recs

    def _extra_info(self, enc, extra, b) -> dict:
        out = {}
        if "losses" in extra and extra["losses"].shape[0]:
            out["loss_initial"] = float(extra["losses"][0, b])
            out["loss_final"] = float(extra["losses"][-1, b])
            out["loss_terms_final"] = {k: float(v[-1, b]) for k, v in extra["terms"].items() if v.shape[0]}
        if "camera_init" in extra:
            out["camera_tto_init"] = [float(x) for x in extra["camera_init"][b].cpu()]
        if "perceptual" in extra:
            out["perceptual_weights"] = extra["perceptual"]
        return out


def _non_finite(rec: Reconstruction) -> str | None:
    for name in ("camera", "image", "mask", "latent"):
        v = getattr(rec, name)
        if v is not None and not torch.isfinite(v).all():
            return f"non-finite values in the reconstruction's {name}"
    if rec.mesh is not None and (not torch.isfinite(rec.mesh.vertices).all()
                                 or not torch.isfinite(rec.mesh.face_textures).all()):
        return "non-finite values in the reconstructed mesh"
    return None


class MeshNetTTOMethod(MeshNetMethod):
    """Feed-forward prediction refined by test-time optimisation (:mod:`bench.methods.cmr.tto`)."""

    tto: ClassVar[bool] = True
    loss_kind: ClassVar[str] = "cmr"

    def settings(self):
        from bench.methods.cmr.tto import TTOSettings

        c = self.config
        if c.iterations < 0:
            raise UserError(f"{self.name}.iterations must be >= 0, got {c.iterations}")
        if not c.pose_lrs:
            raise UserError(f"{self.name}.pose_lrs must list at least one learning rate")
        if c.render_size < 32:
            raise UserError(f"{self.name}.render_size must be >= 32 (the AlexNet of the perceptual term "
                            f"needs it), got {c.render_size}")
        if c.camera_init not in ("head", "sample"):
            raise UserError(f"{self.name}.camera_init must be 'head' or 'sample', got {c.camera_init!r}")
        return TTOSettings(iterations=int(c.iterations), latent_lr=float(c.latent_lr),
                           pose_lrs=tuple(float(x) for x in c.pose_lrs), betas=tuple(float(x) for x in c.betas),
                           render_size=int(c.render_size), loss=self.loss_kind, mask_weight=float(c.mask_weight),
                           texture_weight=float(c.texture_weight), renormalize_quat=bool(c.renormalize_quat),
                           detach_texture_geometry=bool(c.detach_texture_geometry), sigmainv=float(c.sigmainv))

    def validate(self) -> None:
        super().validate()
        self.settings()

    def _initial_camera(self, batch, enc) -> torch.Tensor:
        if self.config.camera_init == "sample":
            cam = torch.stack([s.camera.float().reshape(7) for s in batch]).to(self.device)
            # the sample camera lives in the shared frame: bring it to the model's frame
            from bench.render.camera import quat_mul

            qf = torch.as_tensor(self.frame_quaternion(), dtype=cam.dtype, device=cam.device).reshape(1, 4)
            qf = qf / qf.norm()
            q = quat_mul(cam[:, 3:7], qf.expand(len(batch), 4))
            return torch.cat([cam[:, :3], q], dim=1)
        return enc["camera"]

    def _optimize(self, batch, image, mask, enc):
        from bench.methods.cmr.tto import prepare, run_tto

        st = self.settings()
        cam0 = self._initial_camera(batch, enc)
        data = prepare(image, mask, st.render_size, state=enc)
        with torch.enable_grad():
            res = run_tto(self.net, self.perceptual, data, enc["latent"], cam0, st)
        return res["latent"], res["camera"], {"losses": res["losses"], "terms": res["terms"],
                                               "camera_init": cam0, "perceptual": self.perceptual.source}


# --------------------------------------------------------------------------------------------------
# registered methods
# --------------------------------------------------------------------------------------------------
class CMRMethod(MeshNetMethod):
    """CMR feed-forward prediction (one encoder pass)."""

    name = "cmr"
    summary = "CMR feed-forward prediction (one encoder pass)"
    Config = CMRConfig
    profiles = {"paper": {}, "fast": {}}
    model_name = "CMR"


class CMRTTOMethod(MeshNetTTOMethod):
    """CMR + test-time optimisation of latent and camera (mask MSE ×2 + perceptual ×0.5)."""

    name = "cmr-tto"
    summary = "CMR + test-time optimisation of latent and camera (mask MSE + perceptual)"
    Config = CMRTTOConfig
    profiles = {"paper": {}, "fast": dict(FAST_TTO)}
    model_name = "CMR"
    loss_kind = "cmr"
