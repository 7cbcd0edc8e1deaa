"""PASCAL3D+ cars in the CMR ``p3d`` layout (as used by CMR, UMR-style loaders, ConvMesh, MeshInversion).

Layout (``data_root``)::

    PASCAL3D+_release1.1/Images/car_pascal/<VOC id>.jpg       (or data_root itself holds Images/)
    PASCAL3D+_release1.1/Images/car_imagenet/<wnid>_<n>.JPEG
    data/car_<split>.mat        CMR annotations (variable ``images``; rel_path with backslashes)
    sfm/car_<split>.mat         CMR SfM cameras (variable ``sfm_anno``)
    data/car_kps.mat            keypoint names / left-right permutation (training only; optional)

The annotation folder (holding ``data/`` and ``sfm/``) defaults to ``data_root`` and may also be
``data_root/p3d`` or ``data_root/cachedir/p3d`` (CMR's ``cachedir``), or be given as ``anno_root``.
Crop, resize and normalisation are the CUB ones (:mod:`bench.datasets.crop`); the camera is the SfM
camera; the mask is the annotation mask (``gt``) unless predicted masks are supplied.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bench.config import check_fields, option, require
from bench.datasets.cmr_format import CMRFormatDataset
from bench.datasets.cmr_mat import LayoutRow, read_annotations, read_index_rows, read_sfm
from bench.errors import UserError

IMAGES_DIR = "PASCAL3D+_release1.1"
LAYOUT = ("<data_root>/{PASCAL3D+_release1.1/Images/<category>_pascal|<category>_imagenet/, "
          "data/<category>_<split>.mat, sfm/<category>_<split>.mat, data/<category>_kps.mat (optional)}")
MASKS = ("gt", "predicted")
CAMERAS = ("sfm",)


@dataclass
class P3DConfig:
    """Options of the PASCAL3D+ dataset."""

    data_root: str = option("datasets/p3d", help="folder holding PASCAL3D+_release1.1/ (or Images/ directly) "
                            "and, by default, the CMR annotation folders data/ and sfm/")
    anno_root: str = option("", help="folder holding data/ and sfm/ when elsewhere; empty = search data_root, "
                            "data_root/p3d, data_root/cachedir/p3d")
    split: str = option("val", help="CMR split: val (VOC-val PASCAL cars, the usual test split), train or all")
    category: str = option("car", help="PASCAL3D+ category of the CMR files (car; aeroplane files share the format)")
    image_size: int = option(256, ge=1, help="side of the square crop in pixels (256)")
    mask: str = option("gt", help="mask the method fits and IoU is measured against: gt (annotation mask) or "
                       "predicted (<predicted_mask_dir>/<index>.npy)")
    predicted_mask_dir: str = option("", help="folder of predicted masks, one <index>.npy per .mat row; "
                                     "empty = <anno_root>/predicted_mask")
    camera: str = option("sfm", help="initial camera: sfm (the only camera available for cars)")
    padding_frac: float = option(0.05, ge=0, help="bbox padding per side, as a fraction of the box size (0.05)")
    mask_threshold: float = option(0.95, ge=0, lt=1, help="the resized mask is binarised with > mask_threshold (0.95)")

    def __post_init__(self):
        check_fields(self)  # types and the ranges stated in option(...)
        require(bool(str(self.data_root).strip()), "data_root", "must be a folder path", self.data_root)
        require(bool(str(self.split).strip()), "split", "must be a CMR split name (val, train, all)", self.split)
        require(bool(str(self.category).strip()), "category", "must be a PASCAL3D+ category (e.g. car)",
                self.category)
        require(self.mask in MASKS, "mask", f"must be one of {', '.join(MASKS)}", self.mask)
        require(self.camera in CAMERAS, "camera", "must be 'sfm' (no CMR car cameras exist)", self.camera)


def _resolve(data_root, anno_root: str, split: str, category: str) -> tuple[Path, Path, Path]:
    """(root, images_dir, anno_dir) for the user's paths.

    Raises:
        UserError: ``data_root`` (or ``anno_root``) does not exist.
    """
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise UserError(f"PASCAL3D+ data root {root} does not exist or is not a folder; expected {LAYOUT}")
    root = root.resolve()
    images = root / IMAGES_DIR / "Images"
    if not images.is_dir() and (root / "Images").is_dir():
        images = root / "Images"
    if anno_root:
        anno = Path(anno_root).expanduser()
        if not anno.is_dir():
            raise UserError(f"PASCAL3D+ annotation root {anno} does not exist; expected a folder "
                            f"holding data/{category}_{split}.mat and sfm/{category}_{split}.mat")
        anno = anno.resolve()
    else:
        anno = root
        for cand in (root, root / "p3d", root / "cachedir" / "p3d"):
            if (cand / "data" / f"{category}_{split}.mat").is_file():
                anno = cand
                break
    return root, images, anno


def _presence(images: Path, anno: Path, split: str, category: str, mask: str,
              pred_dir: Path) -> dict[str, LayoutRow]:
    def row(path: Path, detail, required=True, is_dir=False):
        ok = path.is_dir() if is_dir else path.is_file()
        return LayoutRow(str(path) + ("/" if is_dir else ""), ok, detail, required)

    return {
        "images": row(images, "PASCAL3D+ photos (Images/)", is_dir=True),
        "anno": row(anno / "data" / f"{category}_{split}.mat",
                    f"CMR annotations of split {split!r} (variable 'images')"),
        "sfm": row(anno / "sfm" / f"{category}_{split}.mat",
                   f"CMR SfM cameras of split {split!r} (variable 'sfm_anno')"),
        "kps": row(anno / "data" / f"{category}_kps.mat", "keypoint names / left-right permutation "
                   "(training-time mirroring only)", required=False),
        "pred_masks": row(pred_dir, "predicted masks <index>.npy (mask=predicted)",
                          required=mask == "predicted", is_dir=True),
    }


def check_layout(data_root: str | Path, split: str | None = None) -> tuple[list[LayoutRow], int | None]:
    """Rows for every expected PASCAL3D+ path (default config) and the instance count.

    Raises:
        UserError: the root does not exist, or none of the expected entries is there.
    """
    cfg = P3DConfig(data_root=str(data_root), split=split or P3DConfig.split)
    root, images, anno = _resolve(cfg.data_root, "", cfg.split, cfg.category)
    rows = _presence(images, anno, cfg.split, cfg.category, cfg.mask, anno / "predicted_mask")
    if not any(r.present for k, r in rows.items() if k != "pred_masks"):
        raise UserError(f"{root} is not a PASCAL3D+ data root: none of the expected files is there "
                        f"(expected layout: {LAYOUT})")
    records, count = read_index_rows(rows, {"anno": lambda: read_annotations(rows["anno"].path, keep_mask=False),
                                            "sfm": lambda: read_sfm(rows["sfm"].path)})
    out = []
    for key, r in rows.items():
        if key == "pred_masks" and not r.present:
            continue  # optional and not used by the default config
        out.append(r)
        if key == "images" and records:
            subsets: dict[str, list[int]] = {}
            for rec in records:
                sub = rec["rel_path"].split("/", 1)[0]
                hit = subsets.setdefault(sub, [0, 0])
                hit[0] += 1
                hit[1] += (images / rec["rel_path"]).is_file()
            for sub, (n, found) in sorted(subsets.items()):
                out.append(LayoutRow(str(images / sub) + "/", (images / sub).is_dir(),
                                     f"{found}/{n} instance images found"))
    return out, count


class P3DDataset(CMRFormatDataset):
    """PASCAL3D+ instances with the official CMR crop and the SfM camera (lazy).

    ``load(i)`` returns a :class:`Sample` with ``image`` (3,S,S) float32 in [0,1] (white padding),
    ``mask`` (S,S) float32 {0,1}, ``camera`` (7,) float32 SfM ``[s, tx, ty, qw, qx, qy, qz]``,
    ``camera_source`` ``'sfm'``, ``keypoints`` (12,3) float32 (cars), ``class_id`` 0 (single category),
    ``meta`` {img_path, rel_path, name, bbox, crop_bbox, sfm_pose, voc_image_id, voc_rec_id}.
    """

    name: ClassVar[str] = "p3d"
    Config: ClassVar[type] = P3DConfig
    cameras: ClassVar[tuple[str, ...]] = CAMERAS
    layout: ClassVar[str] = LAYOUT
    layout_check = staticmethod(check_layout)

    def __init__(self, config: P3DConfig | None = None, run_seed: int = 0, **overrides):
        config = config or P3DConfig(**overrides)
        super().__init__(config, run_seed)
        self.root, self.images_dir, self.anno_dir = _resolve(config.data_root, config.anno_root,
                                                             config.split, config.category)
        self.pred_dir = (Path(config.predicted_mask_dir).expanduser().resolve() if config.predicted_mask_dir
                         else self.anno_dir / "predicted_mask")
        rows = _presence(self.images_dir, self.anno_dir, config.split, config.category, config.mask,
                         self.pred_dir)
        self._rows = rows
        self._require_layout("PASCAL3D+ data root", list(rows.values()))
        self._read_index(Path(rows["anno"].path), Path(rows["sfm"].path))

    def _extra_meta(self, i: int, rec: dict) -> dict[str, Any]:
        return {key: rec["extra"][key] for key in ("voc_image_id", "voc_rec_id") if key in rec["extra"]}

    def _index_files(self) -> tuple[Path, list[Path]]:
        return self.anno_dir, [self.anno_path, self.sfm_path]

    def _describe_roots(self) -> dict[str, str]:
        return {"images_dir": str(self.images_dir), "anno_root": str(self.anno_dir)}
