"""Chunked Chamfer primitives == dense reference (values, indices, gradients)."""
from __future__ import annotations

import pytest
import torch

from bench.methods.meshinversion.chamfer import (
    GateParams,
    auto_chunk_size,
    chamfer_sq,
    chamfer_sq_dense,
    gated_chamfer,
    gated_chamfer_dense,
    masked_mean,
)

CHUNKS = [3, 7, 64, 1000, None]  # 1000 > N; none divides N = 300 / 217 / 211 except 3 (300)
GATES = [GateParams(), GateParams(xy_threshold=0.0), GateParams(xy_k=2.0, xy_alpha=1.5, rgb_eps=0.5)]


def make_points(n: int, dims, *, batch: int = 2, dtype=torch.float64, seed: int = 0, grid: int | None = None):
    """Random leaf tensors (batch, n, d) for each d in dims; on a 1/grid lattice if grid is set."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for d in dims:
        x = torch.rand(batch, n, d, generator=g, dtype=torch.float64) * 2 - 1
        if grid is not None:
            x = torch.round(x * grid) / grid
        out.append(x.to(dtype).requires_grad_(True))
    return out


def grads(outputs, inputs):
    loss = sum(o.sum() * (i + 1) for i, o in enumerate(outputs))  # weight the two directions differently
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_plain_chunked_equals_dense_float64(chunk):
    x, y = make_points(300, [2], seed=1)[0], make_points(217, [2], seed=2)[0]
    d1, d2, i1, i2 = chamfer_sq(x, y, chunk_size=chunk)
    r1, r2, j1, j2 = chamfer_sq_dense(x, y)
    assert torch.equal(i1, j1) and torch.equal(i2, j2)
    torch.testing.assert_close(d1, r1, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d2, r2, rtol=1e-12, atol=1e-14)
    for a, b in zip(grads([d1, d2], [x, y]), grads([r1, r2], [x, y])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("gate", GATES, ids=["default", "eps1", "alpha"])
def test_gated_chunked_equals_dense_float64(chunk, gate):
    px, cx = make_points(300, [2, 3], seed=3)
    py, cy = make_points(211, [2, 3], seed=4)
    d1, d2, i1, i2 = gated_chamfer(px, cx, py, cy, gate, both=True, chunk_size=chunk)
    r1, r2, j1, j2 = gated_chamfer_dense(px, cx, py, cy, gate)
    assert torch.equal(i1, j1) and torch.equal(i2, j2)
    torch.testing.assert_close(d1, r1, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d2, r2, rtol=1e-12, atol=1e-14)
    for a, b in zip(grads([d1, d2], [px, cx, py, cy]), grads([r1, r2], [px, cx, py, cy])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gated_one_way_skips_reverse():
    px, cx = make_points(50, [2, 3], seed=5)
    py, cy = make_points(40, [2, 3], seed=6)
    d1, d2, _, i2 = gated_chamfer(px, cx, py, cy, chunk_size=16)
    assert d2 is None and i2 is None
    torch.testing.assert_close(d1, gated_chamfer_dense(px, cx, py, cy)[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk", [1, 13, None])
def test_float32_exact_lattice(chunk):
    """float32 on a 1/16 lattice: every distance is exact, so chunked and dense agree bit for bit
    (ties included: both take the first minimal index)."""
    px, cx = make_points(200, [2, 3], dtype=torch.float32, seed=7, grid=16)
    py, cy = make_points(170, [2, 3], dtype=torch.float32, seed=8, grid=16)
    gate = GateParams(xy_threshold=0.0)  # eps == 1: (1 + D_xy)(D_c + 1), exact on this lattice
    d1, d2, i1, i2 = gated_chamfer(px, cx, py, cy, gate, both=True, chunk_size=chunk)
    r1, r2, j1, j2 = gated_chamfer_dense(px, cx, py, cy, gate)
    assert torch.equal(i1, j1) and torch.equal(i2, j2)
    assert torch.equal(d1, r1) and torch.equal(d2, r2)
    for a, b in zip(grads([d1, d2], [px, cx, py, cy]), grads([r1, r2], [px, cx, py, cy])):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    e1, e2, k1, k2 = chamfer_sq(px, py, chunk_size=chunk)
    s1, s2, l1, l2 = chamfer_sq_dense(px, py)
    assert torch.equal(k1, l1) and torch.equal(k2, l2) and torch.equal(e1, s1) and torch.equal(e2, s2)
    for a, b in zip(grads([e1, e2], [px, py]), grads([s1, s2], [px, py])):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("chunk", [5, None])
def test_float32_random_values(chunk):
    """float32 random points: minima equal the float64 dense ones to float32 accuracy."""
    px, cx = make_points(400, [2, 3], dtype=torch.float32, seed=9)
    py, cy = make_points(333, [2, 3], dtype=torch.float32, seed=10)
    d1, d2, _, _ = gated_chamfer(px, cx, py, cy, both=True, chunk_size=chunk)
    r1, r2, _, _ = gated_chamfer_dense(*(t.detach().double() for t in (px, cx, py, cy)))
    assert d1.dtype == torch.float32
    torch.testing.assert_close(d1.double(), r1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d2.double(), r2, rtol=1e-5, atol=1e-6)
    e1, e2, _, _ = chamfer_sq(px, py, chunk_size=chunk)
    s1, s2, _, _ = chamfer_sq_dense(px.detach().double(), py.detach().double())
    torch.testing.assert_close(e1.double(), s1, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(e2.double(), s2, rtol=1e-4, atol=1e-6)


def test_padded_batch_equals_separate_calls():
    """(B, N, D) with per-instance lengths == one unpadded call per instance, values and grads."""
    lens_x, lens_y = [37, 60, 12], [50, 9, 50]
    px, cx = make_points(60, [2, 3], batch=3, seed=11)
    py, cy = make_points(50, [2, 3], batch=3, seed=12)
    lx, ly = torch.tensor(lens_x), torch.tensor(lens_y)
    d1, d2, _, _ = gated_chamfer(px, cx, py, cy, len_x=lx, len_y=ly, both=True, chunk_size=8)
    e1, e2, _, _ = chamfer_sq(px, py, len_x=lx, len_y=ly, chunk_size=8)
    loss = (masked_mean(d1, lx) + 2 * masked_mean(d2, ly) + 3 * masked_mean(e1, lx)
            + 4 * masked_mean(e2, ly)).sum()
    g = torch.autograd.grad(loss, [px, cx, py, cy])
    for b, (nx, ny) in enumerate(zip(lens_x, lens_y)):
        ins = [t[b, :n].detach().clone().requires_grad_(True) for t, n in ((px, nx), (cx, nx), (py, ny), (cy, ny))]
        r1, r2, _, _ = gated_chamfer_dense(*ins)
        s1, s2, _, _ = chamfer_sq_dense(ins[0], ins[2])
        torch.testing.assert_close(d1[b, :nx], r1, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(d2[b, :ny], r2, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(e1[b, :nx], s1, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(e2[b, :ny], s2, rtol=1e-12, atol=1e-14)
        assert torch.all(d1[b, nx:] == 0) and torch.all(d2[b, ny:] == 0)
        ref = r1.mean() + 2 * r2.mean() + 3 * s1.mean() + 4 * s2.mean()
        gr = torch.autograd.grad(ref, ins)
        for full, one, n in zip(g, gr, (nx, nx, ny, ny)):
            torch.testing.assert_close(full[b, :n], one, rtol=1e-10, atol=1e-12)
            assert torch.all(full[b, n:] == 0)


def test_unbatched_inputs_and_empty_sets():
    x, y = make_points(20, [2], batch=1, seed=13)[0][0], make_points(15, [2], batch=1, seed=14)[0][0]
    d1, d2, i1, i2 = chamfer_sq(x, y, chunk_size=4)
    assert d1.shape == (20,) and d2.shape == (15,) and i1.shape == (20,)
    torch.testing.assert_close(d1, chamfer_sq_dense(x, y)[0], rtol=1e-12, atol=1e-14)
    # an instance whose other set is empty gets NaN minima, its neighbour in the batch is unaffected
    xb, yb = make_points(10, [2], batch=2, seed=15)[0], make_points(8, [2], batch=2, seed=16)[0]
    d1, d2, _, _ = chamfer_sq(xb, yb, len_x=torch.tensor([10, 10]), len_y=torch.tensor([8, 0]))
    assert torch.isnan(d1[1]).all() and not torch.isnan(d1[0]).any()
    assert torch.isnan(masked_mean(d2, torch.tensor([8, 0]))[1])
    d1, _, _, _ = chamfer_sq(xb[:, :0], yb)
    assert d1.shape == (2, 0)


def test_auto_chunk_size():
    assert auto_chunk_size(1, 8192, "cpu") >= 8
    assert auto_chunk_size(64, 10**7, "cpu") == 8
    with pytest.raises(ValueError):
        chamfer_sq(torch.zeros(3, 2), torch.zeros(3, 2), chunk_size=0)
