"""ConvMesh's pseudo-ground-truth folder (``pseudogt_<R>x<R>/``), for the generator's Texture and Mesh FID.

On-disk format, as ConvMesh's ``data/pseudo_dataset.py`` (``BasePseudoDataset._load_pseudogt``) reads
it and MeshInversion's README lays it out (``datasets/cub/pseudogt_512x512``): one file
``<index>.npz`` per image of the dataset, in the dataset's order, each holding one key ``data``, a
pickled dict with

* ``image`` (4, H, W) in [-1, 1]: RGB and alpha of the image (ConvMesh uses ``image[:3] / 2 + 0.5``);
* ``texture`` (3, R, R) in [-1, 1]: the pseudo-ground-truth UV texture;
* ``texture_alpha`` (1, R, R): which texels were observed;
* ``mesh`` (3, 32, 32): the pseudo-ground-truth mesh map (the generator's mesh-map layout).

Values may be torch tensors (as ConvMesh saves them) or numpy arrays. The files are pickles: load only
folders you trust. ConvMesh requires exactly one file per image; so does :func:`check_folder`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.errors import UserError

KEYS = ("image", "texture", "texture_alpha", "mesh")


def check_folder(folder: str | Path, n_images: int) -> Path:
    """The folder, if it holds ``0.npz`` … ``<n_images-1>.npz`` (ConvMesh's count check), else a one-line error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--pseudogt {folder}: no such folder (ConvMesh's pseudogt_<R>x<R>/ with one <index>.npz "
                        "per image)")
    files = list(folder.glob("*.npz"))
    if len(files) != n_images:
        raise UserError(f"--pseudogt {folder}: {len(files)} .npz files for {n_images} images of the dataset; "
                        "ConvMesh's pseudo-ground truth has one file per image of the same split, in its order")
    missing = [i for i in range(n_images) if not (folder / f"{i}.npz").is_file()]
    if missing:
        raise UserError(f"--pseudogt {folder}: no {missing[0]}.npz (files are named by the image's index)")
    return folder


def load_pseudogt(folder: str | Path, index: int) -> dict[str, torch.Tensor]:
    """``{"image" (4,H,W), "texture" (3,R,R), "texture_alpha" (1,R,R), "mesh" (3,32,32)}`` float32 of image
    ``index`` (a damaged or foreign file is a one-line `UserError` naming it)."""
    path = Path(folder) / f"{index}.npz"
    try:
        with np.load(path, allow_pickle=True) as npz:
            data = npz["data"].item()
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to replace
        raise UserError(f"{path}: not a ConvMesh pseudo-ground-truth file ({type(err).__name__}: "
                        f"{str(err)[:120]})") from None
    if not isinstance(data, dict) or any(k not in data for k in KEYS):
        raise UserError(f"{path}: expected a dict with {', '.join(KEYS)} under key 'data'")
    out = {k: torch.as_tensor(np.asarray(data[k]) if not torch.is_tensor(data[k]) else data[k]).float()
           for k in KEYS}
    if out["texture"].dim() != 3 or out["texture"].shape[0] != 3 or out["mesh"].shape != (3, 32, 32):
        raise UserError(f"{path}: texture {tuple(out['texture'].shape)} / mesh {tuple(out['mesh'].shape)}; expected "
                        "(3,R,R) and (3,32,32)")
    return out


def write_pseudogt(folder: str | Path, index: int, image, texture, texture_alpha, mesh) -> Path:
    """Write one file in ConvMesh's format (torch tensors in a pickled dict under ``data``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{index}.npz"
    data = {"image": torch.as_tensor(image), "texture": torch.as_tensor(texture),
            "texture_alpha": torch.as_tensor(texture_alpha), "mesh": torch.as_tensor(mesh)}
    np.savez(path, data=np.array(data, dtype=object))
    return path
