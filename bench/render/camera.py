"""Quaternions and the orthographic camera of MeshInversion (spec §c, §e).

Conventions
-----------
* Quaternions are ``(w, x, y, z)`` (real part first), float32, and are **not** normalised anywhere:
  the official pose optimiser updates the raw quaternion, and :func:`qrot` applies the unit-quaternion
  formula to it as it is (a non-unit ``q`` scales/shears).
* A camera is ``[s, tx, ty, qw, qx, qy, qz]`` (7 numbers). Posing maps an object point ``X`` to
  ``qrot(q, s·X) + t``; its ``(x, y)`` are normalised crop coordinates (x right, **y down**, [-1,1]).
  The renderer then flips with ``(1, -1, -1)`` so that ``(x, y)`` are NDC with y **up** and a larger
  ``z`` is closer to the camera. Everything that enters :mod:`bench.render.rasterizer` is
  "posed + flipped".
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = [
    "FID12_ANGLES",
    "axis_angle_quaternion",
    "canonical_quaternion",
    "fid10_angles",
    "project",
    "project_novel_view",
    "qrot",
    "quat_mul",
    "rotation_error_deg",
    "split_camera",
    "turned_canonical_quaternion",
    "view_quaternions",
]

#: Azimuths (degrees) of the 12 FID views (spec §e).
FID12_ANGLES: tuple[int, ...] = tuple(range(0, 360, 30))

#: Options accepted by :func:`fid10_angles`.
FID10_OPTIONS = ("paper", "official-code")


def qrot(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate points by a (not normalised) quaternion.

    ``v + 2·(w·(q⃗ × v) + q⃗ × (q⃗ × v))``, exactly the official formula; ``q`` is used as it is.

    Args:
        q: (B,4) quaternions (w, x, y, z).
        v: (B,N,3) points.

    Returns:
        (B,N,3).
    """
    if q.dim() != 2 or q.shape[-1] != 4:
        raise ValueError(f"qrot expects q of shape (B,4), got {tuple(q.shape)}")
    if v.dim() != 3 or v.shape[-1] != 3:
        raise ValueError(f"qrot expects v of shape (B,N,3), got {tuple(v.shape)}")
    qvec = q[:, None, 1:].expand(-1, v.shape[1], -1)
    w = q[:, None, :1]
    # torch's cross kernel (as the official code) so posed vertices match the fixtures bit for bit
    uv = torch.linalg.cross(qvec, v, dim=-1)
    uuv = torch.linalg.cross(qvec, uv, dim=-1)
    return v + 2 * (w * uv + uuv)


def quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a ⊗ b`` (applying the result rotates by ``b`` first, then ``a``).

    Args:
        a, b: (...,4) quaternions (w, x, y, z); broadcast against each other.

    Returns:
        (...,4).
    """
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )


def axis_angle_quaternion(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(3,) unit axis, scalar angle (radians) -> (4,) quaternion (w, x, y, z)."""
    half = angle / 2
    return torch.cat([torch.cos(half).reshape(1), torch.sin(half) * axis])


def turned_canonical_quaternion(azimuth: torch.Tensor, elevation: torch.Tensor) -> torch.Tensor:
    """The canonical rotation (:func:`canonical_quaternion`, 30°) turned by an azimuth about y, then an
    elevation about x (both scalar tensors, radians): ``q_el ⊗ q_az ⊗ q_canonical``, (4,) float32.

    The synthetic dataset draws its ground-truth poses this way and the camera search
    (:mod:`bench.camera_search`) lays its hypothesis grid out on the same two angles.
    """
    q_az = axis_angle_quaternion(torch.tensor([0.0, 1.0, 0.0]), azimuth.float())
    q_el = axis_angle_quaternion(torch.tensor([1.0, 0.0, 0.0]), elevation.float())
    return quat_mul(q_el[None], quat_mul(q_az[None], canonical_quaternion()[None]))[0]


def rotation_error_deg(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Geodesic angle in degrees between the rotations of (...,4) quaternions (normalised first;
    q and -q are the same rotation), in [0, 180]."""
    q1 = torch.nn.functional.normalize(q1.double(), dim=-1)
    q2 = torch.nn.functional.normalize(q2.double(), dim=-1)
    dot = (q1 * q2).sum(-1).abs().clamp(max=1.0)
    return torch.rad2deg(2 * torch.arccos(dot))


def split_camera(cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``[s, tx, ty, qw, qx, qy, qz]`` cameras.

    Args:
        cam: (B,7) (or (7,), treated as B = 1).

    Returns:
        scale (B,1), translation (B,2), rotation (B,4) (w, x, y, z).
    """
    if cam.dim() == 1:
        cam = cam[None]
    if cam.dim() != 2 or cam.shape[-1] != 7:
        raise ValueError(f"a camera is [s, tx, ty, qw, qx, qy, qz]: expected shape (B,7), got {tuple(cam.shape)}")
    return cam[:, :1], cam[:, 1:3], cam[:, 3:7]


_FLIP = (1.0, -1.0, -1.0)


def _flip(p: torch.Tensor) -> torch.Tensor:
    return p * torch.tensor(_FLIP, dtype=p.dtype, device=p.device)


def project(vertices: torch.Tensor, scale: torch.Tensor, translation: torch.Tensor,
            rotation: torch.Tensor) -> torch.Tensor:
    """Pose and flip object-space vertices for the renderer (official ``render``).

    ``(qrot(q, s·V) + t) ⊙ (1, -1, -1)``: x right, y up, larger z closer; (x, y) is the
    orthographic projection in NDC.

    Args:
        vertices: (B,N,3) object space.
        scale: (B,1) (or (B,)).
        translation: (B,2) or (B,3) (a third, z, component is added as is; it is 0 officially).
        rotation: (B,4) quaternion (w, x, y, z), not normalised.

    Returns:
        (B,N,3) posed + flipped vertices.
    """
    B = vertices.shape[0]
    scale = scale.reshape(B, 1, 1)
    if translation.shape[-1] == 2:
        translation = torch.cat((translation, torch.zeros_like(translation[..., :1])), dim=-1)
    posed = qrot(rotation, scale * vertices) + translation.reshape(B, 1, 3)
    return _flip(posed)


def project_novel_view(vertices: torch.Tensor, rotation: torch.Tensor, scale: float = 0.7) -> torch.Tensor:
    """Novel-view posing used for the FID renders (spec §e).

    Vertices are centred by their unweighted mean, scaled, rotated (no translation) and flipped.

    Args:
        vertices: (B,N,3) object space.
        rotation: (B,4) quaternion (w, x, y, z).
        scale: the default scale 0.7.

    Returns:
        (B,N,3) posed + flipped vertices.
    """
    centred = vertices - vertices.mean(dim=1, keepdim=True)
    return _flip(qrot(rotation, scale * centred))


def _euler_xyz_wxyz(angles_deg: Sequence[float]):
    """scipy ``Rotation.from_euler('xyz', angles, degrees=True)`` as float64 (w, x, y, z)."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_euler("xyz", list(angles_deg), degrees=True).as_quat()
    return [w, x, y, z]


def canonical_quaternion(orientation_deg: float = 30.0) -> torch.Tensor:
    """The canonical rotation of the FID renders: Euler xyz ``(0, -90, 90 - orientation)``.

    Returns:
        (4,) float32 (w, x, y, z); for 30° = (0.612372, 0.353553, -0.612372, 0.353553).
    """
    return torch.tensor(_euler_xyz_wxyz([0.0, -90.0, 90.0 - orientation_deg]), dtype=torch.float32)


def view_quaternions(angles_deg: Sequence[float] = FID12_ANGLES, orientation_deg: float = 30.0) -> torch.Tensor:
    """Per-azimuth view quaternions ``q_azimuth ⊗ q_canonical`` (the canonical rotation applies first).

    Args:
        angles_deg: K azimuths in degrees (rotation about y, Euler xyz ``(0, angle, 0)``).
        orientation_deg: see :func:`canonical_quaternion`.

    Returns:
        (K,4) float32 (w, x, y, z).
    """
    qc = canonical_quaternion(orientation_deg)
    qa = torch.tensor([_euler_xyz_wxyz([0.0, float(a), 0.0]) for a in angles_deg],
                      dtype=torch.float32).reshape(-1, 4)
    return quat_mul(qa, qc.expand_as(qa))


def fid10_angles(option: str = "paper") -> tuple[int, ...]:
    """Azimuths of the FID_10 protocol (a subset of :data:`FID12_ANGLES`).

    Args:
        option: ``"paper"``: drop 90° and 270° (the intended 10 views);
            ``"official-code"``: drop only 270° (11 views) — what the released evaluation really
            computes, because its filter tests ``'_90'`` against file names written as ``_090``.

    Returns:
        Tuple of angles in degrees.
    """
    if option == "paper":
        drop = {90, 270}
    elif option == "official-code":
        drop = {270}
    else:
        raise ValueError(f"unknown FID_10 option {option!r}; use one of {FID10_OPTIONS}")
    return tuple(a for a in FID12_ANGLES if a not in drop)
