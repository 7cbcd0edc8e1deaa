"""The official per-sample processing of CMR-format datasets (test split): crop, resize, normalise.

Re-states ``BaseDataset.forward_img`` of CMR / MeshInversion (spec: meshinversion.md §f,
baselines.md §6.4), float64 throughout like the official code:

1. bbox (1-based, inclusive) − 1; each side grows by ``pad_frac`` × (x2 − x1 + 1) resp. (y2 − y1 + 1);
2. ``square_bbox``: round each coordinate (Python ``round``, half to even), grow the shorter side
   symmetrically to the longer one (offset ``round((side − w) / 2)``), x2 = x1 + side − 1;
3. crop (may reach outside the photo): image padded with 1 (white), mask with 0; visible keypoints
   and the SfM translation shifted by −(x1, y1);
4. ``cv2.resize`` (bilinear) of the float64 image and mask to ``round(side · r)`` with
   r = img_size / side; scale, translation and visible keypoints multiplied by r;
   mask = resized mask > ``mask_threshold`` (MeshInversion's ``--target_mask_threshold``);
5. normalise: s ← s·(1/W + 1/H), t ← 2t/W − 1 (x) and 2t/H − 1 (y), keypoints likewise and zeroed
   when invisible.

:func:`process_instance` returns the float64 arrays (parity tests); :func:`to_float32` converts them
for a :class:`~bench.datasets.base.Sample`. Imports no torch.
"""
from __future__ import annotations

import numpy as np

__all__ = ["pad_bbox", "square_bbox", "crop", "resize", "process_instance", "to_float32",
           "read_image", "read_mask_npy", "check_mask_shape", "load_cmr_instance"]


def pad_bbox(bbox, pad_frac: float = 0.05) -> list[float]:
    """Grow a 0-based inclusive box (x1, y1, x2, y2) by ``pad_frac`` of its size on each side.

    Size = x2 − x1 + 1 (resp. y). No jitter (test split). Returns 4 floats.
    """
    x1, y1, x2, y2 = (float(c) for c in bbox)
    dw = pad_frac * (x2 - x1 + 1)
    dh = pad_frac * (y2 - y1 + 1)
    return [x1 - dw, y1 - dh, x2 + dw, y2 + dh]


def square_bbox(bbox) -> list[int]:
    """Official ``square_bbox``: round, then enlarge the shorter side symmetrically.

    Returns (x1, y1, x2, y2) ints, inclusive, with x2 − x1 == y2 − y1.
    """
    x1, y1, x2, y2 = (int(round(float(c))) for c in bbox)
    w = x2 - x1 + 1
    h = y2 - y1 + 1
    side = max(w, h)
    x1 -= int(round((side - w) / 2.0))
    y1 -= int(round((side - h) / 2.0))
    return [x1, y1, x1 + side - 1, y1 + side - 1]


def crop(img: np.ndarray, bbox, bgval: float = 0.0) -> np.ndarray:
    """Crop an (H,W) or (H,W,C) array to an inclusive int box that may leave the array.

    Returns (h, w, C) float64 (C = 1 for 2-D input) filled with ``bgval`` outside the array,
    h = y2 − y1 + 1, w = x2 − x1 + 1.
    """
    x1, y1, x2, y2 = (int(round(float(c))) for c in bbox)
    arr = img if img.ndim == 3 else img[:, :, None]
    H, W, C = arr.shape
    out = np.full((y2 - y1 + 1, x2 - x1 + 1, C), float(bgval), dtype=np.float64)
    sx0, sx1 = max(0, x1), min(W, x2 + 1)
    sy0, sy1 = max(0, y1), min(H, y2 + 1)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y1:sy1 - y1, sx0 - x1:sx1 - x1, :] = arr[sy0:sy1, sx0:sx1, :]
    return out


def resize(img: np.ndarray, scale: float) -> np.ndarray:
    """``cv2.resize`` (bilinear) to ``round(shape · scale)``; an (h,w,1) input comes back (h',w')."""
    import cv2

    h, w = img.shape[:2]
    new_h, new_w = int(np.round(h * scale)), int(np.round(w * scale))
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def process_instance(image: np.ndarray, mask: np.ndarray, bbox, parts: np.ndarray,
                     sfm_scale: float, sfm_trans, sfm_quat, *, img_size: int = 256,
                     pad_frac: float = 0.05, mask_threshold: float | None = 0.95) -> dict:
    """Crop, resize and normalise one instance exactly like the official test-split loader.

    Args:
        image: (H,W,3) float64 in [0,1] (already /255; grayscale already replicated).
        mask: (H,W) any numeric/bool dtype, treated as is (0/1).
        bbox: (4,) 1-based inclusive (x1, y1, x2, y2) as stored in the ``.mat``.
        parts: (3,K) keypoints as stored: x, y 1-based, visibility.
        sfm_scale, sfm_trans (2,), sfm_quat (4,) wxyz: SfM camera in original-image pixels.
        img_size: output side (256).
        pad_frac: padding fraction per side (0.05).
        mask_threshold: binarise the resized mask with ``> mask_threshold``; ``None`` keeps it soft.

    Returns:
        dict of float64 arrays: ``img`` (3,S,S), ``mask`` (S,S), ``kp`` (K,3), ``sfm_pose`` (7,)
        = [s, tx, ty, qw, qx, qy, qz] normalised, and ``crop_bbox`` (4,) int = the square box
        (0-based, inclusive) in original-image pixels.
    """
    kp = np.array(parts, dtype=np.float64).reshape(3, -1).T.copy()  # (K,3)
    vis = kp[:, 2] > 0
    kp[vis, :2] -= 1.0
    box0 = np.asarray(bbox, dtype=np.float64) - 1.0
    box = square_bbox(pad_bbox(box0, pad_frac))

    img_c = crop(np.asarray(image, dtype=np.float64), box, bgval=1.0)
    mask_c = crop(np.asarray(mask), box, bgval=0.0)
    scale = float(sfm_scale)
    trans = np.array(sfm_trans, dtype=np.float64).reshape(2).copy()
    kp[vis, 0] -= box[0]
    kp[vis, 1] -= box[1]
    trans -= (box[0], box[1])

    r = img_size / float(max(img_c.shape[0], img_c.shape[1]))
    img_r = resize(img_c, r)
    mask_r = resize(mask_c, r)
    if mask_r.ndim == 3:
        mask_r = mask_r[:, :, 0]
    kp[vis, :2] *= r
    scale *= r
    trans *= r
    if mask_threshold is not None:
        mask_r = (mask_r > mask_threshold).astype(np.float64)

    h, w = img_r.shape[:2]
    kp_n = np.stack([2.0 * (kp[:, 0] / w) - 1.0, 2.0 * (kp[:, 1] / h) - 1.0, kp[:, 2]], axis=1)
    kp_n = kp_n * vis[:, None]
    s_n = scale * (1.0 / w + 1.0 / h)
    tx = 2.0 * (trans[0] / w) - 1.0
    ty = 2.0 * (trans[1] / h) - 1.0
    pose = np.concatenate([[s_n, tx, ty], np.asarray(sfm_quat, dtype=np.float64).reshape(4)])
    return {
        "img": np.ascontiguousarray(img_r.transpose(2, 0, 1)),
        "mask": np.ascontiguousarray(mask_r, dtype=np.float64),
        "kp": kp_n,
        "sfm_pose": pose,
        "crop_bbox": np.array(box, dtype=np.int64),
    }


def to_float32(processed: dict) -> dict:
    """The float arrays of a :func:`process_instance` dict as float32 torch tensors (same keys;
    integer arrays such as ``crop_bbox`` and non-array entries are left out)."""
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
            for k, v in processed.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"}


# ------------------------------------------------------------------------------------------------
# per-instance file reading (errors are per-instance: they become FailedSample records)


def read_image(path) -> np.ndarray:
    """Read a photo as (H,W,3) float64 in [0,1] (``uint8 / 255``, like ``skimage.io.imread / 255``).

    Grayscale is replicated to 3 channels; palette images are converted to RGB; an alpha channel is
    dropped. Raises :class:`bench.errors.InstanceError` for a missing or undecodable file.
    """
    from pathlib import Path

    from PIL import Image, UnidentifiedImageError

    from bench.errors import InstanceError

    path = Path(path)
    if not path.is_file():
        raise InstanceError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "L":
                arr = np.asarray(im)
                arr = np.repeat(arr[:, :, None], 3, axis=2)
            else:
                arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InstanceError(f"cannot decode image {path}: {exc}") from None
    return arr.astype(np.float64) / 255.0


def read_mask_npy(path) -> np.ndarray:
    """Read a predicted mask ``<index>.npy``: (H,W) array (any numeric/bool dtype, used as 0/1).

    A trailing singleton channel (H,W,1) is dropped. Pickled (object) arrays are refused.
    Raises :class:`bench.errors.InstanceError` when missing/unreadable.
    """
    from pathlib import Path

    from bench.errors import InstanceError

    path = Path(path)
    if not path.is_file():
        raise InstanceError(f"predicted mask not found: {path}")
    try:
        mask = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InstanceError(f"cannot read predicted mask {path}: {exc}") from None
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.dtype.kind not in "biuf":
        raise InstanceError(f"predicted mask {path} has dtype {mask.dtype}; expected a numeric H x W array")
    return mask


def check_mask_shape(mask: np.ndarray, image: np.ndarray, mask_desc: str, image_path) -> None:
    """Raise :class:`bench.errors.InstanceError` unless ``mask`` is (H,W) of the (H,W,3) ``image``."""
    from bench.errors import InstanceError

    if mask.ndim != 2 or mask.shape != image.shape[:2]:
        raise InstanceError(
            f"{mask_desc} has shape {'x'.join(map(str, mask.shape))} but image {image_path} is "
            f"{image.shape[0]}x{image.shape[1]} (H x W); the mask must have the original image's size")


def load_cmr_instance(img_path, rec: dict, sfm: dict, pred_mask_path, anno_desc: str, config) -> dict:
    """Read and process one instance of a CMR-format dataset (CUB, PASCAL3D+), float64.

    Args:
        img_path: the photo.
        rec: the parsed annotation record (``bbox``, ``parts``, ``mask``).
        sfm: the parsed SfM record (``rot``, ``scale``, ``trans``).
        pred_mask_path: ``<index>.npy`` of the predicted mask, or None to use the annotation mask.
        anno_desc: how to name the annotation in errors, e.g. ``"entry 3 of test_cub_cleaned.mat"``.
        config: the dataset config (``image_size``, ``padding_frac``, ``mask_threshold``).
    Returns:
        :func:`process_instance`'s arrays plus ``img_path``. Raises for a per-instance problem
        (missing or corrupt photo, missing or wrongly sized mask).
    """
    from bench.datasets.cmr_mat import sfm_to_pose
    from bench.errors import InstanceError

    image = read_image(img_path)
    if pred_mask_path is not None:
        mask = read_mask_npy(pred_mask_path)
        check_mask_shape(mask, image, f"predicted mask {pred_mask_path}", img_path)
    else:
        mask = rec["mask"]
        if mask is None:
            raise InstanceError(f"{anno_desc} has no mask")
        check_mask_shape(mask, image, f"annotation mask of {anno_desc}", img_path)
    scale, trans, quat = sfm_to_pose(sfm)
    out = process_instance(image, mask, rec["bbox"], rec["parts"], scale, trans, quat,
                           img_size=int(config.image_size), pad_frac=config.padding_frac,
                           mask_threshold=config.mask_threshold)
    out["img_path"] = str(img_path)
    return out
