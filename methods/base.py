"""The `Method` interface, and the `TexturedMesh` / `Reconstruction` every method returns.

Methods never write files; the runner stores what they return. Anything that can render a
`TexturedMesh` from a camera can compute every metric, so metrics are method-agnostic.

Object frame shared by all methods (MeshInversion's): y up, the generated (symmetric) half at +x,
front of a canonical bird facing -z; posed vertices follow the camera convention in
:mod:`bench.datasets.base`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class TexturedMesh:
    """A textured triangle mesh in the shared object frame.

    Exactly one texture representation is set:
      * UV mapped: ``face_uvs`` (F,3,2) per-corner (u, v) in [0,1] (v = 1 is texture row 0) and
        ``texture`` (3,R,R') float32 RGB in [-1,1]; sampled bilinearly with ``align_corners=True``
        after the caller's own UV adjustment (see :func:`bench.render.renderer.render_mesh`).
      * per-face grids: ``face_textures`` (F,T,T,3) RGB in [-1,1], colour at barycentrics
        (w0, w1) = bilinear lookup at ((T-1)·w0, (T-1)·w1) (CMR/UMR convention).

    Attributes:
        vertices: (V,3) float32.
        faces: (F,3) int64.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    face_uvs: torch.Tensor | None = None
    texture: torch.Tensor | None = None
    face_textures: torch.Tensor | None = None

    def to(self, device) -> "TexturedMesh":
        return TexturedMesh(**{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.__dict__.items()})


@dataclass
class Reconstruction:
    """What a method returns for one instance.

    Attributes:
        sample_id: the `Sample.id` it reconstructs.
        status: ``"ok"`` or ``"failed"`` (then ``error`` says why and the tensors may be None).
        mesh: the reconstructed textured mesh (object frame).
        camera: (7,) float32 final camera ``[s, tx, ty, qw, qx, qy, qz]``.
        image: (3,H,W) float32 input-view render in [0,1] (un-composited; background 0.5 = value 0
            in [-1,1], as the official renderer leaves it).
        mask: (H,W) float32 input-view mask of the render (hard mask, values 0 or ~1).
        latent: optional (D,) float32 optimised latent.
        timings: seconds per stage for this instance, at least ``total`` and ``optimize``
            (CUDA-synchronised wall time; for a batch of B: the batch's time / B, with the whole
            batch's times in ``info["batch_timings"]`` and B in ``info["batch_size"]``).
        losses: the loss trace (one float per optimisation step).
        info: extra JSON-serialisable values (initial IoU, chosen candidate, labels...).
        error: failure message when ``status == "failed"``.
    """

    sample_id: str
    status: str = "ok"
    mesh: TexturedMesh | None = None
    camera: torch.Tensor | None = None
    image: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    latent: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def failed(cls, sample_id: str, error: str) -> "Reconstruction":
        return cls(sample_id=sample_id, status="failed", error=error)


class Method:
    """Base class of reconstruction methods.

    Subclasses set ``name``, ``Config`` (a dataclass; every field is a hyper-parameter settable
    with ``--set <method>.<field>=<value>``) and ``profiles`` (``{"paper": {...}, "fast": {...}}``
    field overrides), then implement ``setup`` and ``reconstruct``.
    """

    name: ClassVar[str] = ""
    #: one line for ``bench ls``: third-party methods only (a built-in's is its registry entry)
    summary: ClassVar[str] = ""
    Config: ClassVar[type] = object
    profiles: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config):
        self.config = config
        self.device = torch.device("cpu")

    def setup(self, device: str | torch.device) -> None:
        """Load weights and move to ``device``; raise `bench.errors.UserError` on bad files."""
        self.device = torch.device(device)

    def reconstruct(self, samples: list) -> list[Reconstruction]:  # pragma: no cover - abstract
        """Reconstruct a batch of `Sample`s; one `Reconstruction` per sample, same order.

        Must not raise for a per-instance problem: return ``Reconstruction.failed`` for it.
        """
        raise NotImplementedError

    def check_weights(self) -> None:
        """Pre-flight before anything is written: every weight file can be read safely
        (``weights_only``: a crafted pickle is refused unread) and is a mapping with parameter-name keys.
        Keys and shapes against the network are checked again by `setup`, which builds it.

        Raises:
            UserError: one line naming the field and the file.
        """
        from collections.abc import Mapping

        from bench.checkpoints import load_file, numpy_globals, require_string_keys
        from bench.errors import UserError

        for key, path in self.weight_files().items():
            what = f"{self.name}.{key} file"
            obj = load_file(path, what, allow=numpy_globals(arrays=True), mmap=True,
                            hint=f"pass a valid file with --set {self.name}.{key}=PATH")
            if not isinstance(obj, Mapping):
                raise UserError(f"{what} {path} is not a state dict or checkpoint: it holds a {type(obj).__name__}; "
                                f"pass a valid file with --set {self.name}.{key}=PATH")
            require_string_keys(obj, f"{what} {path}", f"pass a valid file with --set {self.name}.{key}=PATH")

    def weight_files(self) -> dict[str, str]:
        """Config fields naming weight files (``*checkpoint*``, ``*_weights``) that are set to a path."""
        from dataclasses import fields, is_dataclass

        if not is_dataclass(self.config):
            return {}
        out = {}
        for f in fields(self.config):
            value = getattr(self.config, f.name)
            if ("checkpoint" in f.name or f.name.endswith("_weights")) and isinstance(value, str) \
                    and value not in ("", "demo", "random"):
                out[f.name] = value
        return out

    def labels(self) -> list[str]:
        """Labels shown next to this method's numbers (e.g. ``"untrained"``); subclasses extend."""
        return []

    def describe(self) -> dict[str, Any]:
        """Manifest entry (works before `setup`): config, weight files with sha256, labels.

        Raises `bench.errors.UserError` when a configured weight file does not exist.
        """
        from pathlib import Path

        from bench.config import config_to_dict
        from bench.errors import UserError
        from bench.manifest import sha256_file

        weights = {}
        for key, path in self.weight_files().items():
            if not Path(path).is_file():
                raise UserError(f"{self.name}.{key}: file {path} not found; pass an existing file "
                                f"(--set {self.name}.{key}=PATH)")
            weights[key] = {"path": str(Path(path).resolve()), "sha256": sha256_file(str(Path(path).resolve()))}
        return {"method": self.name, "class": f"{type(self).__module__}:{type(self).__qualname__}",
                "config": config_to_dict(self.config), "weights": weights, "labels": self.labels()}
