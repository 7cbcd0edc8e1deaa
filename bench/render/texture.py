"""Texture look-ups for the renderer: UV maps (MeshInversion) and per-face grids (CMR/UMR).

Both samplers return channel-first images ``(B,C,H,W)`` and are differentiable w.r.t. the texture
and the sampling coordinates (UVs, barycentric weights).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["adjust_uvs", "pad_texture", "pad_texture_and_adjust_uvs", "sample_face_grid", "sample_uv_texture"]


def sample_uv_texture(uv: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
    """Bilinear UV look-up (the official fragment shader).

    The grid is ``(2u - 1, -(2v - 1))`` (v = 1 is texture row 0), sampled with
    ``grid_sample(mode='bilinear', align_corners=True, padding_mode='zeros')``.

    Args:
        uv: (B,H,W,2) texture coordinates.
        texture: (B,C,R,R') texture map.

    Returns:
        (B,C,H,W) colours.
    """
    if uv.dim() != 4 or uv.shape[-1] != 2:
        raise ValueError(f"uv must be (B,H,W,2), got {tuple(uv.shape)}")
    if texture.dim() != 4 or texture.shape[0] != uv.shape[0]:
        raise ValueError(f"texture must be (B,C,R,R') with B = {uv.shape[0]}, got {tuple(texture.shape)}")
    grid = torch.stack((uv[..., 0] * 2 - 1, -(uv[..., 1] * 2 - 1)), dim=-1)
    return F.grid_sample(texture, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class _CircularPad(torch.autograd.Function):
    """One-column circular padding with a fused backward (avoids full-size zero-filled slices)."""

    @staticmethod
    def forward(ctx, texture):
        return torch.cat((texture[..., -1:], texture, texture[..., :1]), dim=-1)

    @staticmethod
    def backward(ctx, grad):
        g = grad[..., 1:-1].clone()
        g[..., -1] += grad[..., 0]
        g[..., 0] += grad[..., -1]
        return g


def pad_texture(texture: torch.Tensor) -> torch.Tensor:
    """Circular padding of one column on each side: (B,C,R,W) -> (B,C,R,W+2)."""
    return _CircularPad.apply(texture)


def adjust_uvs(uvs: torch.Tensor, width: int) -> torch.Tensor:
    """UV adjustment matching :func:`pad_texture`: ``u' = (u + 1/(2W)) / ((W+1)/W)``, v unchanged.

    With ``align_corners=True`` sampling of the padded map, u then lands on column ``u·W + 0.5`` of the
    padded map, i.e. texel centres of the unpadded map sit at ``u = (i + 0.5)/W``.

    Args:
        uvs: (...,2) raw UVs in [0,1].
        width: W, the width of the **unpadded** texture.

    Returns:
        (...,2) adjusted UVs.
    """
    u = (uvs[..., 0] + 1 / (2 * width)) / ((width + 1) / width)
    return torch.stack((u, uvs[..., 1]), dim=-1)


def pad_texture_and_adjust_uvs(texture: torch.Tensor, uvs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The symmetric-case rule of the official ``forward_renderer`` (spec §b).

    Args:
        texture: (B,C,R,W).
        uvs: (...,2) raw template UVs.

    Returns:
        padded texture (B,C,R,W+2), adjusted UVs (...,2).
    """
    return pad_texture(texture), adjust_uvs(uvs, texture.shape[-1])


def sample_face_grid(face_index: torch.Tensor, bary: torch.Tensor, face_textures: torch.Tensor) -> torch.Tensor:
    """Per-face T×T texture grids (CMR/UMR convention through NMR).

    For a pixel covered by face f with barycentrics (w0, w1, w2), the colour is the bilinear look-up of
    ``face_textures[b, f]`` at row ``(T-1)·w0`` and column ``(T-1)·w1``. Empty pixels are 0.

    Args:
        face_index: (B,H,W) int64, -1 where empty.
        bary: (B,H,W,3) barycentric weights (differentiable).
        face_textures: (B,F,T,T,C) (or (F,T,T,C), shared by the batch).

    Returns:
        (B,C,H,W) colours.
    """
    B, H, W = face_index.shape
    if face_textures.dim() == 4:
        face_textures = face_textures.unsqueeze(0).expand(B, *face_textures.shape)
    if face_textures.dim() != 5 or face_textures.shape[2] != face_textures.shape[3]:
        raise ValueError(f"face_textures must be (B,F,T,T,C), got {tuple(face_textures.shape)}")
    _, nF, T, _, C = face_textures.shape
    flat_face = face_index.reshape(-1)
    lin = torch.nonzero(flat_face >= 0).squeeze(1)
    b = torch.div(lin, H * W, rounding_mode="floor")
    gface = b * nF + flat_face[lin]  # (N,)
    w = bary.reshape(-1, 3).index_select(0, lin)
    r = w[:, 0] * (T - 1)
    c = w[:, 1] * (T - 1)
    hi = max(T - 2, 0)
    r0 = r.detach().floor().clamp(0, hi).long()
    c0 = c.detach().floor().clamp(0, hi).long()
    r1 = (r0 + 1).clamp(max=T - 1)
    c1 = (c0 + 1).clamp(max=T - 1)
    fr = (r - r0).unsqueeze(1)
    fc = (c - c0).unsqueeze(1)
    tex = face_textures.reshape(B * nF * T * T, C)
    base = gface * (T * T)

    def texel(ri, ci):
        return tex.index_select(0, base + ri * T + ci)

    val = ((1 - fr) * ((1 - fc) * texel(r0, c0) + fc * texel(r0, c1))
           + fr * ((1 - fc) * texel(r1, c0) + fc * texel(r1, c1)))
    out = torch.zeros(B * H * W, C, dtype=val.dtype, device=val.device).index_copy(0, lin, val)
    return out.reshape(B, H, W, C).permute(0, 3, 1, 2)
