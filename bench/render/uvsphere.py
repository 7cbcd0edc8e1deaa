"""The ConvMesh / MeshInversion UV-sphere mesh template (16 rings x 32 segments, x-symmetric).

The template is the shipped Blender export ``data/uvsphere_16rings.obj`` (482 vertices, 559 UVs,
960 triangles; see ``shared/spec/meshinversion.md`` §b). A generator's 32x32 mesh map holds, per
texel, a displacement along each vertex's (normal, tangent, bitangent) frame; the template turns it
into vertex positions. Only the 257 vertices with x >= 0 are sampled from the map; the 225 vertices
with x < 0 are their mirror images, so every mesh is symmetric about the plane x = 0.

Object frame: y up, unit sphere, the generated half of the UV map (u in [0.25, 0.75]) at +x.

Usage::

    tpl = uvsphere_template("cpu")              # cached per device
    verts = tpl.vertex_positions(mesh_map)      # (B,3,32,32) -> (B,482,3)
    normals = tpl.face_normals(verts)           # (B,960,3)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.render.obj import read_obj

OBJ_PATH = Path(__file__).resolve().parent / "data" / "uvsphere_16rings.obj"

#: UV grid of the template: 32 segments around, 16 rings from pole to pole (hard-coded upstream).
SEGMENTS = 32
RINGS = 16
#: vertices with |x| below this lie on the symmetry plane.
SYMMETRY_EPS = 1e-4


def _face_adjacency(faces: np.ndarray) -> np.ndarray:
    """Faces sharing an edge with each face: (F,K) int64, self excluded, duplicates removed,
    sorted descending, padded with -1 to the largest neighbour count K."""
    edge_faces: dict[tuple[int, int], list[int]] = {}
    for f, tri in enumerate(faces.tolist()):
        for a, b in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0])):
            edge_faces.setdefault((min(a, b), max(a, b)), []).append(f)
    neigh: list[set[int]] = [set() for _ in range(len(faces))]
    for fs in edge_faces.values():
        for f in fs:
            neigh[f].update(g for g in fs if g != f)
    width = max(len(n) for n in neigh)
    out = np.full((len(faces), width), -1, dtype=np.int64)
    for f, n in enumerate(neigh):
        row = sorted(n, reverse=True)
        out[f, : len(row)] = row
    return out


def _symmetry_indices(vertices: np.ndarray):
    """(neg_indices, pos_indices, zero_indices) for mirror symmetry about x = 0.

    ``pos_indices[i]`` is the vertex nearest to the mirror image of ``neg_indices[i]``.
    """
    x = vertices[:, 0]
    neg = np.nonzero(x < -SYMMETRY_EPS)[0]
    zero = np.nonzero(np.abs(x) < SYMMETRY_EPS)[0]
    mirrored = vertices[neg] * np.array([-1.0, 1.0, 1.0], dtype=vertices.dtype)
    dist = np.linalg.norm(mirrored[:, None, :] - vertices[None, :, :], axis=-1)
    pos = dist.argmin(axis=1)
    if dist[np.arange(len(neg)), pos].max() >= SYMMETRY_EPS or len(set(pos.tolist())) != len(pos):
        raise ValueError(f"{OBJ_PATH.name} is not mirror-symmetric about x = 0")
    return neg.astype(np.int64), pos.astype(np.int64), zero.astype(np.int64)


def _topo_map(vertices, faces, uvs, face_uv_index) -> np.ndarray:
    """Per-vertex grid coordinates (V,2) = (2u-1, 1-2v) of the vertex's mean UV over its face corners.

    A corner on the seam with u = 1 counts as u = 0 (so the seam vertices sit at the left edge).
    """
    corner_uv = uvs[face_uv_index].reshape(-1, 2).astype(np.float64) * np.array([SEGMENTS, RINGS])
    corner_uv[np.abs(corner_uv[:, 0] - SEGMENTS) < 1e-4, 0] = 0.0
    idx = faces.reshape(-1)
    total = np.zeros((len(vertices), 2))
    np.add.at(total, idx, corner_uv)
    count = np.bincount(idx, minlength=len(vertices))[:, None]
    uv = total / count / np.array([SEGMENTS, RINGS])
    return np.stack([2 * uv[:, 0] - 1, -(2 * uv[:, 1] - 1)], axis=1).astype(np.float32)


def _tangent_map(vertices: np.ndarray, poles) -> np.ndarray:
    """Per-vertex frames (V,3,3), rows (normal, tangent, bitangent); tangent = bitangent = 0 at poles."""
    n = torch.from_numpy(vertices).double()
    n = F.normalize(n, dim=1)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=n.dtype).expand_as(n)
    t = F.normalize(torch.cross(n, up, dim=1), dim=1)
    t[list(poles)] = 0.0
    b = torch.cross(n, t, dim=1)
    return torch.stack([n, t, b], dim=1).float().numpy()


class UVSphereTemplate(nn.Module):
    """The symmetric 16-ring UV sphere and its precomputed tables (all buffers, so ``.to(device)`` works).

    Attributes (tensors; V = 482 vertices, F = 960 faces, T = 559 UVs):
        vertices (V,3) float32; faces (F,3) int64; uvs (T,2) float32 (v = 1 is texture row 0);
        face_uv_index (F,3) int64 (index into ``uvs``); face_uvs (F,3,2) float32 per-corner UVs;
        ff (F,3) int64 edge-adjacent faces (sorted descending); poles (2,) int64 [north, south];
        neg_indices (225,), pos_indices (225,) (mirror partner of each neg vertex),
        zero_indices (32,), nonneg_indices (257,) = pos then zero, all int64;
        symmetry_mask (1,V,3) float32 (x component 0 on the symmetry plane);
        topo_map (V,2), nonneg_topo_map (257,2) float32 grid coordinates in [-1,1] (x right, y down);
        tangent_map (V,3,3), nonneg_tangent_map (257,3,3) float32 rows (normal, tangent, bitangent).
    """

    def __init__(self, obj_path: str | Path = OBJ_PATH):
        super().__init__()
        vertices, uvs, faces, face_uv_index = read_obj(obj_path)
        poles = (int(vertices[:, 1].argmax()), int(vertices[:, 1].argmin()))
        neg, pos, zero = _symmetry_indices(vertices)
        nonneg = np.concatenate([pos, zero])
        sym = np.ones((1, len(vertices), 3), dtype=np.float32)
        sym[0, zero, 0] = 0.0
        topo = _topo_map(vertices, faces, uvs, face_uv_index)
        tangent = _tangent_map(vertices, poles)
        tables = {
            "vertices": vertices,
            "faces": faces,
            "uvs": uvs,
            "face_uv_index": face_uv_index,
            "face_uvs": uvs[face_uv_index],
            "ff": _face_adjacency(faces),
            "poles": np.asarray(poles, dtype=np.int64),
            "neg_indices": neg,
            "pos_indices": pos,
            "zero_indices": zero,
            "nonneg_indices": nonneg,
            "symmetry_mask": sym,
            "topo_map": topo,
            "nonneg_topo_map": topo[nonneg],
            "tangent_map": tangent,
            "nonneg_tangent_map": tangent[nonneg],
        }
        for name, value in tables.items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value)), persistent=False)

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    # ------------------------------------------------------------------ sampling helpers
    def _sample_nonneg(self, maps: torch.Tensor, x_width: int) -> torch.Tensor:
        """Bilinear samples of ``maps`` (B,C,H,W) at the 257 non-negative vertices -> (B,257,C).

        The map is padded circularly by one column; ``x_width`` sets the x scaling
        ``gx = topo_x * x_width / (x_width + 1)`` (W for the mesh map; the official colour lookup
        uses the padded width W + 2).
        """
        padded = torch.cat([maps[..., -1:], maps, maps[..., :1]], dim=-1)
        grid = self.nonneg_topo_map.to(maps.dtype).clone()
        grid[:, 0] = grid[:, 0] * (x_width / (x_width + 1))
        grid = grid.expand(maps.shape[0], 1, -1, 2)
        out = F.grid_sample(padded, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out[:, :, 0].permute(0, 2, 1)  # (B,257,C)

    def _mirror(self, nonneg_values: torch.Tensor, negate_x: bool) -> torch.Tensor:
        """(B,257,3) values at ``nonneg_indices`` -> (B,V,3) for all vertices, mirrored to x < 0."""
        batch = nonneg_values.shape[0]
        out = nonneg_values.new_zeros(batch, self.num_vertices, 3)
        out[:, self.nonneg_indices] = nonneg_values
        mirrored = nonneg_values[:, : self.pos_indices.shape[0]]
        if negate_x:
            mirrored = mirrored * mirrored.new_tensor([-1.0, 1.0, 1.0])
        out[:, self.neg_indices] = mirrored
        return out * self.symmetry_mask

    # ------------------------------------------------------------------ public API
    def adjusted_uvs(self, width: int) -> torch.Tensor:
        """UVs (559,2) for sampling a texture of ``width`` columns padded circularly by one column on
        each side with ``align_corners=True``: ``u' = (u + 1/(2W)) / ((W+1)/W)``, v unchanged, so that
        u lands on column ``u*W + 0.5`` of the padded map (texel-centre convention)."""
        uvs = self.uvs.clone()
        uvs[:, 0] = (uvs[:, 0] + 1.0 / (2 * width)) / ((width + 1) / width)
        return uvs

    def vertex_deltas_local(self, mesh_map: torch.Tensor) -> torch.Tensor:
        """Mesh map (B,3,32,32) -> its (normal, tangent, bitangent) samples at the 257 non-negative
        vertices (B,257,3), before the tangent-frame transform."""
        return self._sample_nonneg(mesh_map, mesh_map.shape[-1])

    def vertex_positions(self, mesh_map: torch.Tensor) -> torch.Tensor:
        """Deformed template vertices from a full (symmetrized) mesh map.

        Args:
            mesh_map: (B,3,H,W) displacements along each vertex's (normal, tangent, bitangent).
        Returns:
            (B,482,3) vertex positions in the object frame (symmetric about x = 0).
        """
        local = self.vertex_deltas_local(mesh_map)  # (B,257,3)
        delta = torch.einsum("bvk,vkc->bvc", local, self.nonneg_tangent_map.to(local.dtype))
        return self.vertices.to(local.dtype) + self._mirror(delta, negate_x=True)

    def vertex_colors(self, texture: torch.Tensor) -> torch.Tensor:
        """Per-vertex colours sampled from a UV texture (visualisation only).

        Copies the official oddities: the x scaling uses the padded width W + 2, and the symmetry
        mask zeroes the **red** channel of the 32 vertices on the symmetry plane.

        Args:
            texture: (B,3,H,W) RGB in [-1,1].
        Returns:
            (B,482,3) RGB colours.
        """
        colors = self._sample_nonneg(texture, texture.shape[-1] + 2)
        return self._mirror(colors, negate_x=False)

    def face_normals(self, vertices: torch.Tensor) -> torch.Tensor:
        """Unit face normals ``normalize((v_b - v_a) x (v_c - v_a))``.

        Args:
            vertices: (B,482,3).
        Returns:
            (B,960,3); outward for the undeformed sphere.
        """
        tri = vertices[:, self.faces]  # (B,F,3,3)
        normal = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
        return F.normalize(normal, dim=-1)

    def flat_loss(self, vertices: torch.Tensor, normals: torch.Tensor | None = None) -> torch.Tensor:
        """ConvMesh smoothness loss ``(F/2) * sum_i mean_{b,f} (<n_f, n_ff[f,i]> - 1)^2``.

        Args:
            vertices: (B,482,3) (ignored when ``normals`` is given).
            normals: optional (B,960,3) unit face normals.
        Returns:
            scalar tensor (batch mean; 0 for a perfectly flat neighbourhood).
        """
        if normals is None:
            normals = self.face_normals(vertices)
        total = normals.new_zeros(())
        for i in range(self.ff.shape[1]):
            neighbour = normals[:, self.ff[:, i]]
            cos = (normals * neighbour).sum(dim=-1)
            total = total + ((cos - 1.0) ** 2).mean()
        return total * (self.num_faces / 2)

    def extra_repr(self) -> str:
        return f"vertices={self.num_vertices}, faces={self.num_faces}, uvs={self.uvs.shape[0]}"


_CACHE: dict[str, UVSphereTemplate] = {}


def uvsphere_template(device: str | torch.device = "cpu") -> UVSphereTemplate:
    """The shared :class:`UVSphereTemplate` on ``device`` (built once per device, then cached).

    Treat the returned object as read-only: it is shared by every caller on that device.
    """
    key = str(torch.device(device))
    if key not in _CACHE:
        base = _CACHE.get("cpu") or UVSphereTemplate()
        _CACHE["cpu"] = base
        _CACHE[key] = base if key == "cpu" else UVSphereTemplate().to(key)
    return _CACHE[key]
