"""The `Method` interface, and the `TexturedMesh` / `Reconstruction` every method returns.

Methods never write files; the runner stores what they return. Anything that can render a
`TexturedMesh` from a camera can compute every metric, so metrics are method-agnostic.

Object frame shared by all methods (MeshInversion's): y up, the generated (symmetric) half at +x,
front of a canonical bird facing -z; posed vertices follow the camera convention in
:mod:`bench.datasets.base`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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

    # ------------------------------------------------------------------ using a reconstruction
    def _require_ok(self, what: str) -> "TexturedMesh":
        """The mesh, or `bench.errors.InstanceError` naming the failure when there is none."""
        from bench.errors import InstanceError

        if self.status != "ok" or self.mesh is None:
            why = self.error or ("no mesh" if self.status == "ok" else "failed")
            raise InstanceError(f"cannot {what} the reconstruction of {self.sample_id}: it failed ({why})")
        return self.mesh

    def render(self, camera=None, size: int = 256, *, background: float | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Render the textured mesh from a camera, as the metrics render reconstructions.

        Goes through :func:`bench.render.renderer.render_mesh` with its defaults (hard mask;
        MeshInversion's symmetric texture padding for UV meshes, per-face grids for CMR/UMR): at the
        reconstruction's own camera and the input size this is ``(self.image, self.mask)``.

        Args:
            camera: (7,) ``[s, tx, ty, qw, qx, qy, qz]`` tensor or sequence of 7 numbers (the camera
                convention of :mod:`bench.datasets.base`); None = the reconstruction's own camera.
            size: side of the square output in pixels.
            background: None = the un-composited render (empty pixels 0.5, i.e. 0 in [-1,1], as
                ``Reconstruction.image``); a number in [0,1] paints the empty pixels with it
                (1.0 = white, as the FID views).

        Returns:
            image (3,size,size) float32 RGB in [0,1], mask (size,size) float32 hard mask (0 or ~1).

        Raises:
            bench.errors.InstanceError: the reconstruction failed.
            bench.errors.UserError: a malformed camera, size or background.
        """
        from bench.errors import UserError
        from bench.render.renderer import render_mesh

        mesh = self._require_ok("render")
        cam = self.camera if camera is None else camera
        try:
            cam = torch.as_tensor(cam, dtype=torch.float32).detach().cpu()
        except (TypeError, ValueError, RuntimeError):
            raise UserError(f"camera must be 7 numbers [s, tx, ty, qw, qx, qy, qz], got {camera!r}") from None
        if cam.numel() != 7 or not bool(torch.isfinite(cam).all()):
            raise UserError(f"camera must be 7 finite numbers [s, tx, ty, qw, qx, qy, qz], got {cam.tolist()}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UserError(f"size must be a positive integer (pixels), got {size!r}")
        if background is not None and (isinstance(background, bool) or not isinstance(background, (int, float))
                                       or not 0 <= background <= 1):
            raise UserError(f"background must be None or a number in [0, 1], got {background!r}")
        with torch.no_grad():
            image, mask = render_mesh(mesh.to("cpu"), cam.reshape(1, 7), height=size, width=size)
        image, mask = (image[0] / 2 + 0.5), mask[0, 0]
        if background is not None:
            image = torch.where(mask > 0.5, image, torch.full_like(image, float(background)))
        return image, mask

    def views(self, azimuths=None, size: int = 256) -> torch.Tensor:
        """The canonical views of the FID_10/12 protocol (orientation 30°, scale 0.7, white background).

        Rendered by :func:`bench.metrics.views.render_canonical_views`, the function `bench eval` uses.

        Args:
            azimuths: degrees; default the 12 FID_12 azimuths 0, 30, ..., 330.
            size: side of each view in pixels (the protocol's is 256).

        Returns:
            (K,3,size,size) float32 RGB in [0,1] (the official uint8 PNG values / 255).
        """
        from bench.metrics.views import FID12_ANGLES, render_canonical_views

        mesh = self._require_ok("render")
        angles = list(FID12_ANGLES if azimuths is None else azimuths)
        fields = {k: getattr(mesh, k) for k in ("vertices", "faces", "face_uvs", "texture", "face_textures")}
        views = render_canonical_views(fields, angles, size=size)
        return views.permute(0, 3, 1, 2).float() / 255

    def export(self, path: str | Path) -> Path:
        """Write the textured mesh as a Wavefront ``.obj`` (+ ``.mtl`` + ``<stem>_texture.png``).

        Vertices are in the shared object frame (y up), unposed. UV meshes (MeshInversion) keep their
        texture map and UVs, as `bench sample` writes them. Per-face texture grids (CMR/UMR) are baked
        into a texture atlas (one T×T cell per face, corners at its texel centres), so the file shows
        the same colours as the renderer (:func:`bench.render.export.bake_face_textures`); no vertex
        colours are written.

        Args:
            path: the ``.obj`` file (a path without suffix gets ``.obj``); its folder is created.

        Returns:
            the path of the ``.obj``.

        Raises:
            bench.errors.InstanceError: the reconstruction failed.
            bench.errors.UserError: another format (``.glb`` is not available yet), or an unwritable path.
        """
        from bench.errors import UserError, user_error_from_os
        from bench.render.export import write_textured_obj

        mesh = self._require_ok("export")
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".glb" or suffix == ".gltf":
            raise UserError(f"{path}: glb export is not available yet; use .obj")
        if suffix == "":
            path = path.with_suffix(".obj")
        elif suffix != ".obj":
            raise UserError(f"{path}: cannot export {suffix} files; use .obj")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_textured_obj(path, mesh)
        except OSError as err:
            raise user_error_from_os(err, path) from None
        return path

    def metrics(self, sample) -> dict[str, float]:
        """Every registered per-instance metric (``bench.registry.metrics("instance")``, e.g. ``iou``)
        of this reconstruction of ``sample``, computed as `bench run` computes its records' metrics
        (:func:`bench.runner.instance_metrics`).

        Args:
            sample: the `bench.datasets.base.Sample` this reconstructs (same ``id``).

        Returns:
            ``{name: value}``, e.g. ``{"iou": 0.83, "iou_init": 0.61}``.

        Raises:
            bench.errors.InstanceError: the reconstruction failed.
            bench.errors.UserError: ``sample`` is another instance.
        """
        from bench.errors import UserError
        from bench.runner import instance_metrics

        self._require_ok("compute metrics of")
        if getattr(sample, "id", None) != self.sample_id:
            raise UserError(f"metrics: the reconstruction is of sample {self.sample_id!r}, "
                            f"not of {getattr(sample, 'id', sample)!r}; pass the sample it reconstructs")
        return instance_metrics(sample, self)


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
