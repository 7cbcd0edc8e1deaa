"""MeshInversion's ``render`` composition (``mi:lib/mesh_inversion.py MeshInversion.render``).

mesh map -> template vertex positions (object frame) -> camera (scale, unnormalised quaternion,
translation, then the (1,-1,-1) flip) -> DIB-R style rasterisation of the UV-textured sphere with
the hard mask. The projected 2-D vertex positions (``vtx_xy``, NDC, y up) feed the mask Chamfer loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RenderOutput:
    """Everything one render pass yields.

    Attributes:
        image: (B,3,H,W) RGB in [-1,1], background 0.
        mask: (B,1,H,W) hard mask (0 or ~1).
        vtx_xy: (B,V,2) projected vertex positions (flipped NDC: x right, y up).
        vertices: (B,V,3) object-frame vertices (before the camera).
        posed: (B,V,3) posed and flipped vertices.
    """

    image: torch.Tensor
    mask: torch.Tensor
    vtx_xy: torch.Tensor
    vertices: torch.Tensor
    posed: torch.Tensor


def render(template, texture: torch.Tensor, mesh_map: torch.Tensor, scale: torch.Tensor,
           translation: torch.Tensor, rotation: torch.Tensor, height: int, width: int | None = None,
           vertices: torch.Tensor | None = None) -> RenderOutput:
    """Render generator outputs at a camera, exactly as the official inversion does.

    Args:
        template: a :class:`bench.render.uvsphere.UVSphereTemplate` on the right device.
        texture: (B,3,R,R) UV texture in [-1,1] (the full, symmetrized map).
        mesh_map: (B,3,32,32) displacement map (ignored when ``vertices`` is given).
        scale: (B,1); translation: (B,2) or (B,3) (z ignored); rotation: (B,4) (w,x,y,z), NOT
            normalised (the official ``qrot`` uses it as is).
        height, width: output size in pixels (width defaults to height).
        vertices: optional precomputed (B,V,3) object-frame vertices.
    Returns:
        :class:`RenderOutput`.
    """
    from bench.render.camera import project
    from bench.render.renderer import render_uv_mesh

    width = height if width is None else width
    if vertices is None:
        vertices = template.vertex_positions(mesh_map)
    posed = project(vertices, scale, translation, rotation)
    image, mask = render_uv_mesh(posed, template.faces, template.face_uvs, texture, height, width,
                                 symmetric_padding=True)
    return RenderOutput(image=image, mask=mask, vtx_xy=posed[..., :2], vertices=vertices, posed=posed)
