"""The `Sample` every dataset yields and the `Dataset` interface the runner consumes.

Camera convention everywhere (CMR / MeshInversion ``sfm_pose``): a 7-vector
``[s, tx, ty, qw, qx, qy, qz]`` mapping an object point X to normalised crop coordinates
(x right, y down, both in [-1, 1]) as ``s * R(q) X [:2] + (tx, ty)``; q is NOT renormalised.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class Sample:
    """One test instance.

    Attributes:
        id: stable instance id used for records and file names, e.g. ``"00012"`` (filesystem safe).
        index: 0-based position in the dataset (shard = index % num_shards).
        image: (3,H,W) float32 RGB in [0,1], the square crop (white padding outside the photo).
        mask: (H,W) float32 {0,1} foreground mask the method fits and IoU is measured against.
        mask_source: ``"gt"`` | ``"predicted"`` (PointRend) | ``"render"`` (synthetic).
        camera: (7,) float32 initial camera ``[s, tx, ty, qw, qx, qy, qz]``.
        camera_source: ``"sfm"`` | ``"cmr-pred"`` | ``"gt"`` | ``"gt+noise"`` | ``"cmr"`` | ``"given"`` |
            ``"mask-fit"`` (a rough camera from the mask; then ``camera_search`` is set).
        class_id: 0-based class index (CUB: 0..199).
        keypoints: optional (K,3) float32 normalised keypoints ``(x, y, visible)``.
        gt: optional ground truth (synthetic data): ``latent`` (64,), ``camera`` (7,),
            ``vertices`` (V,3), ``faces`` (F,3), ``texture`` (3,R,R) in [-1,1], ``mesh_map`` (3,32,32).
        meta: free-form JSON-serialisable information (image path, bbox, ...).
        camera_search: optional :class:`bench.camera_search.CameraSearch`: the method should search
            the initial camera over these hypotheses (methods that cannot start from ``camera``).
    """

    id: str
    index: int
    image: torch.Tensor
    mask: torch.Tensor
    mask_source: str
    camera: torch.Tensor
    camera_source: str
    class_id: int
    keypoints: torch.Tensor | None = None
    gt: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    camera_search: Any = None

    @classmethod
    def from_image(cls, image, mask, camera=None, class_id: int = 0, **options) -> "Sample":
        """A sample from one's own photo and its object mask, cropped like a CUB instance.

        Args:
            image: PIL image, (H,W,3) / (H,W) numpy array (uint8 0..255 or float 0..1) or (3,H,W) tensor
                in [0,1]; any size.
            mask: PIL image, (H,W) numpy array or tensor (foreground > ``mask_threshold`` of its range).
            camera: optional (7,) ``[s, tx, ty, qw, qx, qy, qz]`` in the *cropped* sample's frame; None = the
                method searches it (``camera_search``).
            class_id: the generator class.
            options: ``id``, ``image_size`` (256), ``padding_frac`` (0.05), ``mask_threshold`` (0.5),
                ``resize_mask_threshold`` (0.95), ``search`` (a :class:`bench.camera_search.CameraSearch`).
        See :func:`bench.datasets.images.sample_from_image`.
        """
        from bench.datasets.images import sample_from_image

        return sample_from_image(image, mask, camera=camera, class_id=class_id, **options)


@dataclass
class FailedSample:
    """Placeholder for an instance whose loading failed; the runner records it as failed."""

    id: str
    index: int
    error: str


class Dataset(torch.utils.data.Dataset):
    """Base class of datasets: lazy, index-addressable, one `Sample` per item.

    Subclasses set ``name`` and ``Config`` (a dataclass whose fields are the dataset options), build
    their index cheaply in ``__init__`` (raise :class:`bench.errors.UserError` when the data root is
    unusable) and load one instance in ``load(i)`` (raise any exception for a per-instance failure).
    A dataset with a file layout also provides ``check_layout(data_root, split)`` for
    ``bench data check`` (a classmethod returning ``(rows, count)``).

    ``run_seed`` is ``bench run --seed``: every sample gets ``meta["seed"] = instance_seed(run_seed,
    index)`` (:mod:`bench.seeds`), from which methods draw their per-instance randomness.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object

    def __init__(self, config, run_seed: int = 0):
        self.config = config
        self.run_seed = int(run_seed)

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def instance_id(self, i: int) -> str:
        """File-name-safe id of instance ``i`` (default: zero-padded index)."""
        return f"{i:05d}"

    def load(self, i: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def source(self, i: int) -> str | None:
        """Where instance ``i`` comes from (its image file, or how it was made), stored in its record so
        that every number can be traced back; cheap (no loading). Default: None."""
        return None

    def __getitem__(self, i: int) -> Sample | FailedSample:
        from bench.failures import describe_exception
        from bench.seeds import instance_seed

        try:
            sample = self.load(i)
        except Exception as exc:  # noqa: BLE001 - a failing instance is data, not a crash
            return FailedSample(id=self.instance_id(i), index=i, error=describe_exception(exc))
        sample.meta["seed"] = instance_seed(self.run_seed, i)
        return sample

    def describe(self) -> dict[str, Any]:
        """Protocol fields for the run manifest (split, mask source, camera source, image size...)."""
        from dataclasses import asdict, is_dataclass

        return {"dataset": self.name, **(asdict(self.config) if is_dataclass(self.config) else {})}


def collate_samples(batch):
    """DataLoader collate function: keep samples as a list (methods batch them themselves)."""
    return list(batch)
