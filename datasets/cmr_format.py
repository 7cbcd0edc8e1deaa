"""The shared part of the CMR-format datasets (CUB, PASCAL3D+).

Both read their index from a CMR annotation ``.mat`` (:func:`read_annotations`) and an aligned SfM
``.mat`` (:func:`read_sfm`), and load one instance with :func:`load_cmr_instance` (the official crop).
:class:`CMRFormatDataset` holds everything they have in common; a subclass resolves its own folders
in ``__init__`` and fills in a few hooks (pose choice, class id, extra meta keys, describe extras).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

from bench.datasets.base import Dataset, Sample
from bench.datasets.cmr_mat import LayoutRow, missing_message, read_annotations, read_sfm
from bench.datasets.crop import load_cmr_instance, to_float32
from bench.errors import UserError
from bench.manifest import sha256_file


class CMRFormatDataset(Dataset):
    """A lazy dataset of CMR-format instances (``load(i)`` reads one photo).

    A subclass's ``__init__`` sets ``self.root``, ``self.images_dir`` (photos, joined with each
    record's ``rel_path``) and ``self.pred_dir`` (``<index>.npy`` predicted masks), then calls
    :meth:`_require_layout` and :meth:`_read_index`. It sets ``cameras`` (the camera sources it can
    report), ``layout`` (the expected layout, for errors) and ``layout_check`` (its module's
    ``check_layout`` function, for ``bench data check``).

    Hooks: :meth:`_choose_pose` (the initial camera of ``load_float64``), :meth:`class_id`,
    :meth:`_extra_meta` (meta keys after the common ones), :meth:`_index_files` (the files whose
    sha256 ``describe`` reports) and :meth:`_describe_roots` (extra resolved folders in ``describe``).
    """

    #: The data protocol is the same under every profile (``fast`` only makes methods cheaper).
    profiles: ClassVar[dict] = {"paper": {}, "fast": {}}
    default_num_workers: ClassVar[int] = 2  # decode and crop the next photos while a method runs
    cameras: ClassVar[tuple[str, ...]] = ("sfm",)
    layout: ClassVar[str] = ""
    layout_check: ClassVar[Callable[..., tuple[list[LayoutRow], int | None]]]

    root: Path
    images_dir: Path
    pred_dir: Path

    def _require_layout(self, what: str, rows: list[LayoutRow], hint: str = "") -> None:
        """Raise :class:`UserError` listing ``rows`` when a required entry is missing."""
        if any(r.required and not r.present for r in rows):
            raise UserError(missing_message(what, self.root, rows, self.layout, hint))

    def _read_index(self, anno_path: Path, sfm_path: Path) -> None:
        """Read the annotations and the aligned SfM cameras (every instance starts on ``'sfm'``).

        Raises:
            UserError: unreadable files, or the two files have different lengths.
        """
        self.anno_path = anno_path
        self.sfm_path = sfm_path
        self.records = read_annotations(anno_path, keep_mask=self.config.mask == "gt")
        self.sfm = read_sfm(sfm_path)
        if len(self.sfm) != len(self.records):
            raise UserError(f"{sfm_path} has {len(self.sfm)} entries but {anno_path} has "
                            f"{len(self.records)}; they must be aligned")
        self.camera_sources: list[str] = ["sfm"] * len(self.records)
        self._fingerprint: dict[str, str] | None = None

    @classmethod
    def check_layout(cls, data_root: str | Path, split: str | None = None
                     ) -> tuple[list[LayoutRow], int | None]:
        """``bench data check``: every expected path of a data root and the instance count
        (the dataset module's ``check_layout``)."""
        return cls.layout_check(data_root, split)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, i: int) -> Path:
        return self.images_dir / self.records[i]["rel_path"]

    def source(self, i: int) -> str:
        return str(self.image_path(i))

    def class_id(self, i: int) -> int:
        """0-based class of instance ``i`` (default: 0, a single category)."""
        return 0

    def load_float64(self, i: int) -> dict[str, Any]:
        """Instance ``i`` as the official float64 arrays: ``img`` (3,S,S), ``mask`` (S,S), ``kp`` (K,3),
        ``sfm_pose`` (7,), ``crop_bbox`` (4,) int, ``pose`` (7,) = the camera the inversion starts
        from, ``img_path`` (and what :meth:`_choose_pose` adds)."""
        pred = self.pred_dir / f"{i}.npy" if self.config.mask == "predicted" else None
        out = load_cmr_instance(self.image_path(i), self.records[i], self.sfm[i], pred,
                                f"entry {i} of {self.anno_path.name}", self.config)
        self._choose_pose(i, out)
        return out

    def _choose_pose(self, i: int, out: dict[str, Any]) -> None:
        """Set ``out["pose"]`` (default: a copy of the SfM pose)."""
        out["pose"] = out["sfm_pose"].copy()

    def _extra_meta(self, i: int, rec: dict) -> dict[str, Any]:
        """Meta keys of instance ``i`` after the common ones (default: none)."""
        return {}

    def load(self, i: int) -> Sample:
        if not 0 <= i < len(self):
            raise IndexError(f"instance {i} out of range (dataset has {len(self)})")
        out = self.load_float64(i)
        rec = self.records[i]
        t = to_float32(out)
        meta = {
            "img_path": out["img_path"], "rel_path": rec["rel_path"], "name": Path(rec["rel_path"]).stem,
            "bbox": [float(v) for v in rec["bbox"]], "crop_bbox": [int(v) for v in out["crop_bbox"]],
            "sfm_pose": [float(v) for v in out["sfm_pose"]],
            **self._extra_meta(i, rec),
        }
        return Sample(
            id=self.instance_id(i), index=i,
            image=t["img"], mask=t["mask"], mask_source=self.config.mask,
            camera=t["pose"], camera_source=self.camera_sources[i],
            class_id=int(out["class_id"]) if "class_id" in out else self.class_id(i), keypoints=t["kp"],
            meta=meta,
        )

    def _index_files(self) -> tuple[Path, list[Path]]:
        """(folder the names are relative to, index files) fingerprinted by :meth:`describe`."""
        return self.root, [self.anno_path, self.sfm_path]

    def _describe_roots(self) -> dict[str, str]:
        """Resolved folders reported by :meth:`describe` after ``data_root`` (default: none)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Manifest fields: config, resolved folders, instance count, camera-source split, index sha256."""
        if self._fingerprint is None:
            base, files = self._index_files()
            self._fingerprint = {str(p.relative_to(base)): sha256_file(p) for p in files}
        info = super().describe()
        info.update({
            "data_root": str(self.root),
            **self._describe_roots(),
            "num_instances": len(self),
            "mask_source": self.config.mask,
            "camera_source": self.config.camera,
            "camera_source_counts": {s: self.camera_sources.count(s) for s in self.cameras},
            "index_sha256": dict(self._fingerprint),
        })
        return info
