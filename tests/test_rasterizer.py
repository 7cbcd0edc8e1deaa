"""bench.render.rasterizer: DIB-R semantics against a dense brute-force reference, gradients, devices.

The dense reference below evaluates every (face, pixel) pair by broadcasting — simple and slow, but
an independent statement of spec §c (pixel centres, half-open bbox, inclusive barycentric test,
back-face culling, larger z wins, ties keep the earlier face; soft silhouette rule).
"""
from __future__ import annotations

import pytest
import torch

from bench.render.rasterizer import EPS, MULTIPLIER, interpolate, rasterize, soft_silhouette

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _centres(H, W, dtype):
    j = torch.arange(W, dtype=torch.float64)
    i = torch.arange(H, dtype=torch.float64)
    x0 = ((MULTIPLIER / W) * (2 * j + 1 - W)).to(dtype)
    y0 = ((MULTIPLIER / H) * (H - 2 * i - 1)).to(dtype)
    return x0.view(1, 1, 1, W), y0.view(1, 1, H, 1)


def dense_rasterize(verts, faces, H, W, cull=True):
    """Brute-force DIB-R hard rasterisation: face_index (B,H,W), bary (B,H,W,3)."""
    fv = verts[:, faces]  # (B,F,3,3)
    p = fv[..., :2] * MULTIPLIER
    X, Y = _centres(H, W, verts.dtype)
    ax, ay, bx, by, cx, cy = (p[..., k // 2, k % 2, None, None] for k in range(6))
    az, bz, cz = (fv[..., k, 2, None, None] for k in range(3))
    xmin = torch.minimum(torch.minimum(ax, bx), cx)
    xmax = torch.maximum(torch.maximum(ax, bx), cx)
    ymin = torch.minimum(torch.minimum(ay, by), cy)
    ymax = torch.maximum(torch.maximum(ay, by), cy)
    in_box = ~((X < xmin) | (X >= xmax) | (Y < ymin) | (Y >= ymax))
    m, pp, n, q, s, t = bx - ax, by - ay, cx - ax, cy - ay, X - ax, Y - ay
    k1, k2, k3 = s * q - n * t, m * t - s * pp, m * q - n * pp
    w1, w2 = k1 / (k3 + EPS), k2 / (k3 + EPS)
    w0 = 1 - w1 - w2
    z = w0 * az + w1 * bz + w2 * cz
    ok = in_box & (w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (z > -1000)
    if cull:
        e1, e2 = fv[:, :, 1] - fv[:, :, 0], fv[:, :, 2] - fv[:, :, 0]
        nz = torch.linalg.cross(e1, e2, dim=-1)[..., 2]
        ok &= (nz >= 0)[..., None, None]
    zz = torch.where(ok, z, torch.tensor(float("-inf"), dtype=z.dtype))
    zmax = zz.amax(dim=1, keepdim=True)
    winner = (ok & (zz == zmax)).to(torch.int8).argmax(dim=1)  # first (lowest index) maximum
    covered = ok.any(dim=1)
    face_index = torch.where(covered, winner, torch.full_like(winner, -1))
    w = torch.stack((w0, w1, w2), dim=-1).expand(*ok.shape, 3)
    bary = torch.gather(w, 1, winner[:, None, :, :, None].expand(-1, 1, -1, -1, 3)).squeeze(1)
    return face_index, bary * covered[..., None]


def dense_soft(verts, faces, H, W, covered, sigmainv=7000.0, expand=0.02, knum=30):
    """Brute-force DIB-R soft silhouette (B,H,W)."""
    p = verts[:, faces][..., :2] * MULTIPLIER
    X, Y = _centres(H, W, verts.dtype)
    xs, ys = p[..., 0, None, None], p[..., 1, None, None]  # (B,F,3,1,1)
    X, Y = X.unsqueeze(2), Y.unsqueeze(2)  # broadcast over corners
    mg = expand * MULTIPLIER
    in_box = ~((X < xs.amin(2, keepdim=True) - mg) | (X >= xs.amax(2, keepdim=True) + mg)
               | (Y < ys.amin(2, keepdim=True) - mg) | (Y >= ys.amax(2, keepdim=True) + mg))[:, :, 0]
    x1, y1 = xs, ys
    x2, y2 = xs.roll(-1, dims=2), ys.roll(-1, dims=2)
    A, Bc, C = y2 - y1, x1 - x2, x2 * y1 - x1 * y2
    up = A * X + Bc * Y + C
    down = A * A + Bc * Bc
    x3 = (Bc * Bc * X - A * Bc * Y - A * C) / (down + EPS)
    y3 = (A * A * Y - A * Bc * X - Bc * C) / (down + EPS)
    outside = (x3 - x1) * (x3 - x2) + (y3 - y1) * (y3 - y2) > 0
    d_edge = torch.where(outside, torch.full_like(up, 4 * MULTIPLIER ** 2), up * up / (down + EPS))
    d_vert = (X - x1) ** 2 + (Y - y1) ** 2
    d = torch.minimum(d_edge.amin(2), d_vert.amin(2))  # (B,F,H,W)
    prob = torch.exp(-(sigmainv * d / MULTIPLIER / MULTIPLIER))
    use = in_box & (torch.cumsum(in_box.long(), dim=1) <= knum)
    keep = torch.where(use, 1 - prob.double(), torch.ones_like(prob, dtype=torch.float64)).prod(dim=1)
    return torch.where(covered, torch.ones_like(prob[:, 0]), (1 - keep).to(verts.dtype))


def random_soup(B=2, F=40, seed=0, dtype=torch.float32, device="cpu"):
    """Random overlapping triangles (some back-facing), coordinates in [-1.2, 1.2]."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(B, F, 1, 3, generator=g) * 2.4 - 1.2)
    offsets = torch.randn(B, F, 3, 3, generator=g) * torch.tensor([0.35, 0.35, 0.3])
    verts = (centres + offsets).reshape(B, 3 * F, 3)
    faces = torch.arange(3 * F).reshape(F, 3)
    return verts.to(device=device, dtype=dtype), faces.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size,dtype", [((37, 53), torch.float32), ((32, 32), torch.float32),
                                        ((29, 31), torch.float64)])
def test_hard_matches_dense_reference(device, size, dtype):
    H, W = size
    verts, faces = random_soup(device=device, dtype=dtype)
    frag = rasterize(verts, faces, H, W)
    ref_idx, ref_bary = dense_rasterize(verts.cpu(), faces.cpu(), H, W)
    assert frag.face_index.shape == (verts.shape[0], H, W) and frag.face_index.dtype == torch.int64
    mismatch = (frag.face_index.cpu() != ref_idx).float().mean().item()
    if device == "cpu":
        assert mismatch == 0
        torch.testing.assert_close(frag.bary, ref_bary, rtol=0, atol=0)
    else:  # FMA contraction may flip a pixel whose centre lies on an edge
        assert mismatch <= 1e-3
        same = frag.face_index.cpu() == ref_idx
        torch.testing.assert_close(frag.bary.cpu()[same], ref_bary[same], rtol=0, atol=1e-4)
    assert (frag.face_index >= 0).sum().item() > 0.15 * frag.face_index.numel()
    assert torch.equal(frag.pixels.cpu(), torch.nonzero(ref_idx.reshape(-1) >= 0).squeeze(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunking_is_exact(dtype):
    verts, faces = random_soup(B=3, F=60, seed=3, dtype=dtype)
    full = rasterize(verts, faces, 40, 40)
    chunked = rasterize(verts, faces, 40, 40, max_pairs=701)
    assert torch.equal(full.face_index, chunked.face_index)
    assert torch.equal(full.bary, chunked.bary)
    assert torch.equal(full.depth, chunked.depth)
    soft = soft_silhouette(verts, faces, 40, 40, fragments=full)
    soft_chunked = soft_silhouette(verts, faces, 40, 40, fragments=full, max_pairs=401)
    torch.testing.assert_close(soft, soft_chunked, rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backface_culling_and_ties(dtype):
    H = W = 8
    # NDC positions of pixel centres are (2j + 1 - W)/W: use exact ones so edges hit centres
    a, b, c = [-0.875, -0.875, 0.0], [0.875, -0.875, 0.0], [-0.875, 0.875, 0.0]
    ccw = torch.tensor([[a, b, c]], dtype=dtype)  # counter-clockwise seen from +z: front-facing
    faces = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 2, 1]])
    frag = rasterize(ccw, faces, H, W)
    cov = frag.face_index >= 0
    assert torch.all(frag.face_index[cov] == 0)  # duplicate face 1 ties and loses; face 2 is culled
    # half-open bbox: the column/row through the max-x / max-y corner are excluded
    assert not cov[0, :, W - 1].any() and not cov[0, 0, :].any()
    # inclusive barycentric test: pixels on the hypotenuse are covered
    assert cov[0, 1, 0] and cov[0, 7, 6]
    ref_idx, _ = dense_rasterize(ccw, faces, H, W)
    assert torch.equal(frag.face_index, ref_idx)
    # without culling the clockwise copy renders where the front copy does not win
    cw_only = rasterize(ccw, faces[2:], H, W)
    assert not (cw_only.face_index >= 0).any()
    assert (rasterize(ccw, faces[2:], H, W, cull_backfaces=False).face_index >= 0).sum() == cov.sum()


def test_depth_ties_signed_zero():
    # depth -0.0 and +0.0 compare equal in DIB-R: the earlier face keeps the pixel
    tri = [[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]
    verts = torch.tensor([[p + [-0.0] for p in tri] + [p + [0.0] for p in tri]])
    for order in ([0, 1], [1, 0]):
        faces = torch.tensor([[0, 1, 2], [3, 4, 5]])[order]
        frag = rasterize(verts, faces, 8, 8)
        cov = frag.face_index >= 0
        assert cov.any() and torch.all(frag.face_index[cov] == 0)


def test_depth_larger_z_wins():
    tri = [[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]
    verts = torch.tensor([[p + [0.1] for p in tri] + [p + [0.5] for p in tri]])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    frag = rasterize(verts, faces, 16, 16)
    cov = frag.face_index >= 0
    assert torch.all(frag.face_index[cov] == 1)
    torch.testing.assert_close(frag.depth[cov], torch.full_like(frag.depth[cov], 0.5))
    assert torch.all(frag.depth[~cov] == -1000)


def test_empty_and_offscreen():
    verts = torch.tensor([[[5.0, 5.0, 0.0], [6.0, 5.0, 0.0], [5.0, 6.0, 0.0]]], requires_grad=True)
    faces = torch.tensor([[0, 1, 2]])
    frag = rasterize(verts, faces, 10, 12)
    assert torch.all(frag.face_index == -1) and frag.pixels.numel() == 0
    out = interpolate(frag, torch.ones(1, 3, 2))
    assert out.shape == (1, 10, 12, 2) and torch.all(out == 0)
    soft = soft_silhouette(verts, faces, 10, 12, fragments=frag)
    assert torch.all(soft == 0)
    (out.sum() + soft.sum()).backward()
    assert torch.all(verts.grad == 0)


def test_interpolate_constant_and_attrs():
    verts, faces = random_soup(B=2, F=20, seed=5)
    frag = rasterize(verts, faces, 24, 24)
    ones = interpolate(frag, torch.ones(faces.shape[0], 3, 1))[..., 0]
    cov = frag.face_index >= 0
    torch.testing.assert_close(ones[cov], torch.ones_like(ones[cov]), rtol=0, atol=2.5e-7)
    assert torch.all(ones[~cov] == 0)
    # per-batch attributes: corner k carries value k -> w1 + 2 w2
    attrs = torch.tensor([0.0, 1.0, 2.0]).view(1, 1, 3, 1).expand(2, faces.shape[0], 3, 1)
    val = interpolate(frag, attrs)[..., 0]
    torch.testing.assert_close(val, frag.bary[..., 1] + 2 * frag.bary[..., 2])


def _tiny_mesh(dtype=torch.float64):
    # coordinates chosen so that no pixel centre of the test grids lies within 1e-3 of an edge
    verts = torch.tensor([[[-0.913, -0.787, 0.1], [0.706, -0.617, 0.2], [-0.521, 0.893, 0.3],
                           [0.812, -0.233, -0.1], [0.747, 0.861, 0.0], [-0.097, 0.618, 0.4]]], dtype=dtype)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    return verts, faces


def test_gradcheck_barycentric_interpolation():
    verts, faces = _tiny_mesh()
    attrs = torch.randn(1, 2, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    verts.requires_grad_(True)
    attrs.requires_grad_(True)

    def fn(v, a):
        return interpolate(rasterize(v, faces, 12, 10), a)

    assert (rasterize(verts, faces, 12, 10).face_index >= 0).sum() > 30
    assert torch.autograd.gradcheck(fn, (verts, attrs), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_no_gradient_to_depth():
    verts, faces = random_soup(B=1, F=15, seed=9)
    verts.requires_grad_(True)
    frag = rasterize(verts, faces, 32, 32)
    out = interpolate(frag, torch.randn(faces.shape[0], 3, 2))
    soft = soft_silhouette(verts, faces, 32, 32, fragments=frag)
    (out.square().sum() + soft.sum()).backward()
    assert torch.all(verts.grad[..., 2] == 0)
    assert verts.grad[..., :2].abs().sum() > 0
    # the interpolated constant (hard mask) carries no geometric gradient at all
    verts.grad = None
    mask = interpolate(rasterize(verts, faces, 32, 32), torch.ones(faces.shape[0], 3, 1))
    (mask * torch.randn_like(mask)).sum().backward()
    assert torch.all(verts.grad == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_soft_matches_dense_reference(device):
    verts, faces = random_soup(B=2, F=40, seed=11, device=device)
    H, W = 30, 34
    frag = rasterize(verts, faces, H, W)
    soft = soft_silhouette(verts, faces, H, W, fragments=frag)
    ref_idx, _ = dense_rasterize(verts.cpu(), faces.cpu(), H, W)
    ref = dense_soft(verts.cpu(), faces.cpu(), H, W, ref_idx >= 0)
    same = frag.face_index.cpu() == ref_idx
    assert same.float().mean() >= 0.999
    torch.testing.assert_close(soft.cpu()[same], ref[same], rtol=0, atol=1e-6)
    assert ((soft > 0) & (soft < 1)).sum() > 50
    # knum limits the faces considered per pixel
    ref3 = dense_soft(verts.cpu(), faces.cpu(), H, W, ref_idx >= 0, knum=3)
    soft3 = soft_silhouette(verts, faces, H, W, knum=3, fragments=frag)
    torch.testing.assert_close(soft3.cpu()[same], ref3[same], rtol=0, atol=1e-6)


def test_gradcheck_soft_silhouette():
    verts, faces = _tiny_mesh()
    verts = (verts * 0.6).requires_grad_(True)

    def fn(v):
        return soft_silhouette(v, faces, 10, 12, sigmainv=500.0)

    out = fn(verts)
    assert ((out > 1e-3) & (out < 1)).sum() > 10
    assert torch.autograd.gradcheck(fn, (verts,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_pixel_ranges_equal_searchsorted():
    from bench.render.rasterizer import _pixel_centres, _search_uniform

    for W in (7, 8, 255, 256):
        x0, _ = _pixel_centres(W, W, MULTIPLIER, "cpu", torch.float32)
        up, down = torch.tensor(1e9), torch.tensor(-1e9)
        vals = torch.cat((x0, x0 + 1e-4, x0 - 1e-4, torch.nextafter(x0, up), torch.nextafter(x0, down),
                          torch.rand(500, generator=torch.Generator().manual_seed(W)) * 2400 - 1200,
                          torch.tensor([float("inf"), -float("inf"), 1e30, -1e30])))
        for right in (False, True):
            got = _search_uniform(x0, vals, right, 2 * MULTIPLIER / W, MULTIPLIER / W * (1 - W))
            assert torch.equal(got, torch.searchsorted(x0, vals, right=right))


def test_input_validation():
    with pytest.raises(ValueError, match="B,N,3"):
        rasterize(torch.zeros(4, 3), torch.zeros(1, 3, dtype=torch.int64), 4, 4)
    with pytest.raises(ValueError, match="integer"):
        rasterize(torch.zeros(1, 4, 3), torch.zeros(1, 3), 4, 4)
