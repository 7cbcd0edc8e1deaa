"""The built-in ``synthetic`` dataset: targets rendered from the active generator, no download needed.

Instance ``i`` is drawn from a generator seeded with ``(seed, i)`` only, so every instance is
reproducible on its own (shards and resumes see identical samples):

* class id (uniform over the generator's 200 classes, or fixed), latent z ~ N(0, I_64);
* a ground-truth camera around a CUB-like canonical distribution: the canonical FID pose
  (orientation 30°) turned by a uniform azimuth and a N(0, elevation_std) elevation, scale
  ~ U(scale_range), translation ~ N(0, translation_std) per axis;
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

import torch

from bench.datasets.base import Dataset, Sample


@dataclass
class SyntheticConfig:
    n: int = 8
    seed: int = 0
    checkpoint: str | None = None
    image_size: int = 256
    class_id: int | None = None
    scale_min: float = 0.55
    scale_max: float = 0.75
    translation_std: float = 0.03
    elevation_std_deg: float = 10.0
    noise_scale: float = 0.1
    noise_translation: float = 0.06
    noise_rotation_deg: float = 15.0


def axis_angle_quaternion(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(3,) unit axis, scalar angle (radians) -> (4,) quaternion (w, x, y, z)."""
    half = angle / 2
    return torch.cat([torch.cos(half).reshape(1), torch.sin(half) * axis])


class SyntheticDataset(Dataset):
    """N instances rendered from the active generator (see module docstring)."""

    name = "synthetic"
    Config = SyntheticConfig
    profiles = {"paper": {}, "fast": {"image_size": 128}}
    default_num_workers = 0

    def __init__(self, config: SyntheticConfig):
        super().__init__(config)
        from bench.errors import UserError

        if config.n < 1:
            raise UserError(f"synthetic.n must be >= 1, got {config.n}")
        if config.checkpoint not in (None, "", "demo"):
            from pathlib import Path

            if not Path(config.checkpoint).is_file():
                raise UserError(f"synthetic.checkpoint: generator file {config.checkpoint} not found")
        self._generator = None
        self._template = None

    def __len__(self) -> int:
        return self.config.n

    @property
    def generator(self):
        if self._generator is None:
            from bench.methods.meshinversion.generator import load_generator

            self._generator = load_generator(self.config.checkpoint or "demo", device="cpu")
        return self._generator

    @property
    def template(self):
        if self._template is None:
            from bench.render.uvsphere import uvsphere_template

            self._template = uvsphere_template("cpu")
        return self._template

    def describe(self) -> dict:
        from bench.config import config_to_dict

        label = "untrained demo generator" if self.config.checkpoint in (None, "", "demo") else self.config.checkpoint
        return {"dataset": self.name, **config_to_dict(self.config), "generator": label, "split": "synthetic",
                "mask": "render", "camera": "gt+noise"}

    def ground_truth_camera(self, g: torch.Generator) -> torch.Tensor:
        """(7,) [s, tx, ty, qw, qx, qy, qz] around the canonical CUB-like pose."""
        from bench.render.camera import canonical_quaternion, quat_mul

        c = self.config
        azimuth = torch.rand((), generator=g) * 2 * math.pi
        elevation = torch.randn((), generator=g) * math.radians(c.elevation_std_deg)
        q_az = axis_angle_quaternion(torch.tensor([0.0, 1.0, 0.0]), azimuth)
        q_el = axis_angle_quaternion(torch.tensor([1.0, 0.0, 0.0]), elevation)
        q = quat_mul(q_el[None], quat_mul(q_az[None], canonical_quaternion()[None].float()))[0]
        scale = c.scale_min + (c.scale_max - c.scale_min) * torch.rand((), generator=g)
        trans = torch.randn(2, generator=g) * c.translation_std
        return torch.cat([scale.reshape(1), trans, q]).float()

    def perturb_camera(self, cam: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        from bench.render.camera import quat_mul

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
        g = torch.Generator().manual_seed(c.seed * 1_000_003 + i)
        class_id = c.class_id if c.class_id is not None else int(torch.randint(0, 200, (), generator=g))
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
        return Sample(id=self.instance_id(i), index=i, image=image, mask=mask, mask_source="render",
                      camera=camera_init, camera_source="gt+noise", class_id=class_id, gt=gt,
                      meta={"generator": self.describe()["generator"]})
