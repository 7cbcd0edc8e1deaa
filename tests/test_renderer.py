"""bench.render.renderer / texture against the official MeshInversion renderer (DIB-R) fixtures.

Fixture inputs: vertex positions from ``mesh_template_outputs_perturbed.npz``, textures from
``gen512_perturbed_io.npz``, faces/UVs from the shipped ``bench/render/data/uvsphere_16rings.obj``.
Tolerances: shared/fixtures/README.md (renderer section).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import bench.render
from bench.methods.base import TexturedMesh
from bench.render.camera import FID12_ANGLES, project, view_quaternions
from bench.render.obj import read_obj
from bench.render.rasterizer import rasterize
from bench.render.renderer import composite_white, render_mesh, render_uv_mesh, render_views
from bench.render.texture import adjust_uvs, pad_texture_and_adjust_uvs, sample_face_grid, sample_uv_texture

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
OBJ = Path(bench.render.__file__).resolve().parent / "data" / "uvsphere_16rings.obj"


@pytest.fixture(scope="module")
def fx(fixtures_dir):
    r = np.load(fixtures_dir / "render_outputs_perturbed.npz")
    g = np.load(fixtures_dir / "gen512_perturbed_io.npz")
    m = np.load(fixtures_dir / "mesh_template_outputs_perturbed.npz")
    t = np.load(fixtures_dir / "mesh_template_uvsphere16.npz")
    _, uvs, faces, face_uv_idx = read_obj(OBJ)
    out = {k: torch.from_numpy(np.asarray(r[k])) for k in r.files}
    out.update(texture=torch.from_numpy(g["texture"]), vertex_positions=torch.from_numpy(m["vertex_positions"]),
               faces=torch.from_numpy(faces), face_uvs=torch.from_numpy(uvs[face_uv_idx]),
               uvs=torch.from_numpy(uvs), adjusted_uvs_for_512=torch.from_numpy(t["adjusted_uvs_for_512"]))
    return out


def _posed(fx):
    return project(fx["vertex_positions"], fx["pose_scale"], fx["pose_translation"], fx["pose_rotation"])


def _gradient_sample(fx) -> int:
    """The sample of the gradient check: its posed vertices are the stored ``grad_vtx_input``."""
    hits = [b for b in range(fx["vtx_3d_posed_flipped"].shape[0])
            if torch.equal(fx["vtx_3d_posed_flipped"][b], fx["grad_vtx_input"][0])]
    assert len(hits) == 1, hits
    return hits[0]


def _assert_images_match(img, mask, ref_img, ref_mask):
    """Coverage differs on at most 0.1% of pixels; image within 1e-4 where both cover."""
    cov, ref_cov = mask > 0, ref_mask > 0
    assert (cov != ref_cov).float().mean().item() <= 1e-3
    both = (cov & ref_cov).expand_as(img)
    assert both.any()
    torch.testing.assert_close(img[both], ref_img[both], rtol=0, atol=1e-4)
    # hard-mask values are DIB-R's interpolated constant: 1 up to ±1 ulp
    torch.testing.assert_close(mask[cov & ref_cov], ref_mask[cov & ref_cov], rtol=0, atol=2.5e-7)
    assert torch.all(img[~cov.expand_as(img)] == 0)


def test_uv_adjustment_matches_official(fx):
    torch.testing.assert_close(adjust_uvs(fx["uvs"], 512), fx["adjusted_uvs_for_512"], rtol=0, atol=1e-7)
    tex = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    padded, uv = pad_texture_and_adjust_uvs(tex, fx["uvs"][None])
    assert padded.shape == (2, 3, 4, 7)
    assert torch.equal(padded[..., 0], tex[..., -1]) and torch.equal(padded[..., -1], tex[..., 0])
    assert torch.equal(padded[..., 1:-1], tex)
    assert torch.equal(uv[..., 1], fx["uvs"][None, :, 1])


def test_sample_uv_texture_conventions():
    # texel value = 10·row + col; v = 1 is row 0, u = 0 column 0 (corner-aligned)
    tex = (10 * torch.arange(4.0)[:, None] + torch.arange(5.0)[None]).expand(1, 1, 4, 5)
    uv = torch.tensor([[[[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]]])
    out = sample_uv_texture(uv, tex)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 34.0, 17.0]))


def test_sample_face_grid_conventions():
    T = 4
    grid = (10 * torch.arange(T, dtype=torch.float32)[:, None] + torch.arange(T, dtype=torch.float32)[None])
    face_textures = torch.stack((grid, -grid), -1).expand(1, 2, T, T, 2)  # (B,F,T,T,C)
    face_index = torch.tensor([[[0, 1, -1, 0]]])
    bary = torch.tensor([[[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.25, 0.25]]]],
                        requires_grad=True)
    out = sample_face_grid(face_index, bary, face_textures)
    assert out.shape == (1, 2, 1, 4)
    # w0 -> row (T-1)·w0, w1 -> column (T-1)·w1
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([30.0, 3.0, 0.0, 15.0 + 0.75]))
    torch.testing.assert_close(out[0, 1, 0], -out[0, 0, 0])
    out[:, 0].sum().backward()
    torch.testing.assert_close(bary.grad[0, 0, 3], torch.tensor([30.0, 3.0, 0.0]))


@pytest.mark.parametrize("device", DEVICES)
def test_hard_render_matches_official(fx, device):
    posed = _posed(fx)
    torch.testing.assert_close(posed, fx["vtx_3d_posed_flipped"], rtol=0, atol=1e-6)
    img, mask = render_uv_mesh(posed.to(device), fx["faces"], fx["face_uvs"], fx["texture"].to(device), 256, 256)
    assert img.shape == fx["image_hard"].shape and mask.shape == fx["mask_hard"].shape
    _assert_images_match(img.cpu(), mask.cpu(), fx["image_hard"], fx["mask_hard"])


def test_soft_mask_matches_official(fx):
    img, mask = render_uv_mesh(_posed(fx), fx["faces"], fx["face_uvs"], fx["texture"], 256, 256, soft_mask=True)
    torch.testing.assert_close(mask, fx["mask_soft"], rtol=0, atol=1e-4)
    _assert_images_match(img, (mask == 1).float(), fx["image_soft"], (fx["mask_soft"] == 1).float())
    assert ((mask > 0) & (mask < 1)).sum() > 1000


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_gradients_match_official(fx, kind):
    verts = fx["grad_vtx_input"].clone().requires_grad_(True)
    b = _gradient_sample(fx)
    tex = fx["texture"][b:b + 1].clone().requires_grad_(True)
    img, mask = render_uv_mesh(verts, fx["faces"], fx["face_uvs"], tex, 256, 256, soft_mask=kind == "soft")
    loss = ((img.permute(0, 2, 3, 1) * fx["grad_weights_img"]).sum()
            + (mask.permute(0, 2, 3, 1) * fx["grad_weights_mask"]).sum())
    loss.backward()
    assert loss.item() == pytest.approx(float(fx[f"grad_{kind}_loss"]), rel=1e-5)
    for got, ref in ((verts.grad, fx[f"grad_{kind}_dvtx"]), (tex.grad, fx[f"grad_{kind}_dtex"])):
        assert ((got - ref).norm() / ref.norm()).item() <= 1e-3
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())
    assert torch.all(verts.grad[..., 2] == 0)


def test_fid12_views_match_official(fx):
    mesh = TexturedMesh(vertices=fx["vertex_positions"][0], faces=fx["faces"], face_uvs=fx["face_uvs"],
                        texture=fx["texture"][0])
    quats = view_quaternions(FID12_ANGLES)
    torch.testing.assert_close(quats, fx["fid12_quaternions_wxyz"], rtol=0, atol=1e-6)
    views = render_views(mesh, quats, size=256, scale=0.7)
    assert views.shape == (1, 12, 256, 256, 3) and views.dtype == torch.uint8
    diff = (views[0].int() - fx["fid12_views_uint8_sample0"].int()).abs()
    assert (diff <= 1).float().mean().item() >= 0.995


def test_batch_consistency(fx):
    posed = _posed(fx).requires_grad_(True)
    tex = fx["texture"].clone().requires_grad_(True)
    img, mask = render_uv_mesh(posed, fx["faces"], fx["face_uvs"], tex, 96, 96, soft_mask=True)
    (img.square().sum() + mask.sum()).backward()
    for b in range(posed.shape[0]):
        p1 = posed[b:b + 1].detach().clone().requires_grad_(True)
        t1 = tex[b:b + 1].detach().clone().requires_grad_(True)
        i1, m1 = render_uv_mesh(p1, fx["faces"], fx["face_uvs"], t1, 96, 96, soft_mask=True)
        (i1.square().sum() + m1.sum()).backward()
        assert torch.equal(i1[0], img[b]) and torch.equal(m1[0], mask[b])
        torch.testing.assert_close(p1.grad[0], posed.grad[b], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(t1.grad[0], tex.grad[b], rtol=1e-5, atol=1e-6)


def test_render_mesh_helper(fx):
    # a camera has (s, tx, ty); a translation z would only shift all depths (same DIB-R winners)
    cams = torch.cat((fx["pose_scale"], fx["pose_translation"][:, :2], fx["pose_rotation"]), dim=1)  # (B,7)
    meshes = [TexturedMesh(vertices=fx["vertex_positions"][b], faces=fx["faces"], face_uvs=fx["face_uvs"],
                           texture=fx["texture"][b]) for b in range(cams.shape[0])]
    img, mask = render_mesh(meshes, cams, height=64, width=64)
    planar = project(fx["vertex_positions"], fx["pose_scale"], fx["pose_translation"][:, :2], fx["pose_rotation"])
    ref_img, ref_mask = render_uv_mesh(planar, fx["faces"], fx["face_uvs"], fx["texture"], 64, 64)
    assert torch.equal(img, ref_img) and torch.equal(mask, ref_mask)
    img2, _ = render_mesh(meshes[0], posed_vertices=planar[:1], height=64, width=64)
    assert torch.equal(img2, ref_img[:1])
    with pytest.raises(ValueError, match="exactly one"):
        render_mesh(meshes[0], height=8, width=8)
    # per-face textures: a constant colour per face reproduces that colour on covered pixels
    nF = fx["faces"].shape[0]
    colours = torch.rand(nF, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    face_mesh = TexturedMesh(vertices=fx["vertex_positions"][0], faces=fx["faces"],
                             face_textures=colours[:, None, None, :].expand(nF, 3, 3, 3))
    fimg, fmask = render_mesh(face_mesh, cams[:1], height=64, width=64)
    frag = rasterize(planar[:1], fx["faces"], 64, 64)
    cov = frag.face_index[0] >= 0
    torch.testing.assert_close(fimg[0].permute(1, 2, 0)[cov], colours[frag.face_index[0][cov]], rtol=0, atol=1e-6)
    assert torch.all(fmask[0, 0][~cov] == 0)


def test_composite_white():
    img = torch.tensor([[[[-1.0, 0.5, 0.0]]]]).expand(1, 3, 1, 3)
    mask = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    out = composite_white(img, mask)
    assert out.shape == (1, 1, 3, 3) and out.dtype == torch.uint8
    assert out[0, 0, :, 0].tolist() == [0, 191, 255]
