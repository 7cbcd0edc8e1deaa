"""``images``: one's own photos with object masks, cropped exactly as CUB instances are.

Layout of ``data_root`` (a flat folder; sub-folders other than ``masks/`` are ignored)::

    <name>.jpg | <name>.jpeg | <name>.png     the photos, any size (RGB, grayscale or palette)
    <name>_mask.png                           its mask (grey values; foreground > mask_threshold), or
    masks/<name>.png                          its mask in a masks/ folder, or
    <name>.png with an alpha channel          the alpha channel is the mask

The mask is looked up in that order; a photo without one (or with an unreadable or empty one) is a
recorded per-instance failure that says what was expected.

Crop: the mask's tight box (1-based, inclusive, as CUB's annotations store it) goes through the CUB
loader's own code (:func:`bench.datasets.crop.process_instance`: 5 % padding, square box, white
padding, bilinear resize, mask > 0.95 after the resize).

Camera (``camera``): ``search`` (default) leaves it to the method: the sample carries a
:class:`bench.camera_search.CameraSearch` grid and a rough mask-fitted camera (``camera_source =
"mask-fit"``) for methods that do not search; ``cmr`` predicts it with the feed-forward CMR network
(``cmr_checkpoint``, the released ``pred_net_500.pth``), ``camera_source = "cmr"``.

Class: ``class_id`` for every photo, or ``class_name`` looked up in ``classes_file`` (CUB's
``classes.txt``: ``<1-based id> <NNN.Name_Of_Class>``; the name matches with or without the ``NNN.``
prefix, case and ``_``/space insensitive).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from bench.camera_search import CameraSearch, SearchOptions, mask_fit_camera, search_field
from bench.config import check_fields, option, require
from bench.datasets.base import Dataset, Sample
from bench.errors import InstanceError, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CAMERAS = ("search", "cmr")
MASK_SOURCE = "given"
LAYOUT = "<data_root>/<name>.{jpg,jpeg,png} with <name>_mask.png, masks/<name>.png or an alpha channel"


@dataclass
class ImagesConfig(SearchOptions):
    """Options of the ``images`` dataset (the ``search_*`` fields: :class:`bench.camera_search.SearchOptions`)."""

    data_root: str = option("", help="folder of photos with masks (see `bench ls datasets` / the module doc)")
    image_size: int = option(256, ge=1, help="side of the square crop in pixels (as CUB: 256)")
    padding_frac: float = option(0.05, ge=0, help="box padding per side, as a fraction of the box size (as CUB: 0.05)")
    mask_threshold: float = option(0.5, ge=0, lt=1, help="a mask file's pixel is foreground when its value, "
                                   "scaled to [0,1], exceeds this")
    resize_mask_threshold: float = option(0.95, ge=0, lt=1, help="the resized crop's mask is binarised with "
                                          "> this (the CUB loader's mask_threshold, official 0.95)")
    class_id: int = option(0, ge=0, help="0-based generator class of every photo (CUB: 0..199)")
    class_name: Optional[str] = option(None, help="class by name instead of class_id, looked up in classes_file")
    classes_file: Optional[str] = option(None, help="CUB-style classes.txt for class_name; empty = "
                                         "<data_root>/classes.txt")
    camera: str = option("search", help="initial camera: search (the method scores a grid of hypotheses) or "
                         "cmr (predicted by the CMR network from cmr_checkpoint)")
    cmr_checkpoint: Optional[str] = option(None, help="the released CMR pred_net_500.pth (camera=cmr)")
    search_azimuths: int = search_field("azimuths")
    search_elevations_deg: list[float] = search_field("elevations_deg")
    search_candidates: int = search_field("candidates")

    def __post_init__(self):
        check_fields(self)
        require(self.camera in CAMERAS, "camera", f"must be one of {', '.join(CAMERAS)}", self.camera)
        require(self.camera != "cmr" or bool(self.cmr_checkpoint), "cmr_checkpoint",
                "must name the CMR checkpoint when camera=cmr", self.cmr_checkpoint)


# ------------------------------------------------------------------------------------------------
# inputs of any kind -> float64 arrays


def image_array(image) -> np.ndarray:
    """PIL image, (H,W[,3|4]) numpy array (uint8 0..255, bool or float 0..1) or (3,H,W)/(H,W,3) tensor
    in [0,1] -> (H,W,3) float64 in [0,1] (grayscale replicated, alpha dropped)."""
    arr = _as_array(image, "RGB")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image must be H x W x 3 (or 3 x H x W), got shape {arr.shape}")
    return arr[:, :, :3]


def mask_array(mask, threshold: float = 0.5) -> np.ndarray:
    """PIL image, (H,W) numpy array or tensor -> (H,W) float64 {0,1}: value scaled to [0,1] > threshold
    (an RGB mask is converted to grey)."""
    arr = _as_array(mask, "L")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3:
        arr = arr[:, :, :3].mean(axis=2) if arr.shape[2] >= 3 else arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {arr.shape}")
    return (arr > threshold).astype(np.float64)


def _as_array(value, pil_mode: str) -> np.ndarray:
    """Any supported input as a float64 array in [0,1] (channels last for 3-D)."""
    if hasattr(value, "convert") and hasattr(value, "mode"):  # PIL
        value = np.asarray(value if value.mode in (pil_mode, "RGBA", "LA") else value.convert(pil_mode))
    if torch.is_tensor(value):
        value = value.detach().cpu()
        if value.dim() == 3 and value.shape[0] in (1, 3, 4) and value.shape[-1] not in (3, 4):
            value = value.permute(1, 2, 0)
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.float64) / 255.0
    if arr.dtype.kind == "f":
        return np.clip(arr.astype(np.float64), 0.0, 1.0)
    raise ValueError(f"expected an image array of numbers, got dtype {arr.dtype}")


def mask_bbox(mask: np.ndarray) -> list[float]:
    """The tight box of a {0,1} (H,W) mask, 1-based inclusive (x1, y1, x2, y2), as CUB stores boxes.

    Raises:
        InstanceError: the mask has no foreground.
    """
    ys, xs = np.nonzero(mask > 0.5)
    if xs.size == 0:
        raise InstanceError("the mask is empty (no pixel above mask_threshold)")
    return [float(xs.min() + 1), float(ys.min() + 1), float(xs.max() + 1), float(ys.max() + 1)]


def crop_like_cub(image: np.ndarray, mask: np.ndarray, image_size: int = 256, padding_frac: float = 0.05,
                  resize_mask_threshold: float = 0.95) -> dict:
    """Crop a photo around its mask with the CUB loader's code (:func:`bench.datasets.crop.process_instance`).

    Args:
        image: (H,W,3) float64 in [0,1]. mask: (H,W) {0,1}, the same size.
    Returns:
        ``img`` (3,S,S), ``mask`` (S,S), ``crop_bbox`` (4,) int (0-based square box in photo pixels), ``bbox``.
    Raises:
        InstanceError: sizes differ or the mask is empty.
    """
    from bench.datasets.crop import check_mask_shape, process_instance

    check_mask_shape(mask, image, "the mask", "the photo")
    bbox = mask_bbox(mask)
    out = process_instance(image, mask, bbox, np.zeros((3, 0)), 1.0, (0.0, 0.0), (1.0, 0.0, 0.0, 0.0),
                           img_size=image_size, pad_frac=padding_frac, mask_threshold=resize_mask_threshold)
    if not out["mask"].any():
        raise InstanceError("the mask is empty after cropping and resizing (object too small?)")
    return {"img": out["img"], "mask": out["mask"], "crop_bbox": out["crop_bbox"], "bbox": bbox}


def make_sample(cropped: dict, *, id: str, index: int, class_id: int, camera=None,  # noqa: A002
                camera_source: str | None = None, search: CameraSearch | None = None,
                meta: dict | None = None) -> Sample:
    """A :class:`Sample` from :func:`crop_like_cub`'s arrays; ``camera`` None = search it."""
    image = torch.from_numpy(np.ascontiguousarray(cropped["img"], dtype=np.float32))
    mask = torch.from_numpy(np.ascontiguousarray(cropped["mask"], dtype=np.float32))
    meta = {**(meta or {}), "bbox": cropped["bbox"], "crop_bbox": [int(v) for v in cropped["crop_bbox"]]}
    if camera is None:
        return Sample(id=id, index=index, image=image, mask=mask, mask_source=MASK_SOURCE,
                      camera=mask_fit_camera(mask), camera_source="mask-fit", class_id=int(class_id), meta=meta,
                      camera_search=search or CameraSearch())
    camera = torch.as_tensor(camera, dtype=torch.float32).reshape(7)
    return Sample(id=id, index=index, image=image, mask=mask, mask_source=MASK_SOURCE, camera=camera,
                  camera_source=camera_source or "given", class_id=int(class_id), meta=meta)


def sample_from_image(image, mask, *, camera=None, class_id: int = 0, id: str = "image",  # noqa: A002
                      index: int = 0, image_size: int = 256, padding_frac: float = 0.05,
                      mask_threshold: float = 0.5, resize_mask_threshold: float = 0.95,
                      search: CameraSearch | None = None) -> Sample:
    """:meth:`bench.Sample.from_image`: a photo (PIL / numpy / torch) and its mask -> a cropped Sample.

    Raises:
        ValueError: unusable inputs (wrong shapes, an empty mask).
    """
    try:
        cropped = crop_like_cub(image_array(image), mask_array(mask, mask_threshold), image_size, padding_frac,
                                resize_mask_threshold)
    except InstanceError as err:
        raise ValueError(str(err)) from None
    return make_sample(cropped, id=id, index=index, class_id=class_id, camera=camera, search=search)


# ------------------------------------------------------------------------------------------------
# the folder


def list_images(root: Path) -> list[Path]:
    """The photos of a folder (sorted by name; ``*_mask.png`` are masks, not photos)."""
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.stem.endswith("_mask"))


def find_mask(path: Path) -> tuple[Path, str] | None:
    """(file, kind) of a photo's mask: ``<name>_mask.png``, ``masks/<name>.png``, or the photo's own alpha."""
    for candidate, kind in ((path.with_name(f"{path.stem}_mask.png"), "file"),
                            (path.parent / "masks" / f"{path.stem}.png", "file")):
        if candidate.is_file():
            return candidate, kind
    if path.suffix.lower() == ".png" and _has_alpha(path):
        return path, "alpha"
    return None


def _has_alpha(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("RGBA", "LA") and not (im.mode == "P" and "transparency" in im.info):
                return False
            alpha = np.asarray(im.convert("RGBA"))[:, :, 3]
    except OSError:
        return False
    return bool((alpha < 255).any())


def read_mask_file(path: Path, kind: str, threshold: float) -> np.ndarray:
    """(H,W) {0,1} mask from a mask file (grey values) or a photo's alpha channel.

    Raises:
        InstanceError: unreadable file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGBA"))[:, :, 3] if kind == "alpha" else np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InstanceError(f"cannot decode mask {path}: {exc}") from None
    return (arr.astype(np.float64) / 255.0 > threshold).astype(np.float64)


def read_class_names(path: Path) -> dict[str, int]:
    """CUB ``classes.txt`` -> {normalised name: 0-based id}; both ``"001.black_footed_albatross"`` and
    ``"black_footed_albatross"`` are keys.

    Raises:
        UserError: unreadable file or malformed line.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"images.classes_file {path}: cannot read it ({err}); pass a CUB-style classes.txt") from None
    out: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        head, _, name = line.strip().partition(" ")
        if not head.isdigit() or not name.strip():
            raise UserError(f"images.classes_file {path} line {number}: expected '<id> <name>', got {line[:60]!r}")
        full = _normalise(name)
        out[full] = int(head) - 1
        out[re.sub(r"^\d+\.", "", full)] = int(head) - 1
    return out


def _normalise(name: str) -> str:
    return re.sub(r"[\s_]+", "_", name.strip().lower())


def _instance_ids(paths: list[Path]) -> list[str]:
    """File-name-safe ids: the stem, with the suffix appended where two photos share a stem."""
    stems = [re.sub(r"[^A-Za-z0-9._-]", "_", p.stem) for p in paths]
    return [f"{s}_{p.suffix[1:].lower()}" if stems.count(s) > 1 else s for s, p in zip(stems, paths)]


def check_layout(data_root: str | Path, split: str | None = None) -> tuple[list, int | None]:
    """``bench data check --dataset images``: one row per photo, present when its mask was found.

    Raises:
        UserError: the folder holds no photo.
    """
    from bench.datasets.cmr_mat import LayoutRow

    root = Path(data_root).expanduser().resolve()
    paths = list_images(root)
    if not paths:
        raise UserError(f"images data root {root} holds no .jpg/.jpeg/.png photo; expected {LAYOUT}")
    rows = []
    for path in paths:
        found = find_mask(path)
        detail = (f"mask: {found[0].name if found[1] == 'file' else 'alpha channel'}" if found else
                  f"no mask: expected {path.stem}_mask.png, masks/{path.stem}.png or a PNG alpha channel")
        rows.append(LayoutRow(str(path), found is not None, detail))
    return rows, len(paths)


class ImagesDataset(Dataset):
    """Photos with masks from a folder (see the module docstring); ``load(i)`` reads one photo."""

    name: ClassVar[str] = "images"
    Config: ClassVar[type] = ImagesConfig
    profiles: ClassVar[dict] = {"paper": {}, "fast": {}}
    default_num_workers: ClassVar[int] = 0
    check_layout = staticmethod(check_layout)

    def __init__(self, config: ImagesConfig | None = None, run_seed: int = 0, **overrides):
        config = config or ImagesConfig(**overrides)
        super().__init__(config, run_seed)
        if not str(config.data_root).strip():
            raise UserError("images.data_root is empty: pass the folder of photos with masks (bench run --data-root "
                            f"DIR); expected {LAYOUT}")
        self.root = Path(config.data_root).expanduser()
        if not self.root.is_dir():
            raise UserError(f"images data root {self.root} is not a folder; expected {LAYOUT}")
        self.root = self.root.resolve()
        self.paths = list_images(self.root)
        if not self.paths:
            raise UserError(f"images data root {self.root} holds no .jpg/.jpeg/.png photo; expected {LAYOUT}")
        self.ids = _instance_ids(self.paths)
        self.class_index = self._class_id()
        if config.camera == "cmr" and not Path(config.cmr_checkpoint).expanduser().is_file():
            raise UserError(f"images.cmr_checkpoint: file {config.cmr_checkpoint} not found; pass the released CMR "
                            "pred_net_500.pth, or use camera=search")
        self._cmr = None

    def _class_id(self) -> int:
        cfg = self.config
        if cfg.class_name is None:
            return cfg.class_id
        path = Path(cfg.classes_file).expanduser() if cfg.classes_file else self.root / "classes.txt"
        if not path.is_file():
            raise UserError(f"images.class_name needs a classes file: {path} not found (set images.classes_file)")
        names = read_class_names(path)
        key = _normalise(cfg.class_name)
        if key not in names:
            from bench.errors import did_you_mean

            raise UserError(f"images.class_name {cfg.class_name!r} is not in {path}{did_you_mean(key, names)}")
        return names[key]

    def __len__(self) -> int:
        return len(self.paths)

    def instance_id(self, i: int) -> str:
        return self.ids[i]

    def source(self, i: int) -> str:
        return str(self.paths[i])

    def load(self, i: int) -> Sample:
        from bench.datasets.crop import read_image

        cfg = self.config
        path = self.paths[i]
        found = find_mask(path)
        if found is None:
            raise InstanceError(f"no mask for {path.name}: expected {path.stem}_mask.png, masks/{path.stem}.png "
                                "or a PNG alpha channel")
        mask_path, kind = found
        image = read_image(path)
        mask = read_mask_file(mask_path, kind, cfg.mask_threshold)
        if mask.shape != image.shape[:2]:
            raise InstanceError(f"mask {mask_path.name} is {mask.shape[0]}x{mask.shape[1]} but {path.name} is "
                                f"{image.shape[0]}x{image.shape[1]} (H x W); they must have the same size")
        cropped = crop_like_cub(image, mask, cfg.image_size, cfg.padding_frac, cfg.resize_mask_threshold)
        meta = {"img_path": str(path), "mask_path": str(mask_path), "mask_kind": kind, "name": path.stem}
        sample = make_sample(cropped, id=self.ids[i], index=i, class_id=self.class_index, search=cfg.search, meta=meta)
        if cfg.camera == "cmr":
            sample.camera, sample.camera_source, sample.camera_search = self._cmr_camera(sample), "cmr", None
        return sample

    def _cmr_camera(self, sample: Sample) -> torch.Tensor:
        """(7,) the feed-forward CMR network's camera for the crop, in the shared frame."""
        if self._cmr is None:
            from bench.config import build_config
            from bench.methods.cmr.method import CMRConfig, CMRMethod

            method = CMRMethod(build_config(CMRConfig, overrides={"checkpoint": self.config.cmr_checkpoint,
                                                                  "warmup_passes": 0}, owner="images.cmr"))
            method.setup("cpu")
            self._cmr = method
        recon = self._cmr.reconstruct([sample])[0]
        if recon.status != "ok":
            raise InstanceError(f"the CMR camera could not be predicted: {recon.error}")
        return recon.camera.float().reshape(7)

    def describe(self) -> dict[str, Any]:
        from bench.config import config_to_dict

        return {"dataset": self.name, **config_to_dict(self.config), "data_root": str(self.root),
                "num_instances": len(self), "class": self.class_index, "mask_source": MASK_SOURCE,
                "camera_source": "search" if self.config.camera == "search" else "cmr",
                "search": self.config.search.describe() if self.config.camera == "search" else None,
                "crop": "the CUB loader's (bench.datasets.crop.process_instance) around the mask's tight box"}


__all__ = ["ImagesConfig", "ImagesDataset", "crop_like_cub", "sample_from_image", "image_array", "mask_array",
           "make_sample"]
