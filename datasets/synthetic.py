"""The built-in ``synthetic`` dataset: targets rendered from the active generator, no download needed.

Instance ``i`` is drawn from a random stream seeded with ``instance_seed(seed, i)`` only
(:mod:`bench.seeds`; ``seed`` = the ``seed`` option, by default the run seed ``bench run --seed``), so
every instance is reproducible on its own (shards and resumes see identical samples) and another run
seed gives other scenes:

* class id (uniform over the generator's 200 classes, or fixed), latent z ~ N(0, I_64);
* a ground-truth camera around a CUB-like canonical distribution: the canonical FID pose
  (orientation 30°) turned by a uniform azimuth and a N(0, elevation_std) elevation, scale
  ~ U(scale_min, scale_max), translation ~ N(0, translation_std) per axis;
* the RGB crop = the hard-mask render composited on white (like CUB crops' white padding), the mask
  = the rendered hard mask thresholded at 0.5;
* the initial camera = ground truth + noise: scale × exp(N(0, noise_scale)), translation +
  N(0, noise_translation), rotation pre-multiplied by a random-axis rotation of N(0, noise_rotation_deg)
  (defaults 0.1, 0.06, 15°: roughly the error of a CMR-predicted camera, IoU at the initial pose ~0.6-0.8).

With no checkpoint the generator is the *untrained demo generator*; its shapes are blobby and its
textures are noise-like, which is enough to exercise every stage of the pipeline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from bench.camera_search import SearchOptions, mask_fit_camera, search_field
from bench.config import check_fields, option, require
from bench.datasets.base import Dataset, Sample
from bench.errors import UserError
from bench.methods.meshinversion.generator import N_CLASSES
from bench.seeds import instance_seed

#: XOR-ed into a scene's seed so that the scene is not drawn from the same random stream as the
#: method's per-instance randomness (``sample.meta["seed"]``); otherwise a method's first latent
#: candidate could be the ground-truth latent itself.
SCENE_SEED_SALT = 0x5CE7E5


CAMERAS = ("gt+noise", "search")


@dataclass
class SyntheticConfig(SearchOptions):
    """Options of the synthetic dataset (see the module docstring for how a scene is drawn; the
    ``search_*`` fields: :class:`bench.camera_search.SearchOptions`)."""

    n: int = option(8, ge=1, help="number of instances")
    seed: Optional[int] = option(None, help="seed of the scenes; empty = the run seed (bench run --seed), "
                                 "so another run seed also gives other scenes")
    checkpoint: Optional[str] = option(None, help="generator checkpoint the scenes are rendered from; "
                                       "empty or demo = the untrained demo generator")
    image_size: int = option(256, ge=1, help="side of the rendered square crop in pixels (CUB crops: 256)")
    class_id: Optional[int] = option(None, ge=0, le=N_CLASSES - 1, help=f"class of every instance, 0..{N_CLASSES - 1}; "
                                     "empty = uniform over the generator's classes")
    scale_min: float = option(0.55, gt=0, help="smallest ground-truth camera scale (uniform in [scale_min, scale_max])")
    scale_max: float = option(0.75, gt=0, help="largest ground-truth camera scale")
    translation_std: float = option(0.03, ge=0, help="std of the ground-truth camera translation per axis "
                                    "(normalised crop units)")
    elevation_std_deg: float = option(10.0, ge=0, help="std of the ground-truth camera elevation in degrees "
                                      "(azimuth is uniform)")
    noise_scale: float = option(0.1, ge=0, help="initial camera noise: scale multiplied by exp(N(0, noise_scale))")
    noise_translation: float = option(0.06, ge=0, help="initial camera noise: std added to each translation axis")
    noise_rotation_deg: float = option(15.0, ge=0, help="initial camera noise: std in degrees of a random-axis "
                                       "rotation applied to the ground truth")
    camera: str = option("gt+noise", help="initial camera: gt+noise (the noisy ground truth above) or search "
                         "(no camera: the method searches it, as for one's own photos)")
    search_azimuths: int = search_field("azimuths")
    search_elevations_deg: list[float] = search_field("elevations_deg")
    search_candidates: int = search_field("candidates")

    def __post_init__(self):
        check_fields(self)  # types and the ranges stated in option(...)
        require(self.camera in CAMERAS, "camera", f"must be one of {', '.join(CAMERAS)}", self.camera)
        require(self.scale_min <= self.scale_max, "scale_max", f"must be >= scale_min ({self.scale_min})",
                self.scale_max)


def uses_demo(checkpoint: str | None) -> bool:
    """Whether ``checkpoint`` names the untrained demo generator (unset, empty or ``demo``)."""
    return checkpoint in (None, "", "demo")


class SyntheticDataset(Dataset):
    """N instances rendered from the active generator (see module docstring)."""

    name = "synthetic"
    Config = SyntheticConfig
    profiles = {"paper": {}, "fast": {"image_size": 128}}
    default_num_workers = 0

    def __init__(self, config: SyntheticConfig | None = None, run_seed: int = 0, **overrides):
        config = config or SyntheticConfig(**overrides)
        super().__init__(config, run_seed)
        if not uses_demo(config.checkpoint):
            from pathlib import Path

            if not Path(config.checkpoint).expanduser().is_file():
                raise UserError(f"synthetic.checkpoint: generator file {config.checkpoint} not found "
                                "(pass a checkpoint file, or leave it empty for the demo generator)")
        self._generator = None
        self._template = None

    @property
    def scene_seed(self) -> int:
        """The seed the scenes are drawn from: ``config.seed``, or the run seed when it is unset."""
        return self.run_seed if self.config.seed is None else int(self.config.seed)

    def scene_generator(self, i: int) -> torch.Generator:
        """The random stream of instance ``i``'s scene (depends on the scene seed and ``i`` only)."""
        return torch.Generator().manual_seed(instance_seed(self.scene_seed, i) ^ SCENE_SEED_SALT)

    def __len__(self) -> int:
        return self.config.n

    def source(self, i: int) -> str:
        return f"synthetic scene {i} (scene seed {self.scene_seed}, {self.generator_label})"

    @property
    def generator(self):
        if self._generator is None:
            from bench.methods.meshinversion.generator import load_generator

            checkpoint = "demo" if uses_demo(self.config.checkpoint) else self.config.checkpoint
            self._generator = load_generator(checkpoint, device="cpu")
        return self._generator

    @property
    def template(self):
        if self._template is None:
            from bench.render.uvsphere import uvsphere_template

            self._template = uvsphere_template("cpu")
        return self._template

    @property
    def generator_label(self) -> str:
        return "untrained demo generator" if uses_demo(self.config.checkpoint) else str(self.config.checkpoint)

    def describe(self) -> dict:
        """Manifest fields: the config, with ``seed`` = the scene seed actually used, and the generator."""
        from bench.config import config_to_dict

        return {"dataset": self.name, **config_to_dict(self.config), "seed": self.scene_seed,
                "generator": self.generator_label, "split": "synthetic", "mask": "render"}

    def ground_truth_camera(self, g: torch.Generator) -> torch.Tensor:
        """(7,) [s, tx, ty, qw, qx, qy, qz] around the canonical CUB-like pose."""
        from bench.render.camera import turned_canonical_quaternion

        c = self.config
        azimuth = torch.rand((), generator=g) * 2 * math.pi
        elevation = torch.randn((), generator=g) * math.radians(c.elevation_std_deg)
        q = turned_canonical_quaternion(azimuth, elevation)
        scale = c.scale_min + (c.scale_max - c.scale_min) * torch.rand((), generator=g)
        trans = torch.randn(2, generator=g) * c.translation_std
        return torch.cat([scale.reshape(1), trans, q]).float()

    def perturb_camera(self, cam: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        from bench.render.camera import axis_angle_quaternion, quat_mul

        c = self.config
        scale = cam[:1] * torch.exp(torch.randn(1, generator=g) * c.noise_scale)
        trans = cam[1:3] + torch.randn(2, generator=g) * c.noise_translation
        axis = torch.nn.functional.normalize(torch.randn(3, generator=g), dim=0)
        angle = torch.randn((), generator=g) * math.radians(c.noise_rotation_deg)
        q = quat_mul(axis_angle_quaternion(axis, angle)[None], cam[None, 3:])[0]
        return torch.cat([scale, trans, q]).float()

    @torch.no_grad()
    def load(self, i: int) -> Sample:
        from bench.methods.meshinversion.render import render

        c = self.config
        g = self.scene_generator(i)
        class_id = c.class_id if c.class_id is not None else int(torch.randint(0, N_CLASSES, (), generator=g))
        z = torch.randn(1, 64, generator=g)
        camera = self.ground_truth_camera(g)
        camera_init = self.perturb_camera(camera, g)
        texture, mesh_map = self.generator(z, torch.tensor([class_id]))
        out = render(self.template, texture, mesh_map, camera[None, :1], camera[None, 1:3], camera[None, 3:],
                     c.image_size)
        mask = (out.mask[0, 0] > 0.5).float()
        image = ((out.image[0] / 2 + 0.5) * mask + (1 - mask)).clamp(0, 1)
        gt = {"latent": z[0], "camera": camera, "vertices": out.vertices[0], "faces": self.template.faces,
              "face_uvs": self.template.face_uvs, "texture": texture[0], "mesh_map": mesh_map[0]}
        sample = Sample(id=self.instance_id(i), index=i, image=image, mask=mask, mask_source="render",
                        camera=camera_init, camera_source="gt+noise", class_id=class_id, gt=gt,
                        meta={"generator": self.generator_label})
        if c.camera == "search" and mask.any():
            sample.camera, sample.camera_source, sample.camera_search = mask_fit_camera(mask), "mask-fit", c.search
        return sample
