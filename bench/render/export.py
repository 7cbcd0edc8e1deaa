"""Textured meshes to files: Wavefront ``.obj`` + ``.mtl`` + texture ``.png``.

The one home of the texture-to-PNG conversion (`bench sample` and
:meth:`bench.methods.base.Reconstruction.export` both write through it):

* UV meshes (MeshInversion): the texture map as it is, the mesh's per-corner UVs (de-duplicated),
  exactly what `bench sample` writes.
* per-face T×T texture grids (CMR/UMR): baked into a texture atlas, one T×T cell per face, with each
  face's corners at the texel centres of its cell so that a viewer's bilinear look-up reproduces the
  grid's (see :func:`bake_face_textures`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["bake_face_textures", "texture_to_uint8", "write_textured_obj"]


def texture_to_uint8(texture: torch.Tensor) -> np.ndarray:
    """(3,H,W) texture in [-1,1] -> (H,W,3) uint8 numpy (``round((x + 1)·127.5)``)."""
    img = ((texture.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return img.permute(1, 2, 0).numpy()


def bake_face_textures(face_textures: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Per-face T×T texture grids as one texture atlas with OBJ texture coordinates.

    Face ``f`` gets the T×T cell at row ``f // n``, column ``f % n`` (``n = ceil(sqrt(F))``) holding
    ``face_textures[f]`` as it is. Its corners sit at the texel centres of grid positions
    (row T-1, col 0), (row 0, col T-1) and (row 0, col 0) — the grid's convention, colour at
    barycentrics (w0, w1) = bilinear look-up at ((T-1)·w0, (T-1)·w1) — in the OBJ convention
    (``u = (col + 0.5)/W``, ``v = 1 - (row + 0.5)/H``), so a viewer's bilinear filtering shows each
    face as the renderer does. The unused cells are black.

    Args:
        face_textures: (F,T,T,3) RGB in [-1,1].

    Returns:
        atlas (3,H,W) in [-1,1] (``H = ceil(F/n)·T``, ``W = n·T``), face_uvs (F,3,2) float32
        per-corner (u, v) in the OBJ convention.
    """
    if face_textures.dim() != 4 or face_textures.shape[1] != face_textures.shape[2] or face_textures.shape[3] != 3:
        raise ValueError(f"face_textures must be (F,T,T,3), got {tuple(face_textures.shape)}")
    n_faces, T = face_textures.shape[0], face_textures.shape[1]
    cols = int(np.ceil(np.sqrt(n_faces)))
    rows = int(np.ceil(n_faces / cols))
    tex = face_textures.detach().float().cpu()
    atlas = torch.full((rows * cols, T, T, 3), -1.0)
    atlas[:n_faces] = tex
    atlas = atlas.reshape(rows, cols, T, T, 3).permute(4, 0, 2, 1, 3).reshape(3, rows * T, cols * T)
    f = np.arange(n_faces)
    row0, col0 = (f // cols) * T, (f % cols) * T
    corners = np.array([[T - 1, 0], [0, T - 1], [0, 0]])  # (row, col) in the cell of corners 0, 1, 2
    r = row0[:, None] + corners[None, :, 0]
    c = col0[:, None] + corners[None, :, 1]
    height, width = rows * T, cols * T
    face_uvs = np.stack(((c + 0.5) / width, 1 - (r + 0.5) / height), axis=-1).astype(np.float32)
    return atlas, face_uvs


def _index_uvs(face_uvs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-corner UVs (F,3,2) -> unique UVs (T,2) and per-corner indices (F,3)."""
    flat = np.asarray(face_uvs, dtype=np.float32).reshape(-1, 2)
    uvs, index = np.unique(flat, axis=0, return_inverse=True)
    return uvs, index.reshape(-1, 3)


def write_textured_obj(path: str | Path, mesh) -> list[Path]:
    """Write a :class:`bench.methods.base.TexturedMesh` as ``PATH.obj`` + ``PATH.mtl`` + ``PATH_texture.png``.

    Vertices are written in the object frame as they are. UV meshes: the texture map and the mesh's
    UVs as `bench sample` writes them; per-face grids: the atlas of :func:`bake_face_textures`.
    A mesh with neither texture gets the geometry only.

    Returns:
        the files written, the ``.obj`` first.
    """
    from PIL import Image

    from bench.render.obj import write_obj

    path = Path(path)
    vertices = mesh.vertices.detach().float().cpu().numpy()
    faces = mesh.faces.detach().cpu().numpy().astype(np.int64)
    if mesh.texture is not None and mesh.face_uvs is not None:
        texture, face_uvs = mesh.texture, mesh.face_uvs.detach().float().cpu().numpy()
    elif mesh.face_textures is not None:
        texture, face_uvs = bake_face_textures(mesh.face_textures)
    else:
        write_obj(path, vertices, faces)
        return [path]
    if texture.dim() == 4:
        texture = texture[0]
    uvs, uv_index = _index_uvs(face_uvs)
    tex_name = f"{path.stem}_texture.png"
    Image.fromarray(texture_to_uint8(texture)).save(path.parent / tex_name)
    write_obj(path, vertices, faces, uvs, uv_index, mtl_name=path.stem, texture_file=tex_name)
    return [path, path.with_suffix(".mtl"), path.parent / tex_name]
