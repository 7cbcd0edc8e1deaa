"""CUB-200-2011 birds in the CMR / MeshInversion layout (the official ``datasets/cub`` folder).

Layout (``data_root``; its parent holding ``datasets/cub`` is accepted too)::

    CUB_200_2011/images/<class_dir>/<name>.jpg   original photos (RGB or grayscale)
    CUB_200_2011/images.txt                      "<image_id> <rel_path>"
    CUB_200_2011/image_class_labels.txt          "<image_id> <class 1..200>"
    cache/data/<split>_cub_cleaned.mat           CMR annotations (variable ``images``)
    cache/sfm/anno_<split>.mat                   CMR SfM cameras (variable ``sfm_anno``)
    cache/cmr_pred_cam.pth                       CMR predicted cameras (camera='cmr-pred')
    predicted_mask/<index>.npy                   PointRend masks, one per .mat row (mask='predicted')

Protocol (official MeshInversion defaults): the PointRend mask replaces the annotation mask, and the
inversion starts from the CMR-predicted camera when its ``pred_pose_overlay_iou`` > 0.7, otherwise
from the SfM camera. Unlike the official loader, the label files are read from ``data_root`` (the
official code reads them relative to the CWD).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.config import check_fields, option, require
from bench.datasets.cmr_format import CMRFormatDataset
from bench.datasets.cmr_mat import LayoutRow, read_annotations, read_id_table, read_index_rows, read_sfm
from bench.errors import InstanceError, UserError

LAYOUT = ("<data_root>/{CUB_200_2011/images/, CUB_200_2011/images.txt, CUB_200_2011/image_class_labels.txt, "
          "cache/data/<split>_cub_cleaned.mat, cache/sfm/anno_<split>.mat, cache/cmr_pred_cam.pth, "
          "predicted_mask/<index>.npy}, i.e. the official datasets/cub folder")
MASKS = ("predicted", "gt")
CAMERAS = ("cmr-pred", "sfm")


@dataclass
class CUBConfig:
    """Options of the CUB dataset (defaults = the official MeshInversion protocol)."""

    data_root: str = option("datasets/cub", help="folder holding CUB_200_2011/, cache/ and predicted_mask/ "
                            "(or its parent holding datasets/cub); default: the official datasets/cub "
                            "relative to the working directory")
    split: str = option("test", help="CMR split name: test (MeshInversion's), val, testval or train")
    image_size: int = option(256, ge=1, help="side of the square crop in pixels (official: 256)")
    mask: str = option("predicted", help="mask the method fits and IoU is measured against: predicted "
                       "(PointRend masks, official) or gt (annotation mask)")
    camera: str = option("cmr-pred", help="initial camera: cmr-pred (the CMR camera when its overlay IoU > "
                         "cmr_iou_threshold, else SfM; official) or sfm (always the SfM camera)")
    cmr_iou_threshold: float = option(0.7, ge=0, le=1, help="overlay IoU the CMR camera must strictly exceed to "
                                      "be used (camera=cmr-pred; official: 0.7)")
    padding_frac: float = option(0.05, ge=0, help="bbox padding per side, as a fraction of the box size "
                                 "(official: 0.05)")
    mask_threshold: float = option(0.95, ge=0, lt=1, help="the resized mask is binarised with > mask_threshold "
                                   "(official: 0.95)")

    def __post_init__(self):
        check_fields(self)  # types and the ranges stated in option(...)
        require(bool(str(self.data_root).strip()), "data_root", "must be a folder path", self.data_root)
        require(bool(str(self.split).strip()), "split", "must be a CMR split name (test, val, testval, train)",
                self.split)
        require(self.mask in MASKS, "mask", f"must be one of {', '.join(MASKS)}", self.mask)
        require(self.camera in CAMERAS, "camera", f"must be one of {', '.join(CAMERAS)}", self.camera)


def resolve_root(data_root: str | Path) -> Path:
    """The ``datasets/cub`` folder for a user path (the folder itself or a parent of ``datasets/cub``).

    Raises:
        UserError: the path does not exist or is not a folder.
    """
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise UserError(f"CUB data root {root} does not exist or is not a folder; expected {LAYOUT}")
    if not (root / "CUB_200_2011").exists() and (root / "datasets" / "cub").is_dir():
        root = root / "datasets" / "cub"
    return root.resolve()


def _paths(root: Path, split: str) -> dict[str, Path]:
    return {
        "images": root / "CUB_200_2011" / "images",
        "images_txt": root / "CUB_200_2011" / "images.txt",
        "labels_txt": root / "CUB_200_2011" / "image_class_labels.txt",
        "anno": root / "cache" / "data" / f"{split}_cub_cleaned.mat",
        "sfm": root / "cache" / "sfm" / f"anno_{split}.mat",
        "cmr_cams": root / "cache" / "cmr_pred_cam.pth",
        "pred_masks": root / "predicted_mask",
        "fid_stats": root / "cache" / "precomputed_fid_299x299_testval.npz",
    }


def _presence(root: Path, split: str, mask: str, camera: str) -> dict[str, LayoutRow]:
    """Expected entries keyed like :func:`_paths`, with presence only (no file is read)."""
    p = _paths(root, split)

    def row(key, detail, required=True, is_dir=False):
        path = p[key]
        ok = path.is_dir() if is_dir else path.is_file()
        return LayoutRow(str(path) + ("/" if is_dir else ""), ok, detail, required)

    return {
        "images": row("images", "original CUB photos", is_dir=True),
        "images_txt": row("images_txt", "image id -> relative path"),
        "labels_txt": row("labels_txt", "image id -> class 1..200"),
        "anno": row("anno", f"CMR annotations of split {split!r} (variable 'images')"),
        "sfm": row("sfm", f"CMR SfM cameras of split {split!r} (variable 'sfm_anno')"),
        "cmr_cams": row("cmr_cams", "CMR predicted cameras (camera=cmr-pred)", required=camera == "cmr-pred"),
        "pred_masks": row("pred_masks", "PointRend masks <index>.npy (mask=predicted)",
                          required=mask == "predicted", is_dir=True),
    }


def read_labels(root: Path) -> dict[str, int]:
    """``images.txt`` + ``image_class_labels.txt`` -> {image basename: 0-based class id}.

    Raises:
        UserError: one line naming the file: unreadable, undecodable (binary, not UTF-8), malformed lines,
            or a class that is not an integer in 1..200.
    """
    p = _paths(root, "")
    paths = read_id_table(p["images_txt"], "CUB image list")
    labels = read_class_labels(p["labels_txt"])
    return {Path(rel).name: labels[image_id] for image_id, rel in paths.items() if image_id in labels}


def read_class_labels(path: Path) -> dict[str, int]:
    """``image_class_labels.txt`` -> {image id: 0-based class id}.

    Raises:
        UserError: one line naming the file (see :func:`read_id_table`), or a class outside 1..200.
    """
    out = {}
    for image_id, value in read_id_table(path, "CUB class labels").items():
        try:
            label = int(value)
        except ValueError:
            label = None
        if label is None or not 1 <= label <= 200:
            raise UserError(f"CUB class labels {path}: class of image {image_id} must be an integer in 1..200, "
                            f"got {value[:40]!r}")
        out[image_id] = label - 1
    return out


def read_cmr_cams(path: Path) -> dict[str, tuple[np.ndarray, float]]:
    """``cmr_pred_cam.pth`` -> {basename without extension: (pred_cam (7,) float64, overlay IoU)}.

    Loaded with ``torch.load(weights_only=True)`` (:func:`bench.checkpoints.load_file`); numpy arrays and
    scalars are allowed besides tensors (:func:`bench.checkpoints.numpy_globals` with ``arrays=True``).

    Raises:
        UserError: unreadable file or unexpected structure.
    """
    import torch

    from bench.checkpoints import load_file, numpy_globals

    raw = load_file(path, "CMR cameras", allow=numpy_globals(arrays=True),
                    hint="expected a torch.save'd dict {name: {'pred_cam': 7 values, 'pred_pose_overlay_iou': float}}")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a dict keyed by image name, got {type(raw).__name__}")
    out = {}
    for name, entry in raw.items():
        try:
            cam = entry["pred_cam"]
            cam = cam.detach().cpu().double().numpy() if torch.is_tensor(cam) else np.asarray(cam, np.float64)
            iou = entry["pred_pose_overlay_iou"]
            iou = float(iou.item() if hasattr(iou, "item") else iou)
            out[str(name)] = (cam.reshape(7).astype(np.float64), iou)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            raise UserError(f"{path}: entry {name!r} must hold 'pred_cam' (7 values) and "
                            f"'pred_pose_overlay_iou' ({type(exc).__name__}: {exc})") from None
    return out


def check_layout(data_root: str | Path, split: str | None = None) -> tuple[list[LayoutRow], int | None]:
    """Rows for every expected CUB path (for the default mask/camera) and the instance count.

    Raises:
        UserError: the root does not exist, or none of the expected entries is there.
    """
    split = split or CUBConfig.split
    root = resolve_root(data_root)
    rows = _presence(root, split, CUBConfig.mask, CUBConfig.camera)
    if not any(r.present for r in rows.values()):
        raise UserError(f"{root} is not a CUB data root: none of the expected files is there "
                        f"(expected layout: {LAYOUT})")
    p = _paths(root, split)
    readers = {"anno": lambda: read_annotations(p["anno"], keep_mask=False),
               "sfm": lambda: read_sfm(p["sfm"]), "cmr_cams": lambda: read_cmr_cams(p["cmr_cams"]),
               "images_txt": lambda: read_id_table(p["images_txt"], "CUB image list"),
               "labels_txt": lambda: read_class_labels(p["labels_txt"])}
    records, count = read_index_rows(rows, readers)
    if records:
        if rows["images"].present:
            found = sum((p["images"] / rec["rel_path"]).is_file() for rec in records)
            rows["images"] = rows["images"]._replace(
                detail=f"{rows['images'].detail}: {found}/{count} instance images found")
        if rows["pred_masks"].present:
            found = sum((p["pred_masks"] / f"{i}.npy").is_file() for i in range(count))
            rows["pred_masks"] = rows["pred_masks"]._replace(
                detail=f"{rows['pred_masks'].detail}: {found}/{count} masks found")
    out = list(rows.values())
    out.append(LayoutRow(str(p["fid_stats"]), p["fid_stats"].is_file(),
                         "FID_10/FID_12 reference statistics (evaluation only)", False))
    return out, count


class CUBDataset(CMRFormatDataset):
    """CUB test instances with the official crop and camera (lazy: ``load(i)`` reads one photo).

    ``__init__`` reads only the index (the two ``.mat`` files, the label files and, for
    camera='cmr-pred', ``cmr_pred_cam.pth``) and raises :class:`UserError` for an unusable root.

    ``load(i)`` returns a :class:`Sample` with ``image`` (3,S,S) float32 in [0,1] (white padding),
    ``mask`` (S,S) float32 {0,1}, ``camera`` (7,) float32 ``[s, tx, ty, qw, qx, qy, qz]``,
    ``camera_source`` ``'cmr-pred'`` or ``'sfm'`` (the one actually used), ``keypoints`` (15,3) float32,
    ``class_id`` 0..199, ``meta`` {img_path, rel_path, name, bbox (1-based as stored), crop_bbox
    (0-based square box), sfm_pose (7 floats), cmr_iou}. :meth:`load_float64` gives the float64 arrays
    (plus ``camera_source`` and ``class_id``).
    """

    name: ClassVar[str] = "cub"
    Config: ClassVar[type] = CUBConfig
    cameras: ClassVar[tuple[str, ...]] = CAMERAS
    layout: ClassVar[str] = LAYOUT
    layout_check = staticmethod(check_layout)

    def __init__(self, config: CUBConfig | None = None, run_seed: int = 0, **overrides):
        config = config or CUBConfig(**overrides)
        super().__init__(config, run_seed)
        self.root = resolve_root(config.data_root)
        rows = list(_presence(self.root, config.split, config.mask, config.camera).values())
        self._require_layout("CUB data root", rows, "mask=gt and camera=sfm need neither predicted_mask/ nor "
                             "cmr_pred_cam.pth")
        self._paths = _paths(self.root, config.split)
        self.images_dir, self.pred_dir = self._paths["images"], self._paths["pred_masks"]
        self._read_index(self._paths["anno"], self._paths["sfm"])
        self.labels = read_labels(self.root)
        cams = read_cmr_cams(self._paths["cmr_cams"]) if config.camera == "cmr-pred" else {}
        self.cmr: list[tuple[np.ndarray, float] | None] = [cams.get(Path(rec["rel_path"]).stem)
                                                           for rec in self.records]
        self.camera_sources = ["cmr-pred" if entry is not None and entry[1] > config.cmr_iou_threshold
                               else "sfm" for entry in self.cmr]

    def class_id(self, i: int) -> int:
        rec = self.records[i]
        name = Path(rec["rel_path"]).name
        if name in self.labels:
            return self.labels[name]
        if "class_id" in rec["extra"]:  # fall back to the .mat's own 1-based class
            return int(rec["extra"]["class_id"]) - 1
        raise InstanceError(f"no class label for {name} in {self._paths['images_txt'].name} / "
                            f"{self._paths['labels_txt'].name}")

    def _choose_pose(self, i: int, out: dict[str, Any]) -> None:
        """The CMR camera where it was chosen, else SfM; also ``camera_source`` and ``class_id``."""
        source = self.camera_sources[i]
        out["pose"] = self.cmr[i][0].copy() if source == "cmr-pred" else out["sfm_pose"].copy()
        out["camera_source"] = source
        out["class_id"] = self.class_id(i)

    def _extra_meta(self, i: int, rec: dict) -> dict[str, Any]:
        cmr = self.cmr[i]
        return {"cmr_iou": None if cmr is None else float(cmr[1])}

    def _index_files(self) -> tuple[Path, list[Path]]:
        keys = ["anno", "sfm"] + (["cmr_cams"] if self.config.camera == "cmr-pred" else [])
        return self.root, [self._paths[k] for k in keys]
