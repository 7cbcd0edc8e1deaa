"""The CMR / UMR mesh template: meshzoo's level-3 icosphere, its mirror-symmetric re-ordering and
the 656×6×6×2 UV sampler of the texture flow (``shared/spec/baselines.md`` §1.2, §2.2).

None of these arrays is stored in the CMR/UMR checkpoints, so they are rebuilt here exactly:

* :func:`iso_sphere` re-implements the vertex and face ordering of meshzoo ``iso_sphere`` (the
  0.3/0.4 releases that CMR and UMR pinned): the 12 icosahedron vertices and 20 faces in meshzoo's
  fixed order, edges found with a sort + ``numpy.unique`` over the cells' edge node pairs (edge k of
  a cell is opposite its node k), then ``n`` refinements. Each refinement appends one midpoint per
  edge in the order the edges are first met while looping over the cells, and replaces each cell by
  the centre triangle followed by the three corner triangles. Finally every vertex is projected
  to the unit sphere. Level 3 gives 642 vertices and 1280 faces.
* :func:`make_symmetric` re-orders vertices into [centre, right (a > 0), left mirror images] and
  faces into [independent, right, left], with ``left[k] == mirror(right[k])`` entry by entry (the
  "right" block follows CMR's side test, quirks included). Note that
  the icosphere's own windings are not consistent (half the faces wind inwards) and the left faces
  have the reverse winding of their right twins. CMR/UMR render two-sided, and so must anything
  that renders these faces as stored.
* :func:`uv_sampler` gives the spherical (u, v) of the 6×6 barycentric grid of each of the first
  ``num_indept_faces + num_sym_faces`` faces, which is where the texture flow is sampled.

All three match ``fixtures/icosphere_symmetric_fixtures.npz`` exactly (``tests/test_icosphere.py``).

Usage::

    sym = symmetric_icosphere(axis=0)      # CMR; axis=1 for UMR
    sym.vertices, sym.faces                # (642,3) float64, (1280,3) int64
    uv_sampler(sym)                        # (656,6,6,2) float32
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_T = (1.0 + np.sqrt(5.0)) / 2.0

#: meshzoo's icosahedron: vertex order and the 20 faces.
ICOSAHEDRON_VERTICES = np.array([
    [-1, +_T, 0], [+1, +_T, 0], [-1, -_T, 0], [+1, -_T, 0],
    [0, -1, +_T], [0, +1, +_T], [0, -1, -_T], [0, +1, -_T],
    [+_T, 0, -1], [+_T, 0, +1], [-_T, 0, -1], [-_T, 0, +1],
], dtype=np.float64)
ICOSAHEDRON_FACES = np.array([
    [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
    [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
    [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
    [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1],
], dtype=np.int64)


def _edges(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique edges of ``cells`` (C,3): (E,2) sorted node pairs, and (C,3) edge id opposite each node.

    Edges are ordered as ``numpy.unique`` orders the pairs viewed as raw bytes (meshzoo's trick).
    """
    local = np.array([[1, 2], [2, 0], [0, 1]])          # edge k is opposite node k
    pairs = cells[:, local]                              # (C,3,2)
    pairs = np.sort(pairs.reshape(-1, 2), axis=1).astype(np.int64)
    pairs = np.ascontiguousarray(pairs)
    as_void = pairs.view(np.dtype((np.void, pairs.dtype.itemsize * 2))).ravel()
    _, first, inverse = np.unique(as_void, return_index=True, return_inverse=True)
    return pairs[first], inverse.reshape(-1, 3)


def _refine(nodes: np.ndarray, cells: np.ndarray, edge_nodes: np.ndarray, cell_edges: np.ndarray):
    """One meshzoo refinement step: midpoints per edge, each cell split in four."""
    num_nodes, num_edges, num_cells = len(nodes), len(edge_nodes), len(cells)
    new_nodes = np.empty((num_nodes + num_edges, 3))
    new_nodes[:num_nodes] = nodes
    next_node = num_nodes
    new_edges = np.empty((2 * num_edges + 3 * num_cells, 2), dtype=np.int64)
    next_edge = 0
    new_cells = np.empty((4 * num_cells, 3), dtype=np.int64)
    new_cell_edges = np.empty((4 * num_cells, 3), dtype=np.int64)
    midpoint = np.full(num_edges, -1, dtype=np.int64)
    halves = np.empty((num_edges, 2), dtype=np.int64)
    for c in range(num_cells):
        cell = cells[c]
        mids = [0, 0, 0]
        near_mids: list[list[int]] = [[], [], []]    # per local node: midpoints of its two edges
        near_halves: list[list[int]] = [[], [], []]  # ... and the half edges touching the node
        for k in range(3):
            e = cell_edges[c, k]
            a, b = edge_nodes[e]
            if midpoint[e] < 0:
                new_nodes[next_node] = 0.5 * (nodes[a] + nodes[b])
                midpoint[e] = next_node
                next_node += 1
                new_edges[next_edge] = (a, midpoint[e])
                new_edges[next_edge + 1] = (midpoint[e], b)
                halves[e] = (next_edge, next_edge + 1)
                next_edge += 2
            mids[k] = midpoint[e]
            la = int(np.nonzero(cell == a)[0][0])
            lb = int(np.nonzero(cell == b)[0][0])
            near_mids[la].append(mids[k])
            near_mids[lb].append(mids[k])
            near_halves[la].append(halves[e, 0])
            near_halves[lb].append(halves[e, 1])
        inner = [0, 0, 0]  # new edge opposite local node k of the centre cell
        for k in range(3):
            new_edges[next_edge] = near_mids[k]
            inner[k] = next_edge
            next_edge += 1
        new_cells[4 * c] = mids
        new_cell_edges[4 * c] = inner
        for k in range(3):
            new_cells[4 * c + 1 + k] = (cell[k], near_mids[k][0], near_mids[k][1])
            new_cell_edges[4 * c + 1 + k] = (inner[k], near_halves[k][0], near_halves[k][1])
    return new_nodes, new_cells, new_edges, new_cell_edges


@lru_cache(maxsize=4)
def _iso_sphere_cached(level: int):
    nodes, cells = ICOSAHEDRON_VERTICES.copy(), ICOSAHEDRON_FACES.copy()
    edge_nodes, cell_edges = _edges(cells)
    for _ in range(level):
        nodes, cells, edge_nodes, cell_edges = _refine(nodes, cells, edge_nodes, cell_edges)
    norms = np.sqrt(np.einsum("ij,ij->i", nodes, nodes))
    nodes = (nodes.T / norms.T).T
    nodes.setflags(write=False)
    cells.setflags(write=False)
    return nodes, cells


def iso_sphere(level: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """meshzoo-ordered unit icosphere: (V,3) float64 vertices and (F,3) int64 faces (copies).

    ``level`` 3 -> 642 vertices, 1280 faces (CMR's ``subdivide=3``).
    """
    nodes, cells = _iso_sphere_cached(int(level))
    return nodes.copy(), cells.copy()


@dataclass(frozen=True)
class SymmetricMesh:
    """A mirror-symmetric mesh in CMR order.

    Attributes:
        vertices: (V,3) float64, order [centre, right (a>0), left (mirror of right, same order)].
        faces: (F,3) int64, order [independent, right, left]; ``faces[ni+ns+k]`` is the mirror of
            ``faces[ni+k]`` entry by entry (ni = num_indept_faces, ns = num_sym_faces).
        axis: mirror axis (0 = x for CMR, 1 = y for UMR).
        num_indept, num_sym, num_indept_faces, num_sym_faces: block sizes.
    """

    vertices: np.ndarray
    faces: np.ndarray
    axis: int
    num_indept: int
    num_sym: int
    num_indept_faces: int
    num_sym_faces: int

    @property
    def num_free(self) -> int:
        """Vertices that carry a free offset (centre + right) = 337 for the level-3 icosphere."""
        return self.num_indept + self.num_sym

    @property
    def num_sampled_faces(self) -> int:
        """Faces whose texture is predicted (independent + right) = 656."""
        return self.num_indept_faces + self.num_sym_faces

    def mirror_vertex_index(self) -> np.ndarray:
        """(V,) int64: index of each vertex's mirror image."""
        ni, ns = self.num_indept, self.num_sym
        idx = np.arange(ni + 2 * ns)
        out = idx.copy()
        out[ni:ni + ns] += ns
        out[ni + ns:] -= ns
        return out


def make_symmetric(vertices: np.ndarray, faces: np.ndarray, axis: int = 0) -> SymmetricMesh:
    """Re-order a mirror-symmetric mesh about the plane ``vertices[:, axis] == 0`` (CMR's layout).

    Faces are visited in index order; a face equal (as a vertex set) to its mirror image is
    independent; otherwise the face and its mirror twin form a pair, written once, both in the
    visited face's corner order. The pair goes [right, left] = [twin, face] when CMR's side test
    calls the visited face "left", else [face, twin]. CMR's test is kept as is because it fixes the
    order: the corners selected by comparing the *sorted* vertex ids of face and twin are read in
    the face's own corner order, and "left" means all of them lie strictly below the plane. For
    faces touching the plane this sometimes files a left-side face under "right", as the fixtures
    show (plain geometry would disagree for 58 of CMR's and 36 of UMR's faces).

    Args:
        vertices: (V,3) exactly symmetric (mirror images equal bit for bit).
        faces: (F,3).
        axis: 0 (x, CMR) or 1 (y, UMR).
    Returns:
        `SymmetricMesh`.
    Raises:
        ValueError: if the mesh is not exactly symmetric.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    a = vertices[:, axis]
    centre = np.nonzero(a == 0)[0]
    right = np.nonzero(a > 0)[0]
    left = np.nonzero(a < 0)[0]
    if len(left) != len(right):
        raise ValueError(f"mesh is not symmetric about axis {axis}: {len(right)} right vs {len(left)} left vertices")
    flip = np.ones(3)
    flip[axis] = -1.0
    lookup = {tuple(v): i for i, v in enumerate(vertices.tolist())}
    partner = []
    for r in right:
        key = tuple((vertices[r] * flip).tolist())
        if key not in lookup:
            raise ValueError(f"vertex {r} has no exact mirror image about axis {axis}")
        partner.append(lookup[key])
    order = np.concatenate([centre, right, np.asarray(partner, dtype=np.int64)])
    if len(np.unique(order)) != len(vertices):
        raise ValueError("vertex mirror pairing is not one-to-one")
    new_index = np.empty(len(vertices), dtype=np.int64)
    new_index[order] = np.arange(len(vertices))
    new_vertices = vertices[order]
    remapped = new_index[faces]

    ni, ns = len(centre), len(right)
    mirror = np.arange(ni + 2 * ns)
    mirror[ni:ni + ns] += ns
    mirror[ni + ns:] -= ns
    face_of = {frozenset(f): i for i, f in enumerate(remapped.tolist())}

    indept, right_faces, left_faces = [], [], []
    done = np.zeros(len(remapped), dtype=bool)
    new_a = new_vertices[:, axis]
    for i, face in enumerate(remapped):
        if done[i]:
            continue
        mirrored = mirror[face]
        if set(mirrored.tolist()) == set(face.tolist()):
            indept.append(face)
            done[i] = True
            continue
        j = face_of.get(frozenset(mirrored.tolist()))
        if j is None:
            raise ValueError(f"face {i} has no mirror face")
        done[i] = done[j] = True
        # CMR's side test (kept for bit-exact ordering): the positions where the *sorted* vertex
        # ids of the face and of its mirror differ select entries of the face in its own order;
        # the face is "left" when all selected vertices lie strictly on the negative side.
        differ = np.sort(face) != np.sort(mirrored)
        if np.all(new_a[face][differ] < new_a[mirrored][differ]):
            right_faces.append(mirrored)
            left_faces.append(face)
        else:
            right_faces.append(face)
            left_faces.append(mirrored)
    new_faces = np.concatenate([np.asarray(indept, dtype=np.int64).reshape(-1, 3),
                                np.asarray(right_faces, dtype=np.int64).reshape(-1, 3),
                                np.asarray(left_faces, dtype=np.int64).reshape(-1, 3)])
    return SymmetricMesh(new_vertices, new_faces, axis, ni, ns, len(indept), len(right_faces))


@lru_cache(maxsize=4)
def _symmetric_cached(axis: int, level: int) -> SymmetricMesh:
    v, f = iso_sphere(level)
    return make_symmetric(v, f, axis)


def symmetric_icosphere(axis: int = 0, level: int = 3) -> SymmetricMesh:
    """The level-``level`` icosphere re-ordered by :func:`make_symmetric` (cached; do not mutate)."""
    return _symmetric_cached(int(axis), int(level))


def uv_sampler(mesh: SymmetricMesh, tex_size: int = 6, num_faces: int | None = None) -> np.ndarray:
    """Spherical UV coordinates of each face's T×T barycentric grid.

    Point (i, j) of face (v0, v1, v2) is p = α·v0 + β·v1 + (1−α−β)·v2, α = i/(T−1), β = j/(T−1)
    (points with α+β > 1 are kept); u = (atan2(p_y, p_x) + π)/π − 1, v = 2·arccos(p_z/|p|)/π − 1.

    Args:
        mesh: `SymmetricMesh` (or anything with ``vertices``/``faces``, then pass ``num_faces``).
        tex_size: T.
        num_faces: faces to sample; default ``mesh.num_sampled_faces`` (656).
    Returns:
        (num_faces, T, T, 2) float32 in [-1, 1], (u, v) = grid_sample's (x, y).
    """
    n = mesh.num_sampled_faces if num_faces is None else num_faces
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    tri = verts[np.asarray(mesh.faces)[:n]]                       # (n,3,3)
    steps = np.arange(tex_size, dtype=np.float64) / (tex_size - 1)
    alpha = np.repeat(steps, tex_size)                            # i slowest
    beta = np.tile(steps, tex_size)
    v0, v1, v2 = tri[:, 0], tri[:, 1], tri[:, 2]
    # p = v2 + α(v0 − v2) + β(v1 − v2), in this association (it decides the sign of zero on the seam)
    pts = ((v0 - v2)[:, None, :] * alpha[None, :, None] + (v1 - v2)[:, None, :] * beta[None, :, None]
           + v2[:, None, :])                                      # (n,T*T,3)
    rad = np.linalg.norm(pts, axis=-1)
    theta = np.arccos(pts[..., 2] / rad)
    phi = np.arctan2(pts[..., 1], pts[..., 0])
    u = (phi + np.pi) / np.pi - 1.0
    v = 2.0 * theta / np.pi - 1.0
    return np.stack([u, v], axis=-1).reshape(n, tex_size, tex_size, 2).astype(np.float32)
