"""Textured-mesh rendering on top of the DIB-R style rasteriser.

* :func:`render_uv_mesh` – the official MeshInversion path (``forward_renderer`` + ``Renderer`` +
  ``render()``'s permute): UV-mapped texture, image = colour · hard mask, background 0.
* :func:`render_mesh` – method-agnostic helper used by metrics: renders a :class:`TexturedMesh` (or a
  batch of them) with either a UV texture or per-face T×T texture grids, from a camera or from
  already posed vertices.
* :func:`render_views` – the FID_12 multi-view renders (white background, uint8), spec §e.
"""
from __future__ import annotations

import torch

from .camera import project, project_novel_view, split_camera
from .rasterizer import interpolate, rasterize, soft_silhouette
from .texture import pad_texture_and_adjust_uvs, sample_face_grid, sample_uv_texture

__all__ = ["composite_white", "render_face_textured_mesh", "render_mesh", "render_uv_mesh", "render_views"]


def _hard_mask(fragments) -> torch.Tensor:
    """(B,1,H,W) DIB-R hard mask: the interpolated constant 1 (values 1 ± 1 ulp), 0 where empty.

    It carries no geometric gradient in DIB-R (the corner values are equal), so it is computed
    without autograd: gradients w.r.t. the vertices are identical and cheaper.
    """
    with torch.no_grad():
        B, H, W = fragments.face_index.shape
        w = fragments.weights
        ones = (w[:, 0] + w[:, 1]) + w[:, 2]  # w0·1 + w1·1 + w2·1 in DIB-R's order
        out = torch.zeros(B * H * W, dtype=w.dtype, device=w.device).index_copy(0, fragments.pixels, ones)
        return out.reshape(B, 1, H, W)


def _soft_or_hard(verts, faces, height, width, fragments, hardmask, soft_mask):
    if soft_mask:
        return soft_silhouette(verts, faces, height, width, fragments=fragments).unsqueeze(1)
    return hardmask


def render_uv_mesh(verts: torch.Tensor, faces: torch.Tensor, face_uvs: torch.Tensor, texture: torch.Tensor,
                   height: int = 256, width: int = 256, symmetric_padding: bool = True,
                   soft_mask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Render a UV-textured mesh exactly as MeshInversion's renderer.

    Per-corner features ``(u', v, 1)`` are rasterised; ``(u', v)`` sample the texture bilinearly
    (:func:`bench.render.texture.sample_uv_texture`) and the interpolated constant 1 is the hard mask.

    Args:
        verts: (B,N,3) posed + flipped vertices (see :func:`bench.render.camera.project`).
        faces: (F,3) int64.
        face_uvs: (F,3,2) raw template UVs of every face corner (or (B,F,3,2)).
        texture: (B,3,R,R') texture in [-1,1].
        height, width: output size.
        symmetric_padding: apply the symmetric-case ``forward_renderer`` rule (circular padding by one
            column, ``u' = (u + 1/(2W))/((W+1)/W)``); if False the texture and UVs are used as they are.
        soft_mask: return DIB-R's soft silhouette instead of the hard mask (the image is unchanged).

    Returns:
        image (B,3,H,W) = colour · hard mask (background 0), mask (B,1,H,W). The hard mask has no
        autograd history: its gradient w.r.t. the vertices is exactly 0 in DIB-R (constant corner
        values), so gradients are unchanged; the soft mask is differentiable w.r.t. vertex x, y.
    """
    B = verts.shape[0]
    faces = faces.to(device=verts.device, dtype=torch.int64)
    face_uvs = face_uvs.to(device=verts.device, dtype=verts.dtype)
    if texture.shape[0] != B:
        raise ValueError(f"texture batch {texture.shape[0]} does not match vertices batch {B}")
    if symmetric_padding:
        texture, face_uvs = pad_texture_and_adjust_uvs(texture, face_uvs)
    fragments = rasterize(verts, faces, height, width)
    uv = interpolate(fragments, face_uvs)  # (B,H,W,2)
    hardmask = _hard_mask(fragments)
    color = sample_uv_texture(uv, texture)
    image = color * hardmask
    return image, _soft_or_hard(verts, faces, height, width, fragments, hardmask, soft_mask)


def render_face_textured_mesh(verts: torch.Tensor, faces: torch.Tensor, face_textures: torch.Tensor,
                              height: int = 256, width: int = 256,
                              soft_mask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Render a mesh with per-face T×T texture grids (CMR/UMR) through the same rasteriser.

    Args:
        verts: (B,N,3) posed + flipped vertices.
        faces: (F,3) int64.
        face_textures: (B,F,T,T,3) (or (F,T,T,3)) RGB in [-1,1]; colour at barycentrics (w0, w1) is the
            bilinear look-up at row (T-1)·w0, column (T-1)·w1.
        height, width: output size.
        soft_mask: as in :func:`render_uv_mesh`.

    Returns:
        image (B,3,H,W) (background 0), mask (B,1,H,W).
    """
    faces = faces.to(device=verts.device, dtype=torch.int64)
    fragments = rasterize(verts, faces, height, width)
    hardmask = _hard_mask(fragments)
    color = sample_face_grid(fragments.face_index, fragments.bary, face_textures.to(verts.device))
    image = color * hardmask
    return image, _soft_or_hard(verts, faces, height, width, fragments, hardmask, soft_mask)


def _stack_meshes(mesh):
    """A TexturedMesh (unbatched or batched) or a sequence of them -> batched tensors."""
    meshes = list(mesh) if isinstance(mesh, (list, tuple)) else [mesh]
    if not meshes:
        raise ValueError("render_mesh needs at least one mesh")
    first = meshes[0]
    uv = first.texture is not None
    if uv and first.face_uvs is None:
        raise ValueError("a UV-textured TexturedMesh needs face_uvs (F,3,2)")
    if not uv and first.face_textures is None:
        raise ValueError("TexturedMesh has neither a UV texture (texture + face_uvs) nor face_textures")

    def batched(t, unbatched_dim):
        return t if t.dim() == unbatched_dim + 1 else t.unsqueeze(0)

    verts = torch.cat([batched(m.vertices, 2) for m in meshes])
    if uv:
        tex = torch.cat([batched(m.texture, 3) for m in meshes])
    else:
        tex = torch.cat([batched(m.face_textures, 4) for m in meshes])
    if tex.shape[0] == 1 and verts.shape[0] > 1:
        tex = tex.expand(verts.shape[0], *tex.shape[1:])
    return verts, first.faces, first.face_uvs, tex, uv


def render_mesh(mesh, camera: torch.Tensor | None = None, *, posed_vertices: torch.Tensor | None = None,
                height: int = 256, width: int = 256, soft_mask: bool = False,
                symmetric_padding: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Render any :class:`bench.methods.base.TexturedMesh` (method-agnostic helper for metrics).

    Give exactly one of ``camera`` (object-space vertices are posed with
    :func:`bench.render.camera.project` and flipped) or ``posed_vertices`` (already posed + flipped).

    Args:
        mesh: a ``TexturedMesh`` — vertices (V,3) or batched (B,V,3), texture (3,R,R') / (B,3,R,R')
            or face_textures (F,T,T,3) / (B,F,T,T,3) — or a list of such meshes sharing ``faces`` (and
            ``face_uvs``), which are stacked into one batch.
        camera: (B,7) or (7,) ``[s, tx, ty, qw, qx, qy, qz]``.
        posed_vertices: (B,V,3) posed + flipped vertices replacing the mesh's own vertices.
        height, width: output size.
        soft_mask: return DIB-R's soft silhouette as mask.
        symmetric_padding: UV meshes only; MeshInversion's texture padding / UV adjustment
            (:func:`bench.render.texture.pad_texture_and_adjust_uvs`). Leave True for MeshInversion
            textures; False samples ``texture`` at the raw UVs.

    Returns:
        image (B,3,H,W) in [-1,1] with background 0, mask (B,1,H,W) (hard: 0 or ≈1).
    """
    verts, faces, face_uvs, tex, uv = _stack_meshes(mesh)
    if (camera is None) == (posed_vertices is None):
        raise ValueError("render_mesh: pass exactly one of camera= or posed_vertices=")
    if posed_vertices is None:
        camera = camera.to(device=verts.device, dtype=verts.dtype)
        scale, trans, rot = split_camera(camera)
        if verts.shape[0] == 1 and scale.shape[0] > 1:
            verts = verts.expand(scale.shape[0], -1, -1)
        posed_vertices = project(verts, scale, trans, rot)
    B = posed_vertices.shape[0]
    if tex.shape[0] != B:
        if tex.shape[0] != 1:
            raise ValueError(f"texture batch {tex.shape[0]} does not match vertex batch {B}")
        tex = tex.expand(B, *tex.shape[1:])
    tex = tex.to(posed_vertices.device)
    if uv:
        return render_uv_mesh(posed_vertices, faces, face_uvs, tex, height, width,
                              symmetric_padding=symmetric_padding, soft_mask=soft_mask)
    return render_face_textured_mesh(posed_vertices, faces, tex, height, width, soft_mask=soft_mask)


def composite_white(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FID_12 compositing: ``img/2 + 0.5 + (1 - mask)``, ×255, clamp to [0,255], uint8 (truncation).

    Args:
        image: (B,3,H,W) in [-1,1], background 0.
        mask: (B,1,H,W).

    Returns:
        (B,H,W,3) uint8, white background.
    """
    out = (image / 2 + 0.5 + (1 - mask)) * 255
    return out.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@torch.no_grad()
def render_views(mesh, quaternions: torch.Tensor, size: int = 256, scale: float = 0.7,
                 symmetric_padding: bool = True) -> torch.Tensor:
    """Novel-view renders for FID_12 / FID_10 (spec §e), white background.

    Vertices are centred at their mean, scaled by ``scale``, rotated by each quaternion (no
    translation), flipped and rendered at ``size``×``size`` with the hard mask, then composited with
    :func:`composite_white`.

    Args:
        mesh: a ``TexturedMesh`` (possibly batched) or a list of them (see :func:`render_mesh`).
        quaternions: (K,4) view quaternions (w, x, y, z), e.g. :func:`bench.render.camera.view_quaternions`.
        size: output resolution.
        scale: the novel-view scale (0.7).

    Returns:
        (N,K,size,size,3) uint8.
    """
    verts, faces, face_uvs, tex, uv = _stack_meshes(mesh)
    quaternions = quaternions.to(device=verts.device, dtype=verts.dtype)
    K = quaternions.shape[0]
    if tex.shape[0] == 1 and verts.shape[0] > 1:
        tex = tex.expand(verts.shape[0], *tex.shape[1:])
    out = []
    for n in range(verts.shape[0]):  # one instance at a time, its K views as one batch
        posed = project_novel_view(verts[n:n + 1].expand(K, -1, -1), quaternions, scale)
        t = tex[n:n + 1].expand(K, *tex.shape[1:])
        if uv:
            image, mask = render_uv_mesh(posed, faces, face_uvs, t, size, size, symmetric_padding=symmetric_padding)
        else:
            image, mask = render_face_textured_mesh(posed, faces, t, size, size)
        out.append(composite_white(image, mask))
    return torch.stack(out)
