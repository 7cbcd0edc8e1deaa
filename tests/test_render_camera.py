"""Camera / quaternion conventions of bench.render.camera against the official fixtures (spec §c, §e)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.render.camera import (FID12_ANGLES, canonical_quaternion, fid10_angles, project, project_novel_view, qrot,
                                 quat_mul, split_camera, view_quaternions)


@pytest.fixture(scope="module")
def render_fx(fixtures_dir):
    return dict(np.load(fixtures_dir / "render_outputs_perturbed.npz"))


@pytest.fixture(scope="module")
def template_fx(fixtures_dir):
    return dict(np.load(fixtures_dir / "mesh_template_outputs_perturbed.npz"))


def _rotation_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrix of a unit quaternion (w, x, y, z), float64, independent of qrot."""
    w, x, y, z = q.double().tolist()
    return torch.tensor([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ], dtype=torch.float64)


def test_qrot_unit_quaternion_is_rotation():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=1, keepdim=True)
    v = torch.randn(4, 7, 3, generator=g, dtype=torch.float64)
    out = qrot(q, v)
    for b in range(q.shape[0]):
        torch.testing.assert_close(out[b], v[b] @ _rotation_matrix(q[b]).T)


def test_qrot_is_not_normalised():
    # the official qrot applies the unit formula to a non-unit q: 1.1·q is not a rotation
    q = torch.tensor([[0.8, 0.0, 0.6, 0.0]], dtype=torch.float64)
    v = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.float64)
    w, qv = 1.1 * q[:, :1], 1.1 * q[:, 1:]
    uv = torch.linalg.cross(qv[:, None], v, dim=-1)
    expected = v + 2 * (w[:, None] * uv + torch.linalg.cross(qv[:, None], uv, dim=-1))
    out = qrot(1.1 * q, v)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out.norm(dim=-1), v.norm(dim=-1))


def test_quat_mul_composes_rotations():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    v = torch.randn(3, 5, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(qrot(quat_mul(a, b), v), qrot(a, qrot(b, v)))
    one = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64).expand_as(a)
    torch.testing.assert_close(quat_mul(one, a), a)


def test_split_camera():
    cam = torch.arange(14, dtype=torch.float32).reshape(2, 7)
    s, t, q = split_camera(cam)
    assert s.shape == (2, 1) and t.shape == (2, 2) and q.shape == (2, 4)
    assert s[1, 0] == 7 and t[1].tolist() == [8, 9] and q[1].tolist() == [10, 11, 12, 13]
    assert split_camera(cam[0])[2].shape == (1, 4)
    with pytest.raises(ValueError):
        split_camera(torch.zeros(2, 6))


def test_project_matches_official_posing(render_fx, template_fx):
    verts = torch.from_numpy(template_fx["vertex_positions"])
    scale = torch.from_numpy(render_fx["pose_scale"])
    trans = torch.from_numpy(render_fx["pose_translation"])
    rot = torch.from_numpy(render_fx["pose_rotation"])
    posed = project(verts, scale, trans, rot)
    expected = torch.from_numpy(render_fx["vtx_3d_posed_flipped"])
    torch.testing.assert_close(posed, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(posed[..., :2], torch.from_numpy(render_fx["vtx_xy"]), rtol=0, atol=1e-6)
    # a 2-component translation is the official 3-component one with z = 0: the same x, y, and the
    # same z where the fixture's translation z is 0 (officially a dummy 0; the flip negates it)
    planar = project(verts, scale, trans[:, :2], rot)
    torch.testing.assert_close(planar[..., :2], posed[..., :2], rtol=0, atol=0)
    torch.testing.assert_close(planar[..., 2], posed[..., 2] + trans[:, 2:], rtol=0, atol=1e-6)
    zero = trans[:, 2] == 0
    torch.testing.assert_close(planar[zero], posed[zero], rtol=0, atol=0)


def test_project_flips_y_and_z():
    v = torch.tensor([[[0.1, 0.2, 0.3]]])
    one = torch.tensor([[1.0, 0, 0, 0]])
    out = project(v, torch.ones(1, 1), torch.tensor([[0.5, -0.5]]), one)
    torch.testing.assert_close(out, torch.tensor([[[0.6, 0.3, -0.3]]]))


def test_project_novel_view_centres_and_scales():
    g = torch.Generator().manual_seed(2)
    v = torch.randn(2, 9, 3, generator=g) + torch.tensor([3.0, -1.0, 2.0])
    one = torch.tensor([[1.0, 0, 0, 0]]).expand(2, 4)
    out = project_novel_view(v, one, scale=0.5)
    expected = (v - v.mean(dim=1, keepdim=True)) * 0.5 * torch.tensor([1.0, -1.0, -1.0])
    torch.testing.assert_close(out, expected)


def test_canonical_and_view_quaternions(render_fx):
    qc = canonical_quaternion()
    assert qc.dtype == torch.float32
    torch.testing.assert_close(qc, torch.from_numpy(render_fx["canonical_quaternion_wxyz"]), rtol=0, atol=1e-7)
    torch.testing.assert_close(qc, torch.tensor([0.612372, 0.353553, -0.612372, 0.353553]), rtol=0, atol=1e-6)
    views = view_quaternions(FID12_ANGLES)
    assert views.shape == (12, 4)
    torch.testing.assert_close(views, torch.from_numpy(render_fx["fid12_quaternions_wxyz"]), rtol=0, atol=1e-6)
    # azimuth 0 is the canonical rotation itself; the azimuth is a rotation about y applied last
    torch.testing.assert_close(views[0], qc, rtol=0, atol=1e-7)
    half = math.radians(45) / 2
    qa = torch.tensor([math.cos(half), 0.0, math.sin(half), 0.0])
    torch.testing.assert_close(view_quaternions([45]), quat_mul(qa, qc)[None], rtol=0, atol=1e-6)


def test_fixture_poses_that_are_fid12_views(render_fx):
    """The fixture's render poses that are FID-12 views (in the shared set: pose 0 = azimuth 60)
    are our view quaternions of the same azimuth."""
    official = torch.from_numpy(render_fx["fid12_quaternions_wxyz"])
    poses = torch.from_numpy(render_fx["pose_rotation"])
    hits = [(b, a) for b in range(poses.shape[0]) for a in range(official.shape[0])
            if torch.allclose(poses[b], official[a], rtol=0, atol=1e-6)]
    if not hits:
        pytest.skip("no render pose of this fixture set is one of the FID-12 views")
    views = view_quaternions(FID12_ANGLES)
    for b, a in hits:
        torch.testing.assert_close(views[a], poses[b], rtol=0, atol=1e-6)


def test_fid_angles():
    assert FID12_ANGLES == tuple(range(0, 360, 30))
    paper = fid10_angles("paper")
    official = fid10_angles("official-code")
    assert len(paper) == 10 and 90 not in paper and 270 not in paper
    assert len(official) == 11 and 90 in official and 270 not in official
    with pytest.raises(ValueError, match="official-code"):
        fid10_angles("ten")
