"""pytest-benchmark: the DIB-R style renderer at the inversion size (256², UV sphere, 960 faces).

Run: ``pytest tests/benchmarks/bm_render.py --benchmark-enable -p no:cacheprovider`` (the file is
collected because it is named on the command line). Inputs are synthetic (template sphere with a
smooth deterministic deformation, FID view poses, random 512² texture): the cost depends on the
covered area, not on the values. On a shared, busy 2-core machine torch's 2-thread pool can slow
down by 10x or more; ``OMP_NUM_THREADS=1`` gives stable CPU timings there.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bench.render
from bench.render.camera import project, view_quaternions
from bench.render.obj import read_obj
from bench.render.rasterizer import rasterize
from bench.render.renderer import render_uv_mesh, render_views

OBJ = Path(bench.render.__file__).resolve().parent / "data" / "uvsphere_16rings.obj"
SIZE = 256


def make_inputs(batch: int, device: str = "cpu"):
    """Posed + flipped vertices (B,482,3), faces (960,3), face UVs (960,3,2), texture (B,3,512,512)."""
    verts, uvs, faces, face_uv_idx = read_obj(OBJ)
    v = torch.from_numpy(verts)
    gen = torch.Generator().manual_seed(0)
    bump = 1 + 0.15 * torch.sin(3 * v[:, :1] + torch.rand(batch, 1, 1, generator=gen) * 6) * torch.cos(2 * v[:, 1:2])
    obj = v[None] * bump * torch.tensor([1.2, 0.8, 1.0])
    quats = view_quaternions([30 * (b % 12) for b in range(batch)])
    scale = torch.full((batch, 1), 0.6)
    trans = torch.rand(batch, 2, generator=gen) * 0.1 - 0.05
    posed = project(obj, scale, trans, quats)
    texture = torch.tanh(torch.randn(batch, 3, 512, 512, generator=gen))
    return (posed.to(device), torch.from_numpy(faces).to(device),
            torch.from_numpy(uvs[face_uv_idx]).to(device), texture.to(device))


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("mask", ["hard", "soft"])
def test_render_forward_backward(benchmark, mask, batch, device):
    posed, faces, face_uvs, texture = make_inputs(batch, device)
    weights = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).to(device)

    def run():
        v = posed.detach().requires_grad_(True)
        t = texture.detach().requires_grad_(True)
        image, m = render_uv_mesh(v, faces, face_uvs, t, SIZE, SIZE, soft_mask=mask == "soft")
        ((image * weights).sum() + m.sum()).backward()
        _sync(device)
        return v.grad, m

    run()  # warm-up
    grad, m = benchmark(run)
    assert grad.shape == posed.shape and m.shape == (batch, 1, SIZE, SIZE)
    assert (m > 0).float().mean() > 0.1


@pytest.mark.parametrize("batch", [1, 16])
def test_rasterize_forward(benchmark, batch):
    posed, faces, _, _ = make_inputs(batch)
    frag = benchmark(lambda: rasterize(posed, faces, SIZE, SIZE))
    assert frag.face_index.shape == (batch, SIZE, SIZE)


def test_render_views_fid12(benchmark):
    """The 12 FID views of one instance (no grad), uint8 composite."""
    from bench.methods.base import TexturedMesh

    verts, uvs, faces, face_uv_idx = read_obj(OBJ)
    mesh = TexturedMesh(vertices=torch.from_numpy(verts), faces=torch.from_numpy(faces),
                        face_uvs=torch.from_numpy(uvs[face_uv_idx]),
                        texture=torch.tanh(torch.randn(3, 512, 512, generator=torch.Generator().manual_seed(2))))
    quats = view_quaternions()
    views = benchmark(lambda: render_views(mesh, quats))
    assert views.shape == (1, 12, SIZE, SIZE, 3)
