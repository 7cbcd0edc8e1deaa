"""Minimal Wavefront .obj reader (vertices, texture coordinates, triangle faces)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def read_obj(path: str | Path):
    """Read a triangle mesh with per-corner texture indices.

    Returns:
        vertices (V,3) float32, uvs (T,2) float32, faces (F,3) int64 (0-based vertex indices),
        face_uvs (F,3) int64 (0-based uv indices; -1 where the file gives none).
    """
    verts, uvs, faces, face_uvs = [], [], [], []
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "v":
                verts.append([float(x) for x in parts[1:4]])
            elif parts[0] == "vt":
                uvs.append([float(x) for x in parts[1:3]])
            elif parts[0] == "f":
                corners = [p.split("/") for p in parts[1:4]]
                faces.append([int(c[0]) - 1 for c in corners])
                face_uvs.append([int(c[1]) - 1 if len(c) > 1 and c[1] else -1 for c in corners])
    return (
        np.asarray(verts, dtype=np.float32),
        np.asarray(uvs, dtype=np.float32).reshape(-1, 2),
        np.asarray(faces, dtype=np.int64),
        np.asarray(face_uvs, dtype=np.int64),
    )


def write_obj(path: str | Path, vertices, faces, uvs=None, face_uvs=None, mtl_name: str | None = None,
              texture_file: str | None = None) -> None:
    """Write a triangle mesh (numpy arrays, 0-based indices), optionally with UVs and a texture PNG.

    With ``texture_file`` a ``.mtl`` beside the ``.obj`` references it (map_Kd).
    """
    path = Path(path)
    lines = []
    if texture_file is not None:
        mtl = path.with_suffix(".mtl")
        name = mtl_name or "material0"
        mtl.write_text(f"newmtl {name}\nKa 1 1 1\nKd 1 1 1\nmap_Kd {texture_file}\n")
        lines += [f"mtllib {mtl.name}", f"usemtl {name}"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in np.asarray(vertices)]
    if uvs is not None:
        lines += [f"vt {u:.6f} {v:.6f}" for u, v in np.asarray(uvs)]
    if uvs is not None and face_uvs is not None:
        lines += [f"f {a+1}/{ta+1} {b+1}/{tb+1} {c+1}/{tc+1}"
                  for (a, b, c), (ta, tb, tc) in zip(np.asarray(faces), np.asarray(face_uvs))]
    else:
        lines += [f"f {a+1} {b+1} {c+1}" for a, b, c in np.asarray(faces)]
    path.write_text("\n".join(lines) + "\n")
