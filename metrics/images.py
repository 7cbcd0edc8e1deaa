"""The images FID/KID are computed from: uint8 quantisation, PNG files, and named image sets.

Every FID image is a PNG under ``RUN/fid/<method>/<kind>/`` (paths from :class:`bench.store.RunDir`);
an :class:`ImageSet` is the PNGs of one such folder in a fixed order, which is what the feature
cache (:mod:`bench.metrics.features`) keys its features by.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.store import atomic_write_bytes


def quantize_truncate(img01: torch.Tensor) -> torch.Tensor:
    """``clamp(255·x, 0, 255)`` cast to uint8 (truncation), as the official FID_12 PNGs are written."""
    return (img01.float() * 255).clamp(0, 255).to(torch.uint8)


def quantize_round(img01: torch.Tensor) -> torch.Tensor:
    """``round(255·x)`` clamped to uint8 (FID_1 images; nearest to the official float input)."""
    return (img01.float() * 255).round().clamp(0, 255).to(torch.uint8)


def write_png(path: Path, hwc_uint8) -> None:
    """Atomically write an (H,W,3) uint8 array/tensor as PNG."""
    from PIL import Image

    arr = hwc_uint8.cpu().numpy() if torch.is_tensor(hwc_uint8) else np.asarray(hwc_uint8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def read_png(path: Path) -> torch.Tensor:
    """(3,H,W) uint8 tensor of an RGB PNG."""
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


class PngDataset(torch.utils.data.Dataset):
    """uint8 (3,H,W) tensors of PNG files (what torch-fidelity's extraction loop consumes)."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return read_png(self.paths[i])


@dataclass(frozen=True)
class ImageSet:
    """PNGs of one FID image folder ``RUN/fid/<method>/<kind>/``, in order (iterable like a list of paths).

    Attributes:
        method: the method (or the ``_reference`` pseudo-method) the images belong to.
        kind: the folder: ``fid1-input``, ``fid1-render``, ``views12[-<size>]``, ``gt-views12[-<size>]``,
            ``input-masked-grey``.
        paths: the PNG files (a subset of the folder: FID_10 takes 10 of the 12 views).
    """

    method: str
    kind: str
    paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        return iter(self.paths)
