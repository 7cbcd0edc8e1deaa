"""Methods ``cmr`` (feed-forward CMR) and ``cmr-tto`` (CMR + test-time optimisation).

The shared machinery (:class:`MeshNetMethod`, :class:`MeshNetTTOMethod`) also serves UMR
(:mod:`bench.methods.umr.method`).

Weights: config ``checkpoint`` = the released ``pred_net_500.pth`` (strict load, one-line
`UserError` on a wrong file). Without it the network gets random weights seeded with
``weights_seed`` and every output is labelled ``untrained``. ``cmr-tto`` also needs torchvision's
ImageNet AlexNet weights for its perceptual term (``perceptual_weights`` or the torch hub cache; never downloaded); untrained runs
fall back to random AlexNet weights (``weights_seed``), labelled ``perceptual-random-alexnet``.

Randomness: CMR and CMR-TTO have none per instance (one deterministic encoder pass, a deterministic
TTO), so ``bench run --seed`` does not change their records; UMR's ``sample`` options draw from
``bench.seeds.sample_seed(sample)``.

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

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from bench.config import check_fields, option, require
from bench.errors import InstanceError
from bench.failures import find_non_finite, reconstruct_in_groups
from bench.methods.base import Method, Reconstruction, TexturedMesh
from bench.methods.cmr.checkpoint import load_checkpoint
from bench.methods.cmr.nets import IMG_SIZE, CMRMeshNet, build_seeded, sample_texture
from bench.methods.cmr.perceptual import RANDOM_LABEL, build_perceptual, find_alexnet_weights
from bench.methods.cmr.rendering import (BACKGROUND, inward_faces, outward_faces_and_textures, pose,
                                         render_textured, to_shared_frame, unit_quaternion_camera)
from bench.methods.cmr.tto import TTOSettings, prepare, run_tto
from bench.render.camera import quat_mul
from bench.seeds import sample_seed
from bench.timing import Stopwatch, per_instance, synchronize

UNTRAINED = "untrained"
CAMERA_INITS = ("head", "sample")


# --------------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------------
@dataclass
class CMRConfig:
    """``cmr``: feed-forward CMR; its fields are shared by every CMR / UMR method."""

    checkpoint: Optional[str] = option(None, help="the released checkpoint (CMR: pred_net_500.pth, UMR: "
                                                  "pred_net_latest.pth), loaded strictly; none = random "
                                                  "weights seeded with weights_seed, labelled untrained")
    weights_seed: int = option(0, help="seed of the random network weights used without a checkpoint (and of "
                                       "an untrained TTO run's random AlexNet); not a per-instance seed",
                               ge=0, lt=2 ** 63)
    warmup_passes: int = option(1, ge=0, help="untimed passes on a dummy input in setup (forward; TTO: forward + "
                                        "backward), so the first timings exclude one-off initialisation; 0 = off")

    def __post_init__(self):
        check_fields(self)  # types and the ranges stated in option(...)


@dataclass
class CMRTTOConfig(TTOSettings, CMRConfig):
    """``cmr-tto``: CMR + test-time optimisation of latent and camera (MeshInversion supplement).

    The TTO hyper-parameters and their defaults are :class:`bench.methods.cmr.tto.TTOSettings`'s.
    """

    perceptual_weights: Optional[str] = option(None, help="torchvision ImageNet AlexNet state dict "
                                                          "(alexnet-owt-7be5be79.pth) of the perceptual term; "
                                                          "none = the torch hub cache, else (untrained runs only) "
                                                          "random AlexNet weights seeded with weights_seed")
    camera_init: str = option("head", help="initial TTO camera: head (the supplement: the network's camera head) "
                                           "or sample (the sample's own camera, e.g. SfM / CMR-pred, as "
                                           "MeshInversion uses)")

    def __post_init__(self):
        CMRConfig.__post_init__(self)
        TTOSettings.__post_init__(self)
        require(self.camera_init in CAMERA_INITS, "camera_init", "must be 'head' or 'sample'", self.camera_init)


FAST_TTO = {"iterations": 20, "render_size": 128}


# --------------------------------------------------------------------------------------------------
# shared machinery
# --------------------------------------------------------------------------------------------------
@dataclass
class RenderedBatch:
    """Decoded and rendered outputs of a batch (B instances), ready to become records."""

    latent: torch.Tensor          # (B,D)
    camera_model: torch.Tensor    # (B,7) in the model's frame (q normalised when the projection does)
    vertices: torch.Tensor        # (B,V,3) shared frame
    camera: torch.Tensor          # (B,7) shared frame
    faces: torch.Tensor           # (F,3) outward windings
    face_textures: torch.Tensor   # (B,F,T,T,3) in [0,1], matching ``faces``
    image: torch.Tensor           # (B,3,H,W) input-view render, background 0.5
    mask: torch.Tensor            # (B,H,W) hard mask


class MeshNetMethod(Method):
    """Feed-forward prediction with a CMR-style mesh net (subclasses set the network class)."""

    model_name: ClassVar[str] = "CMR"
    network_class: ClassVar[type] = CMRMeshNet
    tto: ClassVar[bool] = False

    def __init__(self, config):
        super().__init__(config)
        self.net = None
        self.perceptual = None
        self._labels: list[str] = []
        self._load_info: dict[str, Any] = {}

    # -- model -------------------------------------------------------------------------------
    def build_net(self, seed: int | None):
        """The network; with a ``seed``: random weights drawn under it (untrained stand-in)."""
        return build_seeded(self.network_class, seed)

    def configure_net(self, net) -> None:
        """Apply config options to the network (UMR: hypothesis choice, shape code)."""

    def after_load(self, net) -> None:
        """Hook after weights are in place (UMR: check the checkpoint's UV sampler)."""

    def frame_quaternion(self):
        return self.net.frame_quaternion

    def renormalize_quat(self) -> bool:
        """Whether the projection uses q/|q| (the camera head's q is already unit)."""
        return True

    def labels(self) -> list[str]:
        """``untrained`` without a checkpoint (known before `setup`)."""
        return [] if self.config.checkpoint else [UNTRAINED]

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        labels = list(out.get("labels", []))
        labels += [lab for lab in self.labels() if lab not in labels]
        out["labels"] = labels
        if self._load_info:
            out["checkpoint_info"] = dict(self._load_info)
        if self.perceptual is not None:
            out["perceptual_weights_source"] = self.perceptual.source
        return out

    # -- setup -------------------------------------------------------------------------------
    def setup(self, device) -> None:
        super().setup(device)
        self._build_objective()  # first: a missing AlexNet file fails before a 340 MB checkpoint is read
        net = self._load_network()
        net.eval().requires_grad_(False)
        self.net = net.to(self.device)
        template = self.net.template
        self._inward = torch.from_numpy(inward_faces(template.vertices, template.faces)).to(self.device)
        self._labels = self.labels()
        for _ in range(int(self.config.warmup_passes)):
            self._warmup_pass()

    def _build_objective(self) -> None:
        """TTO methods build their loss modules here (feed-forward: nothing)."""

    def _load_network(self):
        cfg = self.config
        if cfg.checkpoint:
            net = self.build_net(None)
            self._load_info = load_checkpoint(net, cfg.checkpoint, self.model_name)
        else:
            net = self.build_net(cfg.weights_seed)
            self._load_info = {"untrained": True, "weights_seed": int(cfg.weights_seed)}
        self.after_load(net)
        self.configure_net(net)
        return net

    def _warmup_pass(self) -> None:
        """One forward (and, for TTO, one backward) pass on a dummy input; nothing is kept."""
        dummy = torch.full((1, 3, IMG_SIZE, IMG_SIZE), 0.5, device=self.device)
        with torch.enable_grad():
            latent = self.net.encode(dummy)["latent"].detach().requires_grad_(self.tto)
            flow = self.net.texture_flow(latent)
            if self.tto:
                flow.sum().backward()
        synchronize(self.device)

    # -- batch -------------------------------------------------------------------------------
    def reconstruct(self, samples: list) -> list[Reconstruction]:
        if self.net is None:
            raise RuntimeError(f"{self.name}: call setup(device) before reconstruct()")
        return reconstruct_in_groups(samples, self._group, self._reconstruct_batch,
                                     lambda s, message: Reconstruction.failed(getattr(s, "id", "unknown"), message))

    def _group(self, sample):
        """(image size, sample) of a usable sample; `InstanceError` naming the problem otherwise."""
        problem = self._check_sample(sample)
        if problem:
            raise InstanceError(problem)
        return tuple(sample.image.shape[-2:]), sample

    def uses_sample_camera(self) -> bool:
        """Whether the sample's own camera is read (TTO with ``camera_init='sample'``)."""
        return False

    def _check_sample(self, s) -> str | None:
        if not hasattr(s, "image") or not hasattr(s, "mask"):
            return getattr(s, "error", None) or "not a Sample"
        img, mask = s.image, s.mask
        if not torch.is_tensor(img) or img.dim() != 3 or img.shape[0] != 3:
            return f"image must be a (3,H,W) tensor, got {tuple(getattr(img, 'shape', ()))}"
        if not torch.is_tensor(mask) or tuple(mask.shape) != tuple(img.shape[-2:]):
            return f"mask must be (H,W) = {tuple(img.shape[-2:])}, got {tuple(getattr(mask, 'shape', ()))}"
        cam = getattr(s, "camera", None)
        if cam is not None and (not torch.is_tensor(cam) or cam.numel() != 7):
            return f"camera must have 7 entries, got shape {tuple(getattr(cam, 'shape', ()))}"
        read = {"image": img, "mask": mask}
        if self.uses_sample_camera():
            if cam is None:
                return f"{self.name}.camera_init='sample' needs the sample's camera, and it has none"
            read["camera"] = cam
        bad = find_non_finite(read)
        return f"the sample's {bad} holds non-finite values" if bad else None

    def _inputs(self, batch):
        image = torch.stack([s.image.float() for s in batch]).to(self.device).clamp(0, 1)
        mask = torch.stack([s.mask.float() for s in batch]).to(self.device)
        return image, mask

    def _encode(self, image, batch) -> dict:
        """One encoder pass; per-instance draws (UMR) come from each sample's seed."""
        return self.net.encode(image, seeds=[sample_seed(s) for s in batch])

    def _optimize(self, batch, image, mask, enc) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Feed-forward: the encoder's latent and the camera head's camera."""
        return enc["latent"], enc["camera"], {}

    def _reconstruct_batch(self, batch) -> list[Reconstruction]:
        stopwatch = Stopwatch(self.device)
        with stopwatch("encode"):
            image, mask = self._inputs(batch)
            with torch.no_grad():
                enc = self._encode(image, batch)
        with stopwatch("optimize"):
            latent, camera, extra = self._optimize(batch, image, mask, enc)
        with stopwatch("render"), torch.no_grad():
            rendered = self._decode_and_render(image, latent, camera, enc)
        seconds = stopwatch.seconds
        batch_timings = {"total": sum(seconds.values()), "optimize": seconds["optimize"] if self.tto else 0.0,
                         "encode": seconds["encode"], "render": seconds["render"]}
        return [self._record(s, b, rendered, enc, extra, batch_timings, len(batch)) for b, s in enumerate(batch)]

    def _decode_and_render(self, image, latent, camera, enc) -> RenderedBatch:
        """Mesh, texture and input-view render of the final latent and camera, then the shared frame."""
        verts = self.net.decode_shape(latent, enc)
        textures = sample_texture(image, self.net.texture_flow(latent), self.net.texture_align_corners)
        renormalize = self.renormalize_quat()
        rimg, rmask, _ = render_textured(pose(verts, camera, renormalize), self.net.faces, textures,
                                         tuple(image.shape[-2:]), background=BACKGROUND)
        if renormalize:
            camera = unit_quaternion_camera(camera)
        v_shared, cam_shared = to_shared_frame(verts, camera, self.frame_quaternion())
        faces_out, tex_out = outward_faces_and_textures(self.net.faces, textures, self._inward)
        return RenderedBatch(latent=latent.detach(), camera_model=camera, vertices=v_shared, camera=cam_shared,
                             faces=faces_out, face_textures=tex_out, image=rimg, mask=rmask)

    def _record(self, sample, b: int, out: RenderedBatch, enc: dict, extra: dict,
                batch_timings: dict[str, float], batch_size: int) -> Reconstruction:
        """Instance ``b`` of the batch as a `Reconstruction` (the runner checks it for non-finite values)."""
        info = {"labels": list(self._labels), "model": self.model_name, "batch_size": batch_size,
                "batch_timings": dict(batch_timings),
                "camera_model_frame": [float(x) for x in out.camera_model[b].cpu()],
                "frame_quaternion": [float(x) for x in self.frame_quaternion()]}
        info.update(self._extra_info(enc, extra, b))
        if not self.uses_sample_camera():  # the record says which camera the method really started from
            info["camera_source"] = "camera-head"
        return Reconstruction(
            sample_id=sample.id,
            mesh=TexturedMesh(vertices=out.vertices[b].float().cpu(), faces=out.faces.cpu(),
                              face_textures=(out.face_textures[b] * 2 - 1).float().cpu()),
            camera=out.camera[b].float().cpu(),
            image=out.image[b].float().cpu(),
            mask=out.mask[b].float().cpu(),
            latent=out.latent[b].float().cpu(),
            timings=per_instance(batch_timings, batch_size),
            losses=[float(x) for x in extra["losses"][:, b].cpu()] if "losses" in extra else [],
            info=info,
        )

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


class MeshNetTTOMethod(MeshNetMethod):
    """Feed-forward prediction refined by test-time optimisation (:mod:`bench.methods.cmr.tto`);
    the config is a :class:`~bench.methods.cmr.tto.TTOSettings` and is passed to it as is."""

    tto: ClassVar[bool] = True
    loss_kind: ClassVar[str] = "cmr"

    def labels(self) -> list[str]:
        """Adds ``perceptual-random-alexnet`` when the perceptual term runs on random AlexNet weights."""
        out = super().labels()
        if not self.config.checkpoint and self._perceptual_is_random():
            out.append(RANDOM_LABEL)
        return out

    def _perceptual_is_random(self) -> bool:
        if self.perceptual is not None:
            return str(self.perceptual.source).startswith("random")
        return find_alexnet_weights(self.config.perceptual_weights, self.name) is None

    def _build_objective(self) -> None:
        cfg = self.config
        self.perceptual = build_perceptual(cfg.perceptual_weights, allow_random=not cfg.checkpoint,
                                           seed=cfg.weights_seed, owner=self.name).to(self.device)

    def renormalize_quat(self) -> bool:
        return bool(self.config.renormalize_quat)

    def uses_sample_camera(self) -> bool:
        return self.config.camera_init == "sample"

    def _initial_camera(self, batch, enc) -> torch.Tensor:
        if not self.uses_sample_camera():
            return enc["camera"]
        cam = torch.stack([s.camera.float().reshape(7) for s in batch]).to(self.device)
        # the sample camera lives in the shared frame: bring it to the model's frame
        qf = torch.as_tensor(self.frame_quaternion(), dtype=cam.dtype, device=cam.device).reshape(1, 4)
        q = quat_mul(cam[:, 3:7], (qf / qf.norm()).expand(len(batch), 4))
        return torch.cat([cam[:, :3], q], dim=1)

    def _optimize(self, batch, image, mask, enc):
        cfg = self.config
        cam0 = self._initial_camera(batch, enc)
        data = prepare(image, mask, cfg.render_size, state=enc)
        with torch.enable_grad():
            res = run_tto(self.net, self.perceptual, data, enc["latent"], cam0, cfg, loss=self.loss_kind)
        return res["latent"], res["camera"], {"losses": res["losses"], "terms": res["terms"],
                                               "camera_init": cam0, "perceptual": self.perceptual.source}


# --------------------------------------------------------------------------------------------------
# registered methods
# --------------------------------------------------------------------------------------------------
class CMRMethod(MeshNetMethod):
    """CMR feed-forward prediction (one encoder pass)."""

    name = "cmr"
    Config = CMRConfig
    profiles = {"paper": {}, "fast": {}}
    model_name = "CMR"


class CMRTTOMethod(MeshNetTTOMethod):
    """CMR + test-time optimisation of latent and camera (mask MSE ×2 + perceptual ×0.5)."""

    name = "cmr-tto"
    Config = CMRTTOConfig
    profiles = {"paper": {}, "fast": dict(FAST_TTO)}
    model_name = "CMR"
    loss_kind = "cmr"
