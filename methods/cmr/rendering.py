"""CMR / UMR rendering through our DIB-R style renderer, and the move to the shared object frame.

Conventions reproduced (``shared/spec/baselines.md`` §1.7):

* Orthographic camera ``[s, tx, ty, q]``: a vertex X lands at normalised crop coordinates
  ``s·R(q)X[:2] + t`` (x right, y down, [-1,1]); a smaller ``s·(R(q)X)_z`` is closer. NMR's z offset
  of 5 and its y flip only serve NMR's look-at camera; :func:`bench.render.camera.project` gives the
  same pixels and depth order with t_z = 0.
* Two-sided rendering (NMR ``fill_back=True``): the icosphere's windings are inconsistent, so every
  face is rasterised in both windings; for a back-winding hit the barycentrics are swapped back.
* Per-face 6×6 textures read at ((T−1)·w0, (T−1)·w1) (NMR's (α, β) = the UV sampler's).
* Mask loss silhouette: DIB-R's soft silhouette (:func:`bench.render.rasterizer.soft_silhouette`).

Shared frame (:func:`to_shared_frame`): vertices are rotated by the model's ``frame_quaternion``
(identity for CMR, whose SfM-aligned frame is MeshInversion's; +90° about z for UMR, whose symmetry
plane is y = 0) and the camera quaternion is right-multiplied by its conjugate, so that
``project(R_f·V, s, t, q ⊗ q̄_f) == project(V, s, t, q)`` (exactly, for a unit ``q``). Faces are
re-wound outwards (on the template sphere) by swapping their first two corners; the 6×6 grid of such
a face is transposed, so the texture at every surface point is unchanged and back-face culling
renderers (the metrics) see a closed, consistently oriented mesh.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.render.camera import project, quat_mul, split_camera
from bench.render.rasterizer import rasterize, soft_silhouette
from bench.render.texture import sample_face_grid

#: background value of the returned input-view image (0 in [-1,1], as MeshInversion's renderer)
BACKGROUND = 0.5


def unit_quaternion_camera(camera: torch.Tensor) -> torch.Tensor:
    """(B,7) ``[s, tx, ty, q]`` -> the same camera with q / |q|."""
    q = camera[:, 3:]
    return torch.cat([camera[:, :3], q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)], dim=1)


def pose(vertices: torch.Tensor, camera: torch.Tensor, renormalize: bool) -> torch.Tensor:
    """Posed + flipped vertices (B,V,3) for the rasteriser; ``renormalize`` divides q by |q|."""
    s, t, q = split_camera(unit_quaternion_camera(camera) if renormalize else camera)
    return project(vertices, s, t, q)


def two_sided(faces: torch.Tensor) -> torch.Tensor:
    """(F,3) -> (2F,3): the faces, then the same faces with corners 1 and 2 swapped."""
    return torch.cat([faces, faces[:, [0, 2, 1]]], dim=0)


def rasterize_two_sided(posed: torch.Tensor, faces: torch.Tensor, size: tuple[int, int]):
    """Rasterise both windings; returns (fragments, face index into ``faces`` (B,H,W), bary (B,H,W,3))."""
    H, W = size
    nF = faces.shape[0]
    frags = rasterize(posed, two_sided(faces), H, W)
    fi = frags.face_index
    back = fi >= nF
    face = torch.where(back, fi - nF, fi)
    bary = torch.where(back.unsqueeze(-1), frags.bary[..., [0, 2, 1]], frags.bary)
    return frags, face, bary


def soft_mask(posed: torch.Tensor, faces: torch.Tensor, size: tuple[int, int], fragments,
              sigmainv: float = 7000.0) -> torch.Tensor:
    """DIB-R soft silhouette (B,H,W); coverage from the two-sided ``fragments``."""
    H, W = size
    return soft_silhouette(posed, faces, H, W, sigmainv=sigmainv, fragments=fragments)


def render_textured(posed: torch.Tensor, faces: torch.Tensor, face_textures01: torch.Tensor,
                    size: tuple[int, int], background: float = 0.0):
    """Two-sided textured render.

    Args:
        posed: (B,V,3) posed + flipped vertices.
        faces: (F,3).
        face_textures01: (B,F,T,T,3) colours in [0,1].
        size: (H, W).
        background: value of empty pixels.
    Returns:
        image (B,3,H,W), hard mask (B,H,W) float, fragments (of the two-sided faces).
    """
    frags, face, bary = rasterize_two_sided(posed, faces, size)
    image = sample_face_grid(face, bary, face_textures01)
    mask = (face >= 0).to(image.dtype)
    if background != 0.0:
        image = image + background * (1.0 - mask).unsqueeze(1)
    return image, mask, frags


def render_views_for_loss(posed: torch.Tensor, faces: torch.Tensor, face_textures01: torch.Tensor,
                          size: tuple[int, int], sigmainv: float = 7000.0, detach_geometry: bool = True):
    """One two-sided rasterisation -> textured image, hard mask and soft silhouette.

    With ``detach_geometry`` the textured image uses detached barycentrics (no gradient to the
    vertices or the camera through the texture term, as in CMR/UMR training).

    Returns:
        image (B,3,H,W) (background 0), hard mask (B,H,W), soft silhouette (B,H,W).
    """
    frags, face, bary = rasterize_two_sided(posed, faces, size)
    image = sample_face_grid(face, bary.detach() if detach_geometry else bary, face_textures01)
    hard = (face >= 0).to(image.dtype)
    sil = soft_mask(posed, faces, size, frags, sigmainv)
    return image, hard, sil


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,C,h,w) -> (B,C,H,W) (area when shrinking, bilinear otherwise); identity if equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------------
# shared frame
# --------------------------------------------------------------------------------------------------
def quat_conj(q: torch.Tensor) -> torch.Tensor:
    return q * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=q.dtype, device=q.device)


def inward_faces(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,) bool: faces whose winding (right-hand normal) points into the closed template."""
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[np.asarray(faces)]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    centre = tri.mean(axis=1) - v.mean(axis=0)
    return (normal * centre).sum(axis=1) < 0


def outward_faces_and_textures(faces: torch.Tensor, face_textures: torch.Tensor, inward: torch.Tensor):
    """Swap corners 0/1 of ``inward`` faces and transpose their T×T grids.

    Args:
        faces: (F,3); face_textures: (B,F,T,T,C); inward: (F,) bool.
    Returns:
        faces (F,3), face_textures (B,F,T,T,C).
    """
    new_faces = torch.where(inward.unsqueeze(1), faces[:, [1, 0, 2]], faces)
    swapped = face_textures.transpose(2, 3)
    new_tex = torch.where(inward.view(1, -1, 1, 1, 1), swapped, face_textures)
    return new_faces, new_tex


def to_shared_frame(vertices: torch.Tensor, camera: torch.Tensor, frame_quaternion) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-frame vertices (B,V,3) and cameras (B,7) -> shared-frame vertices and cameras.

    ``V' = R_f V``, ``q' = q ⊗ q̄_f`` (s and t unchanged), with ``q_f = frame_quaternion`` (unit).
    """
    from bench.render.camera import qrot

    qf = torch.as_tensor(frame_quaternion, dtype=vertices.dtype, device=vertices.device).reshape(1, 4)
    qf = qf / qf.norm()
    B = vertices.shape[0]
    verts = qrot(qf.expand(B, 4), vertices)
    q = quat_mul(camera[:, 3:7], quat_conj(qf).expand(B, 4))
    return verts, torch.cat([camera[:, :3], q], dim=1)
